"""Result objects that remote workers hand back with STOW-RS, kept for delivery.

A worker without the node's file system (``worker.fetch_from``) uploads the objects it made
(PS3.18 10.5, ``POST /dicomweb/studies?job=<id>&destination=<name>``). Each is written to
``results_dir/.stow/`` as it arrives (never held in memory), checked (a DICOM file of the
job's study, with a valid SOP Instance UID), made durable and renamed to
``results_dir/<job id>/<SOP Instance UID>.dcm``; then the destinations named get it in their
outbox, on this node, exactly as a local worker's results. An upload sent again (the
worker retried, or the job ran again on another worker) replaces the same file and the
same outbox entries, keyed by SOP Instance UID: nothing is duplicated.

Objects uploaded without a destination are held for review (the job is NEEDS_REVIEW):
the job's result record is pointed at the node's copies (``result["node"]``: this node),
which an operator's release then sends from here.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from core.files import fsync_dir
from core.jobs import JobRecord, JobState
from core.ledger import Ledger, Outbox, result_items
from core.settings import Settings

logger = logging.getLogger(__name__)

#: Job states in which a worker may hand results back: it runs the job (RUNNING), or it
#: ran it before the reconciler queued it again (QUEUED, RETRYING). Uploads without a
#: destination also come after the job's result is recorded: held for review
#: (NEEDS_REVIEW), or kept by a shadow job or one without destinations (DELIVERING).
ACCEPTING = frozenset({JobState.RUNNING, JobState.QUEUED, JobState.RETRYING})
HELD_ACCEPTING = ACCEPTING | {JobState.NEEDS_REVIEW, JobState.DELIVERING}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_INCOMING = ".stow"


class RefusedUploadError(ValueError):
    """An uploaded object is not taken; the message says why (no patient data in it)."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    sop_instance_uid: str
    sop_class_uid: str
    path: Path


def stowed_path(results_dir: Path, job_id: str, sop_instance_uid: str) -> Path:
    """Where an uploaded result object of ``job_id`` is kept on the node."""
    return results_dir / job_id / f"{sop_instance_uid}.dcm"


def valid_uid(value: str) -> bool:
    """A UID as PS3.5 9.1 defines it (digits and dots, at most 64 characters)."""
    return len(value) <= 64 and _UID.fullmatch(value) is not None


class PartFile:
    """One uploaded part, written to a temporary file as it arrives, at most ``limit`` bytes."""

    def __init__(self, folder: Path, *, limit: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{uuid.uuid4().hex}.part"
        self._stream: BinaryIO = self.path.open("wb")
        self._limit = limit
        self.size = 0

    def write(self, data: bytes) -> None:
        """Raises:
        RefusedUploadError: the part grew past the limit (``node.max_instance_bytes``)."""
        self.size += len(data)
        if self.size > self._limit:
            raise RefusedUploadError(f"object larger than {self._limit} bytes")
        self._stream.write(data)

    def finish(self) -> None:
        """Flush the bytes to disk (they must survive a crash once acknowledged)."""
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()

    def discard(self) -> None:
        if not self._stream.closed:
            self._stream.close()
        self.path.unlink(missing_ok=True)


class ResultStore:
    """The node's keeping of uploaded results (see the module docstring)."""

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self.settings = settings
        self.ledger = ledger

    def new_part(self) -> PartFile:
        """A temporary file for the next part.

        Raises:
            RefusedUploadError: the disk is below ``node.min_free_disk_mb``.
        """
        folder = self.settings.results_dir / _INCOMING
        folder.mkdir(parents=True, exist_ok=True)
        reserve = self.settings.node.min_free_disk_mb * 1024 * 1024
        if shutil.disk_usage(folder).free < reserve:
            raise RefusedUploadError("the node's disk is full (below node.min_free_disk_mb)")
        return PartFile(folder, limit=self.settings.node.max_instance_bytes)

    def keep(self, part: PartFile, job: JobRecord) -> StoredObject:
        """Check a finished part and put it in place (replacing an earlier upload).

        Raises:
            RefusedUploadError: not a DICOM file, a bad UID, or another study's object.
        """
        try:
            sop_uid, sop_class = _identity(part.path, job)
            target = stowed_path(self.settings.results_dir, job.job_id, sop_uid)
            target.parent.mkdir(parents=True, exist_ok=True)
            part.path.replace(target)
            fsync_dir(target.parent)
        except BaseException:
            part.discard()
            raise
        return StoredObject(sop_uid, sop_class, target)

    def hand_over(
        self, job: JobRecord, objects: list[StoredObject], destinations: list[str]
    ) -> None:
        """Owe ``objects`` to ``destinations`` (this node delivers them); with none, point
        the held job's result record at them."""
        if not objects:
            return
        if destinations:
            Outbox(self.ledger).add(
                result_items(
                    job_id=job.job_id,
                    series_uid=job.series_instance_uid,
                    route=job.route,
                    destinations=destinations,
                    files=[(o.sop_instance_uid, o.sop_class_uid, o.path) for o in objects],
                    node=self.settings.node.name,
                )
            )
        else:
            self.ledger.set_result_paths(
                job.job_id,
                {o.sop_instance_uid: str(o.path) for o in objects},
                node=self.settings.node.name,
            )
        logger.info(
            "%d result object(s) of job %s received over STOW-RS%s",
            len(objects),
            job.job_id,
            f" for {', '.join(destinations)}" if destinations else " (held for review)",
        )


def _identity(path: Path, job: JobRecord) -> tuple[str, str]:
    """(SOP Instance UID, SOP Class UID) of an uploaded object of ``job``'s study.

    Raises:
        RefusedUploadError: not a DICOM file, a bad UID, or another study's object.
    """
    try:
        header = dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise RefusedUploadError(f"not a readable DICOM file ({type(exc).__name__})") from exc
    sop_uid = str(header.get("SOPInstanceUID", ""))
    sop_class = str(header.get("SOPClassUID", ""))
    study = str(header.get("StudyInstanceUID", ""))
    if not valid_uid(sop_uid) or not valid_uid(sop_class):
        raise RefusedUploadError("missing or invalid SOP Instance / Class UID")
    if study != job.study_instance_uid:
        raise RefusedUploadError(
            f"object {sop_uid} belongs to study {study or '(none)'}, not to the job's study "
            f"{job.study_instance_uid}"
        )
    return sop_uid, sop_class
