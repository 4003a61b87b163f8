"""C-STORE SCU: send DICOM files to a peer AE over one association (PS3.4 Annex B).

Used to deliver SEG / SR results and to forward originals. Each file's data set is
streamed from disk as it is, after reading only its File Meta Information, over an
association (:mod:`dicom_node.requestor`, our own Upper Layer data path) whose
presentation contexts are computed from the files' own SOP classes and transfer
syntaxes, on a socket with ``TCP_NODELAY``, optionally over DICOM TLS (PS3.15 B.1).

Outcomes:

* the peer cannot be reached, rejects or aborts the association -> :class:`AssociationError`
  (a :class:`~core.errors.TransientError`), naming the destination;
* every file that was tried gets an :class:`InstanceResult` in the :class:`SendReport`:
  the C-STORE status the peer answered, or why it was not sent (unreadable file, no
  accepted presentation context). The caller decides what to retry
  (:attr:`InstanceResult.transient`, :func:`dicom_node.status.is_transient_failure`).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode

from core.errors import TransientError
from core.settings import DestinationTlsSettings
from dicom_node.encoding import EXPLICIT_VR_BIG_ENDIAN, NATIVE, read_file_meta
from dicom_node.requestor import Association, AssociationFailedError, AssociationLostError
from dicom_node.status import Status, category, is_transient_failure
from dicom_node.tls import client_context
from dicom_node.ul.negotiation import (
    NegotiatedContext,
    ProposedContext,
    Rejection,
    RejectResult,
)

__all__ = ["AssociationError", "InstanceResult", "SendReport", "send_files"]

logger = logging.getLogger(__name__)

#: PS3.8 9.3.2.2: presentation context IDs are the odd numbers 1..255.
MAX_CONTEXTS_PER_ASSOCIATION = 128
#: Transfer syntaxes we convert between, offered in one extra context per SOP class so
#: that a little endian or deflated file reaches a peer that refuses its own.
_NATIVE_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class AssociationError(TransientError):
    """The destination could not be reached, or rejected or aborted the association.

    ``report`` holds the results of the files handled before it happened (possibly none);
    the others were not sent. ``rejection`` is the peer's A-ASSOCIATE-RJ, if it sent one:
    a permanent one (:attr:`permanent`, our calling or called AE title not recognised,
    say) is a configuration error on one side, which waiting alone does not fix.
    """

    def __init__(
        self,
        message: str,
        *,
        destination: str,
        report: SendReport,
        rejection: Rejection | None = None,
    ) -> None:
        self.destination = destination
        self.report = report
        self.rejection = rejection
        super().__init__(message)

    @property
    def permanent(self) -> bool:
        """The peer rejected the association permanently (PS3.8 9.3.4, result 1)."""
        return self.rejection is not None and self.rejection.result == RejectResult.PERMANENT


@dataclass(frozen=True)
class InstanceResult:
    """What happened to one file: the peer's C-STORE status, or why it was not sent."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    #: The C-STORE response status (PS3.4 B.2.3), ``None`` when no response was received.
    status: int | None = None
    #: Empty on Success; otherwise what the peer said or what went wrong (for logs and
    #: quarantine records).
    reason: str = ""
    #: The peer accepted no presentation context for the file's SOP class and transfer
    #: syntax (PS3.8 9.3.3.2): it never takes such an object, so sending again cannot help.
    refused: bool = False

    @property
    def ok(self) -> bool:
        """Stored: the peer answered Success or a Warning."""
        return self.status is not None and category(self.status) != "failure"

    @property
    def transient(self) -> bool:
        """A failure that may succeed if sent again later (e.g. Out of Resources)."""
        return self.status is not None and is_transient_failure(self.status)


@dataclass(frozen=True)
class SendReport:
    """The outcome of :func:`send_files`: one result per file, in the order given."""

    destination: str
    results: tuple[InstanceResult, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        """Every file was stored (Success or Warning)."""
        return all(result.ok for result in self.results)

    @property
    def failed(self) -> tuple[InstanceResult, ...]:
        """The files that were not stored: failure statuses and files never sent."""
        return tuple(result for result in self.results if not result.ok)


@dataclass(frozen=True)
class _File:
    index: int
    path: Path
    sop_class: UID
    sop_instance: UID
    transfer_syntax: UID
    #: Where the data set starts (after preamble and File Meta Information).
    offset: int

    def result(
        self, status: int | None = None, reason: str = "", *, refused: bool = False
    ) -> InstanceResult:
        return InstanceResult(
            path=self.path,
            sop_class_uid=str(self.sop_class),
            sop_instance_uid=str(self.sop_instance),
            transfer_syntax_uid=str(self.transfer_syntax),
            status=status,
            reason=reason,
            refused=refused,
        )


def send_files(
    paths: Sequence[Path],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "PACSAI",
    timeout: float = 30.0,
    max_pdu: int = 0,
    tls: ssl.SSLContext | DestinationTlsSettings | None = None,
) -> SendReport:
    """Send DICOM files (PS3.10 format) to ``called_ae@host:port`` with C-STORE.

    One association carries the whole batch (more only beyond 128 distinct SOP class /
    transfer syntax pairs). ``timeout`` bounds connecting, association negotiation and
    each wait for a response. ``max_pdu`` is the largest PDU we accept (0: no limit);
    the files are fragmented to the peer's own limit. ``tls``: DICOM TLS, as a context or
    as a destination's ``tls`` settings.

    Returns:
        A :class:`SendReport` with one :class:`InstanceResult` per path, in order.

    Raises:
        AssociationError: the peer refused the connection, rejected or aborted the
            association, or stopped answering (a :class:`~core.errors.TransientError`).
        ConfigError: the TLS settings' files cannot be loaded.
    """
    destination = f"{called_ae}@{host}:{port}"
    if isinstance(tls, DestinationTlsSettings):
        tls = client_context(tls, key=f"destination {destination}: tls")
    started = time.monotonic()
    results: dict[int, InstanceResult] = {}
    files: list[_File] = []
    for index, path in enumerate(paths):
        header = _read_header(index, Path(path))
        if isinstance(header, InstanceResult):
            logger.warning("Not sending %s to %s: %s", path, destination, header.reason)
            results[index] = header
        else:
            files.append(header)

    def report() -> SendReport:
        ordered = tuple(results[i] for i in sorted(results))
        return SendReport(destination, ordered, time.monotonic() - started)

    for batch in _batches(files):
        _send_batch(
            batch,
            results,
            report,
            host=host,
            port=port,
            called_ae=called_ae,
            calling_ae=calling_ae,
            timeout=timeout,
            max_pdu=max_pdu,
            tls=tls,
        )
    final = report()
    logger.info(
        "Sent %d of %d instance(s) to %s in %.2f s",
        sum(result.ok for result in final.results),
        len(final.results),
        destination,
        final.seconds,
    )
    return final


def _read_header(index: int, path: Path) -> _File | InstanceResult:
    """Read only the File Meta Information (PS3.10 7.1): SOP class, instance, syntax."""

    def unreadable(reason: str) -> InstanceResult:
        return InstanceResult(path, "", "", "", None, reason)

    try:
        meta = read_file_meta(path)
    except (OSError, ValueError) as exc:
        return unreadable(f"cannot read the DICOM file meta information: {exc}")
    missing = meta.missing()
    if missing:
        return unreadable(f"file meta information lacks {', '.join(missing)} (PS3.10 7.1)")
    return _File(
        index=index,
        path=path,
        sop_class=UID(meta.sop_class_uid),
        sop_instance=UID(meta.sop_instance_uid),
        transfer_syntax=UID(meta.transfer_syntax_uid),
        offset=meta.data_set_offset,
    )


_ContextKey = tuple[UID, tuple[UID, ...]]


def _context_keys(file: _File) -> list[_ContextKey]:
    """The presentation contexts a file needs: (SOP class, transfer syntaxes offered).

    Its own transfer syntax alone, so that the peer cannot pick another and the file is
    streamed as it is; plus, for native or deflated little endian files, a fallback
    context offering both native little endian syntaxes (converted in memory).
    Encapsulated (compressed) files get no fallback: we never transcode pixel data.
    """
    keys: list[_ContextKey] = [(file.sop_class, (file.transfer_syntax,))]
    if _is_convertible(file.transfer_syntax):
        keys.append((file.sop_class, _NATIVE_LITTLE_ENDIAN))
    return keys


def _batches(files: list[_File]) -> Iterator[list[_File]]:
    """Split ``files`` so that no association needs more than 128 presentation contexts."""
    batch: list[_File] = []
    keys: set[_ContextKey] = set()
    for file in files:
        needed = set(_context_keys(file)) - keys
        if batch and len(keys) + len(needed) > MAX_CONTEXTS_PER_ASSOCIATION:
            yield batch
            batch, keys = [], set()
            needed = set(_context_keys(file))
        batch.append(file)
        keys |= needed
    if batch:
        yield batch


def _requested_contexts(files: list[_File]) -> list[ProposedContext]:
    """The presentation contexts of :func:`_context_keys`, once each (PS3.8 9.3.2.2)."""
    keys = dict.fromkeys(key for file in files for key in _context_keys(file))
    return [
        ProposedContext(2 * number + 1, str(sop_class), tuple(str(ts) for ts in syntaxes))
        for number, (sop_class, syntaxes) in enumerate(keys)
    ]


def _is_convertible(syntax: UID) -> bool:
    """Native or deflated little endian: re-encodable in memory without touching pixels."""
    return syntax in NATIVE and syntax != EXPLICIT_VR_BIG_ENDIAN


def _send_batch(
    files: list[_File],
    results: dict[int, InstanceResult],
    report: Callable[[], SendReport],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    timeout: float,
    max_pdu: int,
    tls: ssl.SSLContext | None,
) -> None:
    destination = f"{called_ae}@{host}:{port}"
    try:
        assoc = Association.request(
            host,
            port,
            calling_ae=calling_ae,
            called_ae=called_ae,
            contexts=_requested_contexts(files),
            timeout=timeout,
            max_pdu=max_pdu,
            tls=tls,
        )
    except AssociationFailedError as exc:
        raise AssociationError(
            str(exc), destination=destination, report=report(), rejection=exc.rejection
        ) from None
    try:
        accepted: dict[str, dict[str, NegotiatedContext]] = {}
        for context in assoc.contexts:
            if context.accepted:
                syntaxes = accepted.setdefault(context.abstract_syntax, {})
                syntaxes.setdefault(context.transfer_syntax, context)
        for number, file in enumerate(files):
            message_id = number % 0xFFFF + 1  # PS3.7 9.3.1.1: 1..65535
            try:
                results[file.index] = _store_one(
                    assoc, file, accepted.get(str(file.sop_class), {}), destination, message_id
                )
            except AssociationLostError as lost:
                reason = (
                    f"no C-STORE response for {file.sop_instance} from {destination}: "
                    f"association aborted, connection closed or timed out ({lost})"
                )
                results[file.index] = file.result(reason=reason)
                raise AssociationError(reason, destination=destination, report=report()) from None
    finally:
        assoc.release()


def _store_one(
    assoc: Association,
    file: _File,
    syntaxes: dict[str, NegotiatedContext],
    destination: str,
    message_id: int,
) -> InstanceResult:
    """One C-STORE (PS3.7 9.1.1): streamed when the peer accepted the file's own syntax."""
    exact = syntaxes.get(str(file.transfer_syntax))
    fallback = None
    if exact is None and _is_convertible(file.transfer_syntax):
        fallback = next(
            (syntaxes[str(ts)] for ts in _NATIVE_LITTLE_ENDIAN if str(ts) in syntaxes), None
        )
    if exact is None and fallback is None:
        result = file.result(reason=_not_accepted(file, destination), refused=True)
        logger.warning("%s (%s)", result.reason, file.sop_instance)
        return result
    try:
        if exact is not None:
            with file.path.open("rb", buffering=0) as stream:
                size = stream.seek(0, 2) - file.offset
                stream.seek(file.offset)
                response = assoc.store(
                    exact,
                    message_id=message_id,
                    sop_class_uid=str(file.sop_class),
                    sop_instance_uid=str(file.sop_instance),
                    data_set=stream,
                    size=size,
                )
        else:
            assert fallback is not None
            encoded = _convert(file.path, UID(fallback.transfer_syntax))
            response = assoc.store(
                fallback,
                message_id=message_id,
                sop_class_uid=str(file.sop_class),
                sop_instance_uid=str(file.sop_instance),
                data_set=encoded,
                size=len(encoded),
            )
    except (ValueError, AttributeError, InvalidDicomError, OSError) as exc:
        if assoc.closed:
            raise AssociationLostError(f"read error while sending: {exc}") from exc
        # Raised while reading or encoding, before any PDU of this message was sent.
        result = file.result(reason=f"could not be read or encoded for {destination}: {exc}")
        logger.warning("%s (%s)", result.reason, file.sop_instance)
        return result
    status = response.status
    outcome = category(status)
    if outcome == "success":
        logger.debug("C-STORE %s to %s: Success", file.sop_instance, destination)
        return file.result(status)
    reason = f"{destination} answered {outcome} {_status_name(status)} 0x{status:04X}"
    if response.error_comment:
        reason += f": {response.error_comment}"
    log = logger.warning if outcome == "failure" else logger.info
    log("C-STORE %s: %s", file.sop_instance, reason)
    return file.result(status, reason)


def _convert(path: Path, syntax: UID) -> bytes:
    """The file's data set re-encoded in a native little endian syntax (pixels untouched).

    Raises:
        ValueError, InvalidDicomError: the file cannot be read or encoded.
    """
    dataset = dcmread(path)
    encoded = encode(dataset, syntax == ImplicitVRLittleEndian, True, False)
    if encoded is None:
        raise ValueError(f"the data set cannot be encoded in {syntax.name}")
    return encoded


def _status_name(status: int) -> str:
    try:
        return Status(status).name
    except ValueError:
        return "status"


def _not_accepted(file: _File, destination: str) -> str:
    return (
        f"{destination} accepted no presentation context for {file.sop_class.name} "
        f"in {file.transfer_syntax.name}"
    )
