"""One C-STORE data set on its way into the spool, and the status it is answered with.

The data set's fragments are written to a temporary spool file as they arrive (after a
File Meta Information built from the request, PS3.10 7.1) and walked by
:class:`~dicom_node.scanner.DataSetScanner` at the same time. When the last fragment is in,
:meth:`IncomingInstance.finish` decides (PS3.4 B.2.3 statuses, by name):

* Success -- only after the file is durably in the spool (fsync, rename, folder fsync);
* Out of Resources -- the disk is full or below its reserve; nothing is left behind;
* Data Set does not match SOP Class -- its SOP Class UID differs from the presentation
  context's; Cannot Understand -- malformed, truncated or inconsistent data, or invalid
  identifying UIDs. Both keep the bytes in quarantine with the reason;
* Processing Failure -- a fault of ours, the bytes also kept.

It never raises: the association and the node go on whatever the data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from core.errors import InvalidInputError
from core.jobs import InstanceRecord
from core.quarantine import Quarantine, QuarantineEntry
from dicom_node.encoding import file_meta
from dicom_node.header import InstanceIdentity
from dicom_node.scanner import DataSetScanner
from dicom_node.spool import Spool, SpoolFullError
from dicom_node.status import Status
from dicom_node.ul.dimse import Command

logger = logging.getLogger(__name__)


class Outcomes(Protocol):
    """Where a receiving process reports what happened (the node records it)."""

    def stored(self, record: InstanceRecord) -> None: ...

    def quarantined(self, folder: str, entry: QuarantineEntry) -> None: ...

    def refused(self) -> None: ...

    def association(self, *, accepted: bool) -> None: ...

    def association_ended(self, *, peer: str, released: bool) -> None:
        """The association with ``peer`` (``address:port``) ended: released, or not."""

    def flush(self) -> None:
        """Deliver what was reported; called after each answer, off the critical path."""


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent an association: calling AE title and address."""

    calling_ae: str
    address: str
    port: int
    #: The AE title it called: the node's own or one of its aliases ("": not known yet).
    called_ae: str = ""

    def __str__(self) -> str:
        return f"{self.calling_ae}@{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class InstanceStore:
    """What a receiving process stores into, shared by all its associations."""

    spool: Spool
    quarantine: Quarantine
    outcomes: Outcomes
    called_ae: str
    #: ``node.max_instance_bytes``; 0: no limit.
    max_instance_bytes: int = 0


class IncomingInstance:
    """One C-STORE data set being received (see the module docstring)."""

    def __init__(
        self,
        store: InstanceStore,
        command: Command,
        *,
        abstract_syntax: str,
        transfer_syntax: str,
        peer: Peer,
    ) -> None:
        self._store = store
        self._command = command
        self._abstract_syntax = abstract_syntax
        self._transfer_syntax = transfer_syntax
        self._peer = peer
        self.received_at = time.time()
        self._scanner = DataSetScanner(transfer_syntax, max_bytes=store.max_instance_bytes)
        self._write = store.spool.begin(
            file_meta(
                sop_class_uid=command.affected_sop_class_uid,
                sop_instance_uid=command.affected_sop_instance_uid,
                transfer_syntax_uid=transfer_syntax,
                source_ae=peer.calling_ae,
            )
        )

    def write(self, fragment: memoryview) -> None:
        scanner = self._scanner
        scanner.feed(fragment)
        # Past the limit the rest is read from the network but not kept: what is
        # quarantined is the instance up to the limit.
        if not scanner.over_limit:
            self._write.write(fragment)

    def discard(self) -> None:
        """The association ended before the last fragment: keep nothing."""
        self._write.discard()

    def finish(self) -> tuple[Status, str]:
        """Store the complete data set; the status to answer and an error comment."""
        try:
            return self._finish()
        except Exception as exc:
            # A fault of ours: keep the data, answer a failure, never take the node down.
            logger.exception("unexpected error while storing an instance from %s", self._peer)
            self._keep(_entry("receive", exc, self._peer))
            self._write.discard()
            return Status.PROCESSING_FAILURE, "internal error; data kept in quarantine"

    def _finish(self) -> tuple[Status, str]:
        write = self._write
        if write.error is not None:
            return self._refuse(write.error)
        try:
            identity = self._scanner.identity()
            self._check(identity)
        except _SopClassMismatchError as exc:
            self._keep(_entry(exc.stage, exc, self._peer))
            write.discard()
            return Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class differs from context"
        except InvalidInputError as exc:
            self._keep(_entry(exc.stage, exc, self._peer))
            write.discard()
            return Status.CANNOT_UNDERSTAND, str(exc)
        if self._scanner.implicit_vr_found:
            logger.warning(
                "instance %s from %s is implicit VR although %s was negotiated; stored as received",
                identity.sop_instance_uid,
                self._peer,
                self._transfer_syntax,
            )
        try:
            holder = self._store.spool.claim(identity)
            stored = write.commit(identity) if holder is None else None
        except OSError as exc:
            return self._refuse(exc)
        if stored is None:
            return self._conflict(identity, holder or "")
        self._store.outcomes.stored(
            InstanceRecord(
                sop_instance_uid=identity.sop_instance_uid,
                sop_class_uid=identity.sop_class_uid,
                series_instance_uid=identity.series_instance_uid,
                study_instance_uid=identity.study_instance_uid,
                transfer_syntax_uid=self._transfer_syntax,
                path=str(stored.path),
                size=stored.size,
                received_at=self.received_at,
                calling_ae=self._peer.calling_ae,
                called_ae=self._peer.called_ae or self._store.called_ae,
                peer=f"{self._peer.address}:{self._peer.port}",
                modality=identity.modality,
            )
        )
        logger.debug("stored %s from %s", identity.sop_instance_uid, self._peer)
        return Status.SUCCESS, ""

    def _check(self, identity: InstanceIdentity) -> None:
        if identity.sop_class_uid != self._abstract_syntax:
            raise _SopClassMismatchError(
                f"the dataset's SOP Class UID {identity.sop_class_uid} differs from the "
                f"presentation context's {self._abstract_syntax}",
                stage="receive",
            )
        command = self._command
        for name, requested, actual in (
            (
                "Affected SOP Class UID",
                command.affected_sop_class_uid,
                identity.sop_class_uid,
            ),
            (
                "Affected SOP Instance UID",
                command.affected_sop_instance_uid,
                identity.sop_instance_uid,
            ),
        ):
            if requested != actual:
                raise InvalidInputError(
                    f"the dataset's UID {actual} differs from the request's {name} "
                    f"{requested or '(missing)'} (PS3.7 9.3.1.1)",
                    stage="receive",
                )

    def _conflict(self, identity: InstanceIdentity, holder: str) -> tuple[Status, str]:
        """A SOP Instance UID already stored in another series: refused, kept aside."""
        message = (
            f"SOP Instance UID {identity.sop_instance_uid} is already stored in study/series "
            f"{holder}; this instance (study {identity.study_instance_uid}, series "
            f"{identity.series_instance_uid}) reuses it. Have the sender give every "
            "instance its own UID, then send it again"
        )
        self._keep(
            QuarantineEntry(
                stage="identity",
                error_type="IdentityConflict",
                message=message,
                calling_ae=self._peer.calling_ae,
                uids={
                    "SOPInstanceUID": identity.sop_instance_uid,
                    "StudyInstanceUID": identity.study_instance_uid,
                    "SeriesInstanceUID": identity.series_instance_uid,
                },
            )
        )
        self._write.discard()
        return Status.CANNOT_UNDERSTAND, "SOP Instance UID already used in another series"

    def _refuse(self, error: OSError) -> tuple[Status, str]:
        self._write.discard()
        self._store.outcomes.refused()
        if isinstance(error, SpoolFullError):
            logger.error("refusing an instance from %s: %s", self._peer, error.strerror)
            return Status.OUT_OF_RESOURCES, "spool disk full"
        logger.error("cannot store an instance from %s: %s", self._peer, error)
        return Status.OUT_OF_RESOURCES, "cannot write to the spool"

    def _keep(self, entry: QuarantineEntry) -> None:
        """Quarantine the received bytes with ``entry``'s reason (best effort, logged)."""
        try:
            folder = self._store.quarantine.put(entry, source=self._write.written_file())
        except Exception:
            logger.exception("could not quarantine a rejected instance from %s", self._peer)
            return
        logger.warning(
            "quarantined an instance from %s: %s (%s)", self._peer, entry.message, folder.name
        )
        self._store.outcomes.quarantined(str(folder), entry)


class _SopClassMismatchError(InvalidInputError):
    pass


def _entry(stage: str, exc: Exception, peer: Peer) -> QuarantineEntry:
    return QuarantineEntry(
        stage=stage, error_type=type(exc).__name__, message=str(exc), calling_ae=peer.calling_ae
    )
