"""Putting DICOM files where the node would: the spool, and the ledger's instance rows."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread

from core.jobs import InstanceRecord
from core.ledger import Ledger


def instance_record(
    path: Path,
    *,
    received_at: float | None = None,
    calling_ae: str = "SCANNER",
    peer: str = "127.0.0.1:1",
) -> InstanceRecord:
    """The record the node's receiver reports for ``path`` (stored where it is)."""
    ds = dcmread(path, stop_before_pixels=True)
    return InstanceRecord(
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        series_instance_uid=ds.SeriesInstanceUID,
        study_instance_uid=ds.StudyInstanceUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        path=str(path),
        size=path.stat().st_size,
        received_at=time.time() if received_at is None else received_at,
        calling_ae=calling_ae,
        called_ae="PACSAI",
        peer=peer,
        modality=ds.get("Modality"),
    )


def spool(spool_dir: Path, ledger: Ledger, files: Sequence[Path]) -> str:
    """Copy ``files`` into the spool layout, record them; return their Series Instance UID."""
    records = []
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        target = spool_dir / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        records.append(instance_record(target))
    ledger.record_instances(records)
    return records[0].series_instance_uid
