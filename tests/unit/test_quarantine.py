"""The quarantine keeps refused bytes only within its quota and the disk's reserve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from core.quarantine import INSTANCE_FILE, Quarantine, QuarantineEntry

ENTRY = QuarantineEntry(stage="receive", error_type="InvalidInputError", message="truncated")


def test_bytes_are_kept_until_the_quota_then_only_the_reason(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q", max_bytes=3000)
    source = tmp_path / "bad.dcm"
    source.write_bytes(b"x" * 2000)

    first = quarantine.put(ENTRY, source=source)
    second = quarantine.put(ENTRY, source=source)

    assert (first / INSTANCE_FILE).read_bytes() == b"x" * 2000
    assert not (second / INSTANCE_FILE).exists()
    record = json.loads((second / "error.json").read_text())
    assert record["message"] == "truncated"
    assert "quarantine is at its quota (node.quarantine_max_mb" in record["not_kept"]


def test_bytes_that_would_break_the_free_space_reserve_are_not_kept(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    quarantine = Quarantine(tmp_path / "q", min_free_bytes=free + 1)

    folder = quarantine.put(ENTRY, data=b"x" * 100)

    assert not (folder / INSTANCE_FILE).exists()
    record = json.loads((folder / "error.json").read_text())
    assert "free-space reserve (node.min_free_disk_mb" in record["not_kept"]
