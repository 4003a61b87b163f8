"""The LIDC-IDRI chest CT of the shared test material, unpacked for a benchmark run."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_CT = "ct-lidc-idri-0314/series.tar.xz"


def lidc_files(given: Path | None, work: Path) -> tuple[list[Path], str]:
    """The files of ``given`` (a folder), else the LIDC series unpacked under ``work``."""
    if given is not None:
        files = sorted(p for p in given.rglob("*") if p.is_file())
        return files, f"{len(files)} files from {given}"
    archive = (
        Path(os.environ.get("PACS_AI_SHARED_DATA", REPO.parent / "shared" / "data")) / SHARED_CT
    )
    if not archive.exists():
        raise SystemExit(f"the LIDC CT is not at {archive}: give --data FOLDER")
    target = work / "data"
    target.mkdir()
    # tar with xz is much faster than Python's lzma; tarfile only where tar is missing.
    if subprocess.run(["tar", "xJf", str(archive), "-C", str(target)], check=False).returncode:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    files = sorted(target.rglob("*.dcm"))
    return files, f"LIDC-IDRI-0314 chest CT, {len(files)} slices 512x512"
