"""Quarantine: data that could not be processed, kept with the reason why.

Every quarantined item is a folder ``quarantine/<id>/`` holding the data as received (or,
for a failed job, nothing more than a pointer to its series in the spool, which stays put)
and ``error.json``: stage, error type, message, attempts, UIDs, time. The ledger records
the same, so operators find it from the dashboard or ``pacs-ai status``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


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


class Quarantine:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

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
        if data is not None:
            _write_durably(folder / "instance.dcm", bytes(data))
        elif source is not None:
            _copy_durably(source, folder / "instance.dcm")
        record = {"quarantine_id": qid, "at": time.time(), **asdict(entry)}
        _write_durably(folder / "error.json", json.dumps(record, indent=2, sort_keys=True).encode())
        return folder


def _copy_durably(source: Path, path: Path) -> None:
    temporary = path.with_suffix(path.suffix + ".part")
    shutil.copyfile(source, temporary)
    with temporary.open("rb+") as handle:
        os.fsync(handle.fileno())
    temporary.replace(path)


def _write_durably(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(path.suffix + ".part")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
