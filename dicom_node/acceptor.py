"""One association, accepted and served: the node's hot loop (PS3.8, PS3.7, PS3.4 B).

:meth:`Acceptor.serve` runs an association from its first byte to its last on a
connected socket, in the calling thread:

1. TLS handshake when configured, then the A-ASSOCIATE-RQ (within the ACSE timeout).
   It is rejected (A-ASSOCIATE-RJ, PS3.8 9.3.4) for a caller the allow-list does not
   know, a called AE title that is neither the node's nor one of its
   ``node.ae_title_aliases`` (permanent: called AE title not recognized), a protocol
   version or application context we do not speak, or when the node already serves
   ``max_associations`` (transient: local limit exceeded). Otherwise every
   storage SOP class (and Verification) is accepted in the first transfer syntax of the
   caller's proposal that we know.
2. Messages: C-ECHO is answered at once; a C-STORE data set streams, fragment by
   fragment, into the spool (:class:`~dicom_node.incoming.IncomingInstance`) and is
   answered when complete. Other operations get Unrecognized Operation.
3. A-RELEASE, A-ABORT, a closed connection, a timeout (idle: ``network_timeout``;
   inside a message: ``dimse_timeout``) or a protocol error ends it; an instance still
   incomplete then is discarded, never stored.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from pynetdicom import AllStoragePresentationContexts

from core.settings import NodeSettings
from dicom_node.access import AccessPolicy
from dicom_node.encoding import KNOWN_TRANSFER_SYNTAXES
from dicom_node.incoming import IncomingInstance, InstanceStore, Peer
from dicom_node.status import Status
from dicom_node.ul import dimse
from dicom_node.ul.dimse import Command, CommandError, CommandField
from dicom_node.ul.negotiation import (
    APPLICATION_CONTEXT,
    APPLICATION_CONTEXT_NOT_SUPPORTED,
    CALLED_AE_NOT_RECOGNIZED,
    CALLING_AE_NOT_RECOGNIZED,
    LOCAL_LIMIT_EXCEEDED,
    MIN_PEER_MAX_LENGTH,
    NO_REASON_GIVEN,
    PROTOCOL_VERSION_NOT_SUPPORTED,
    AssociationRequest,
    NegotiatedContext,
    Rejection,
    decode_associate_rq,
    encode_associate_ac,
    negotiate,
)
from dicom_node.ul.pdu import (
    COMMAND,
    LAST,
    AbortReason,
    AbortSource,
    ConnectionClosedError,
    PduReader,
    PduType,
    ProtocolError,
    Socket,
    abort,
    associate_rj,
    iter_pdvs,
    p_data_pdus,
    release_rp,
)

logger = logging.getLogger(__name__)

#: Verification SOP Class (PS3.4 A.4).
VERIFICATION = "1.2.840.10008.1.1"
#: What the node accepts: every storage SOP class pynetdicom knows, and Verification.
ABSTRACT_SYNTAXES = frozenset(
    str(context.abstract_syntax)
    for context in AllStoragePresentationContexts
    if context.abstract_syntax is not None
) | {VERIFICATION}
#: A command set (group 0000) is a few hundred bytes at most; fragments that never end
#: must not grow a buffer without bound (PS3.7 E.1 lists every element it may hold).
MAX_COMMAND_SET_BYTES = 64 * 1024


class Slots:
    """Counts the node's connections (all receiving processes together).

    A connection is *pending* from its accept until its association is accepted (TLS
    handshake and A-ASSOCIATE-RQ, within one deadline), then *associated*. Only
    associations take one of ``node.max_associations``; pending connections have a
    budget of their own (``node.max_pending_connections``, and
    ``node.max_pending_per_address`` from one address in one receiving process), checked
    at accept, so that silent or trickling sockets can never lock legitimate senders out:
    they wait out one deadline at most (``node.acse_timeout_seconds``).
    """

    def opened(self, address: str) -> bool:
        """Count a new connection from ``address`` as pending; ``False`` (nothing
        counted) when the pending budget, the node's or this address's, is spent and the
        connection should be closed at once."""
        raise NotImplementedError

    def associated(self, address: str, calling_ae: str) -> bool:
        """Move this connection from pending to associated; ``False`` (still pending)
        when ``max_associations`` are in progress already, or
        ``max_associations_per_ae`` of ``calling_ae`` (in this receiving process)."""
        raise NotImplementedError

    def closed(self, address: str, *, calling_ae: str | None) -> None:
        """The connection ended: associated as ``calling_ae``, or pending (``None``)."""
        raise NotImplementedError

    def busier_than_siblings(self) -> bool:
        """Whether this process serves more connections than another receiving process."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Acceptor:
    """Serves associations on connected sockets (see the module docstring)."""

    settings: NodeSettings
    store: InstanceStore
    access: AccessPolicy
    slots: Slots
    tls: ssl.SSLContext | None = None

    def serve(self, sock: socket.socket, address: tuple[str, int], *, tls: bool) -> str | None:
        """Run one association to its end; never raises, always closes ``sock``.

        Returns the calling AE title of the association when it took an association slot,
        ``None`` when it never did (see :class:`Slots`).
        """
        host, port = str(address[0]), int(address[1])
        connection: Socket = sock
        # One deadline for the TLS handshake and the association request together: a peer
        # trickling bytes must not hold a connection longer than node.acse_timeout_seconds.
        deadline = time.monotonic() + self.settings.acse_timeout_seconds
        association: _Association | None = None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.settings.acse_timeout_seconds)
            if tls and self.tls is not None:
                try:
                    connection = self.tls.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    logger.warning("TLS handshake with %s:%d failed: %s", host, port, exc)
                    self.store.outcomes.association(accepted=False)
                    return None
            association = _Association(self, connection, host, port, deadline=deadline)
            association.run()
        except Exception:
            logger.exception("association from %s:%d failed", host, port)
        finally:
            self.store.outcomes.flush()
            with contextlib.suppress(OSError):
                connection.close()
            with contextlib.suppress(OSError):
                sock.close()
        if association is None or not association.holds_slot:
            return None
        return association.peer.calling_ae


class _Association:
    def __init__(
        self, acceptor: Acceptor, sock: Socket, host: str, port: int, *, deadline: float
    ) -> None:
        self.acceptor = acceptor
        self.settings = acceptor.settings
        self.sock = sock
        self.host = host
        self.port = port
        self.peer = Peer("?", host, port)
        self.reader = PduReader(
            sock,
            max_p_data=self.settings.max_pdu_length,
            timeout=self.settings.acse_timeout_seconds,
        )
        self.reader.deadline = deadline
        self.holds_slot = False
        self.in_message = False
        self.sink: _Sink | None = None
        self.command_buffer = bytearray()
        self.command_context = 0
        self.peer_max_pdu = 0
        self.stored = 0
        self.failed = 0

    def _read_request(self) -> AssociationRequest:
        pdu_type, body = self.reader.read()
        if pdu_type != PduType.ASSOCIATE_RQ:
            raise ProtocolError(f"expected an A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
        return decode_associate_rq(body)

    def run(self) -> None:
        try:
            request = self._read_request()
        except (ConnectionClosedError, TimeoutError, OSError) as exc:
            logger.info(
                "connection from %s:%d closed before association: %s", self.host, self.port, exc
            )
            return
        except ProtocolError as exc:
            logger.warning("bad association request from %s:%d: %s", self.host, self.port, exc)
            self._send_quietly(abort(AbortSource.SERVICE_PROVIDER, exc.reason))
            return
        self.peer = Peer(request.calling_ae, self.host, self.port, request.called_ae)
        self.peer_max_pdu = request.max_length
        rejection = self._check(request)
        if rejection is not None:
            # Counted before it is answered, so that whoever sees the answer sees the count.
            self.acceptor.store.outcomes.association(accepted=False)
            self._send_quietly(associate_rj(rejection.result, rejection.source, rejection.reason))
            return
        self._serve(request)

    def _check_titles(self, request: AssociationRequest) -> Rejection | None:
        """Why the calling or called AE title is refused (logged); ``None`` if neither is."""
        verdict = self.acceptor.access.check(request.calling_ae, self.host)
        if not verdict.allowed:
            logger.warning(
                "rejected association from %s (called %s): %s",
                self.peer,
                request.called_ae,
                verdict.reason,
            )
            return CALLING_AE_NOT_RECOGNIZED
        if request.called_ae not in self.settings.called_ae_titles:
            logger.warning(
                "rejected association from %s: called AE title %r is not this node's "
                "(%s; node.ae_title_aliases adds others)",
                self.peer,
                request.called_ae,
                ", ".join(sorted(self.settings.called_ae_titles)),
            )
            return CALLED_AE_NOT_RECOGNIZED
        return None

    def _check(self, request: AssociationRequest) -> Rejection | None:
        """The reason to reject ``request``, logged; ``None`` to accept it."""
        refused = self._check_titles(request)
        if refused is not None:
            return refused
        if not request.protocol_version & 0x0001:
            logger.warning(
                "rejected association from %s: protocol version %d",
                self.peer,
                request.protocol_version,
            )
            return PROTOCOL_VERSION_NOT_SUPPORTED
        if request.application_context != APPLICATION_CONTEXT:
            logger.warning(
                "rejected association from %s: application context %s",
                self.peer,
                request.application_context,
            )
            return APPLICATION_CONTEXT_NOT_SUPPORTED
        if 0 < request.max_length < MIN_PEER_MAX_LENGTH:
            logger.warning(
                "rejected association from %s: its maximum PDU length %d is below %d bytes",
                self.peer,
                request.max_length,
                MIN_PEER_MAX_LENGTH,
            )
            return NO_REASON_GIVEN
        self.holds_slot = self.acceptor.slots.associated(self.host, request.calling_ae)
        if not self.holds_slot:
            logger.warning(
                "rejected association from %s: already serving node.max_associations=%d",
                self.peer,
                self.settings.max_associations,
            )
            return LOCAL_LIMIT_EXCEEDED
        return None

    def _serve(self, request: AssociationRequest) -> None:
        contexts = negotiate(
            request,
            abstract_syntaxes=ABSTRACT_SYNTAXES,
            transfer_syntaxes=KNOWN_TRANSFER_SYNTAXES,
        )
        accepted = {context.context_id: context for context in contexts if context.accepted}
        started = time.monotonic()
        self.acceptor.store.outcomes.association(accepted=True)
        self.sock.sendall(
            encode_associate_ac(request, contexts, max_length=self.settings.max_pdu_length)
        )
        logger.info(
            "association from %s accepted: %d of %d presentation contexts",
            self.peer,
            len(accepted),
            len(contexts),
        )
        outcome = "released"
        try:
            outcome = self._messages(accepted)
        except ProtocolError as exc:
            outcome = f"aborted by us: {exc}"
            self._send_quietly(abort(AbortSource.SERVICE_PROVIDER, exc.reason))
        except TimeoutError:
            outcome = "aborted by us: timed out"
            self._send_quietly(abort(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED))
        except ConnectionClosedError:
            outcome = "connection closed by the peer without release"
        except OSError as exc:
            outcome = f"connection lost: {exc}"
        self.acceptor.store.outcomes.association_ended(
            peer=f"{self.peer.address}:{self.peer.port}", released=outcome == "released"
        )
        log = logger.info if outcome == "released" else logger.warning
        log(
            "association from %s %s after %.2f s: %d stored, %d not stored",
            self.peer,
            outcome,
            time.monotonic() - started,
            self.stored,
            self.failed,
        )

    def _messages(self, accepted: dict[int, NegotiatedContext]) -> str:
        """Serve messages until the association ends; how it ended."""
        idle_timeout = self.settings.network_timeout_seconds
        message_timeout = self.settings.dimse_timeout_seconds
        self.reader.set_timeout(min(idle_timeout, message_timeout))
        self.reader.deadline = None
        # Each PDU of a message must arrive whole within the DIMSE timeout: the minimum
        # progress rate of a message in flight (max_pdu_length per dimse_timeout_seconds).
        self.reader.pdu_seconds = message_timeout
        self.reader.keep_waiting = lambda silent: (
            silent < (message_timeout if self.in_message else idle_timeout)
        )
        read = self.reader.read
        on_pdv = self._on_pdv
        try:
            while True:
                pdu_type, body = read()
                if pdu_type == PduType.P_DATA_TF:
                    for context_id, control, data in iter_pdvs(body):
                        context = accepted.get(context_id)
                        if context is None:
                            raise ProtocolError(
                                f"a PDV on presentation context {context_id}, which was not "
                                "accepted",
                                AbortReason.INVALID_PDU_PARAMETER,
                            )
                        on_pdv(context, control, data)
                elif pdu_type == PduType.RELEASE_RQ:
                    self.sock.sendall(release_rp())
                    return "released" if self.sink is None else "released inside a message"
                elif pdu_type == PduType.ABORT:
                    return "aborted by the peer"
                else:
                    raise ProtocolError(f"unexpected {PduType(pdu_type).name} PDU")
        finally:
            if self.sink is not None:
                # The association ended inside a message: nothing of it is kept.
                self.sink.discard()
                self.failed += 1
            # The reader's callback refers back to this association: a cycle that would
            # keep the reader's buffer (up to a PDU) and the command buffer alive until the
            # garbage collector ran. Broken here, they go with the connection.
            self.reader.keep_waiting = _give_up
            self.command_buffer = bytearray()

    def _on_pdv(self, context: NegotiatedContext, control: int, data: memoryview) -> None:
        """One fragment of a command or of a data set (PS3.8 E.2)."""
        sink = self.sink
        if control & COMMAND:
            if sink is not None:
                raise ProtocolError("a command arrived inside a data set")
            if self.command_buffer and context.context_id != self.command_context:
                raise ProtocolError("command fragments on two presentation contexts")
            self.command_context = context.context_id
            if len(self.command_buffer) + len(data) > MAX_COMMAND_SET_BYTES:
                raise ProtocolError(
                    f"a command set longer than {MAX_COMMAND_SET_BYTES} bytes",
                    AbortReason.INVALID_PDU_PARAMETER,
                )
            self.command_buffer += data
            if control & LAST:
                command = _decode(self.command_buffer)
                self.command_buffer.clear()
                self.sink = self._on_command(command, context)
                self.in_message = self.sink is not None
            else:
                self.in_message = True
            return
        if sink is None or context.context_id != self.command_context:
            raise ProtocolError("a data set fragment without its command")
        sink.write(data)
        if control & LAST:
            self.sink = None
            self._complete(sink, context.context_id)
            self.in_message = False

    def _on_command(self, command: Command, context: NegotiatedContext) -> _Sink | None:
        field = command.command_field
        if field == CommandField.C_STORE_RQ and command.has_data_set:
            incoming = IncomingInstance(
                self.acceptor.store,
                command,
                abstract_syntax=context.abstract_syntax,
                transfer_syntax=context.transfer_syntax,
                peer=self.peer,
            )
            return _Sink(command, incoming.write, incoming.finish, incoming.discard)
        if field == CommandField.C_ECHO_RQ and not command.has_data_set:
            self._respond(command, context.context_id, Status.SUCCESS)
            return None
        if field == CommandField.C_CANCEL_RQ:
            return None  # nothing to cancel: each C-STORE is answered as it completes
        logger.warning("%s sent command 0x%04X, which the node does not perform", self.peer, field)
        if command.has_data_set:
            # Read the data set to stay in step, then answer.
            return _Sink(command, _ignore, lambda: (Status.UNRECOGNIZED_OPERATION, ""), _nothing)
        self._respond(command, context.context_id, Status.UNRECOGNIZED_OPERATION)
        return None

    def _complete(self, sink: _Sink, context_id: int) -> None:
        status, comment = sink.finish()
        if status == Status.SUCCESS:
            self.stored += 1
        else:
            self.failed += 1
        self._respond(sink.command, context_id, status, comment)
        self.acceptor.store.outcomes.flush()

    def _respond(self, command: Command, context_id: int, status: int, comment: str = "") -> None:
        message_id = command.message_id or 0
        sop_class = command.elements.get(dimse.AFFECTED_SOP_CLASS_UID, b"")
        if command.command_field == CommandField.C_STORE_RQ:
            encoded = dimse.c_store_rsp(
                message_id,
                sop_class,
                command.elements.get(dimse.AFFECTED_SOP_INSTANCE_UID, b""),
                status,
                error_comment=comment,
            )
        else:
            encoded = dimse.response(command.command_field, message_id, sop_class, status)
        pdus = p_data_pdus(encoded, context_id, command=True, max_pdu=self.peer_max_pdu)
        self.sock.sendall(pdus[0] if len(pdus) == 1 else b"".join(pdus))

    def _send_quietly(self, pdu: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(pdu)


@dataclass(frozen=True, slots=True)
class _Sink:
    """Where a message's data set goes, and how it is answered."""

    command: Command
    write: Callable[[memoryview], None]
    finish: Callable[[], tuple[Status, str]]
    discard: Callable[[], None]


def _give_up(_silent: float) -> bool:
    return False


def _decode(data: bytearray) -> Command:
    try:
        return dimse.decode_command(data)
    except CommandError as exc:
        raise ProtocolError(
            f"undecodable command set: {exc}", AbortReason.INVALID_PDU_PARAMETER
        ) from exc


def _ignore(_data: memoryview) -> None:
    return None


def _nothing() -> None:
    return None
