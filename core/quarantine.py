"""Quarantine: data that could not be processed, kept with the reason why.

Every quarantined item is a folder ``quarantine/<id>/`` holding the data as received (or,
for a failed job, nothing more than a pointer to its series in the spool, which stays put)
and ``error.json``: stage, error type, message, attempts, UIDs, time. The ledger records
the same, so operators find it from the dashboard or ``pacs-ai status``.

Bounded: the bytes of a refused instance are kept only while the quarantine holds less
than its quota (``node.quarantine_max_mb``) and the disk keeps its free-space reserve
(``node.min_free_disk_mb``); otherwise only ``error.json`` is written, saying why the
bytes were not kept (the sender still has them: it was answered a failure). A sender of
bad data can thus never fill the disk that good data needs. Retention removes the kept
bytes after ``retention.quarantine_days``.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.files import atomic_copy, atomic_write, fsync_dir


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    stage: str
    error_type: str
    message: str
    attempts: int = 1
    uids: dict[str, str] = field(default_factory=dict)
    calling_ae: str | None = None
    job_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


#: How long the quarantine's measured size is trusted before it is measured again (other
#: processes add to it too).
_USAGE_TTL_SECONDS = 10.0
#: What a kept instance's bytes are called in its folder.
INSTANCE_FILE = "instance.dcm"
#: Stages of instances refused at the door (answered a failure status and kept aside by
#: the node: malformed, or reusing another series' UIDs); the others are jobs' failures.
DOOR_STAGES = frozenset({"receive", "identity"})


class Quarantine:
    def __init__(self, root: Path, *, max_bytes: int = 0, min_free_bytes: int = 0) -> None:
        """``max_bytes``: quota for kept instance bytes (0: none); ``min_free_bytes``: the
        disk's free-space reserve that keeping bytes must leave."""
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self._usage = 0
        self._measured_at = float("-inf")

    def usage(self) -> int:
        """Bytes of instances kept in the quarantine (measured at most every 10 s)."""
        now = time.monotonic()
        if now - self._measured_at > _USAGE_TTL_SECONDS:
            self._usage = sum(path.stat().st_size for path in self.root.glob(f"*/{INSTANCE_FILE}"))
            self._measured_at = now
        return self._usage

    def _why_not_kept(self, size: int) -> str | None:
        if self.max_bytes and self.usage() + size > self.max_bytes:
            return (
                f"the instance's {size} bytes were not kept: the quarantine is at its quota "
                f"(node.quarantine_max_mb, {self.max_bytes // 2**20} MiB)"
            )
        if self.min_free_bytes and shutil.disk_usage(self.root).free - size < self.min_free_bytes:
            return (
                f"the instance's {size} bytes were not kept: the disk would fall below its "
                f"free-space reserve (node.min_free_disk_mb, {self.min_free_bytes // 2**20} MiB)"
            )
        return None

    def put(
        self,
        entry: QuarantineEntry,
        *,
        data: bytes | memoryview | None = None,
        source: Path | None = None,
        quarantine_id: str | None = None,
    ) -> Path:
        """Keep ``data`` or a copy of the file ``source`` (if any) and ``error.json`` under
        a new folder; return the folder.

        Written with fsync: quarantined data is data we promised not to lose. ``source``
        is copied by the kernel (``copy_file_range``/``sendfile``), never read into memory:
        a 1 GB malformed instance costs no 1 GB of RAM to keep.
        """
        qid = quarantine_id or uuid.uuid4().hex
        folder = self.root / qid
        folder.mkdir(parents=True, exist_ok=True)
        size = len(data) if data is not None else source.stat().st_size if source else 0
        not_kept = self._why_not_kept(size) if size else None
        if not_kept is None and data is not None:
            atomic_write(folder / INSTANCE_FILE, data)
        elif not_kept is None and source is not None:
            atomic_copy(source, folder / INSTANCE_FILE)
        self._usage += 0 if not_kept else size
        record = {"quarantine_id": qid, "at": time.time(), **asdict(entry)}
        if not_kept is not None:
            record["not_kept"] = not_kept
        atomic_write(folder / "error.json", json.dumps(record, indent=2, sort_keys=True).encode())
        # The new folder's own name must survive a power cut too, or so would not its files.
        fsync_dir(self.root)
        return folder
