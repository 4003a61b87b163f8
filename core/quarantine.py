"""Quarantine: data that could not be processed, kept with the reason why.

Every quarantined item is a folder ``quarantine/<id>/`` holding the data as received (or,
for a failed job, nothing more than a pointer to its series in the spool, which stays put)
and ``error.json``: stage, error type, message, attempts, UIDs, time. The ledger records
the same, so operators find it from the dashboard or ``pacs-ai status``.
"""

from __future__ import annotations

import json
import os
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
        quarantine_id: str | None = None,
    ) -> Path:
        """Keep ``data`` (if any) and ``error.json`` under a new folder; return the folder.

        Written with fsync: quarantined data is data we promised not to lose.
        """
        qid = quarantine_id or uuid.uuid4().hex
        folder = self.root / qid
        folder.mkdir(parents=True, exist_ok=True)
        if data is not None:
            _write_durably(folder / "instance.dcm", bytes(data))
        record = {"quarantine_id": qid, "at": time.time(), **asdict(entry)}
        _write_durably(folder / "error.json", json.dumps(record, indent=2, sort_keys=True).encode())
        return folder


def _write_durably(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(path.suffix + ".part")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
