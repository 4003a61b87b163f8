"""An association we request, on our own Upper Layer data path (PS3.8, PS3.7 9.1.1).

:class:`Association` connects (TCP, ``TCP_NODELAY``, TLS when given), negotiates
(A-ASSOCIATE-RQ/AC/RJ, PS3.8 9.3.2-9.3.4), sends C-STORE requests whose data sets stream
from a file or from memory in P-DATA-TF PDUs as large as the peer accepts, several PDUs
per system call, and reads the responses. pynetdicom reads a file in 4 KiB steps,
decodes every PDU it sends back into Python objects and passes each message between
threads; here one buffer is filled with ``readinto`` and sent as it is.

Failures are raised as :class:`AssociationFailedError` (could not associate) or
:class:`AssociationLostError` (the association broke; the current message is lost).
"""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import TransientError
from dicom_node.ul import dimse
from dicom_node.ul.dimse import Command, CommandError, CommandField
from dicom_node.ul.negotiation import (
    AssociationAccepted,
    NegotiatedContext,
    ProposedContext,
    Rejection,
    decode_associate_ac,
    decode_associate_rj,
    encode_associate_rq,
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
    iter_pdvs,
    p_data_header,
    p_data_pdus,
    release_rq,
)

#: Data bytes per PDU when the peer sets no limit (PS3.8 D.1: max length 0).
UNLIMITED_PDU_DATA = 1024 * 1024
#: About this many bytes go to the socket per send() call (several PDUs).
SEND_BUFFER = 512 * 1024


class AssociationFailedError(TransientError):
    """No association: connection refused, rejected (with :attr:`rejection`), or
    aborted or timed out during negotiation."""

    def __init__(
        self, message: str, *, connected: bool, rejection: Rejection | None = None
    ) -> None:
        self.connected = connected
        self.rejection = rejection
        super().__init__(message)


class AssociationLostError(TransientError):
    """The association broke (aborted, closed, timed out, unreadable data)."""


@dataclass(frozen=True, slots=True)
class StoreResponse:
    """A C-STORE-RSP: the status and the error comment, if any (PS3.7 9.3.1.2)."""

    status: int
    error_comment: str


def connect(host: str, port: int, *, timeout: float, tls: ssl.SSLContext | None = None) -> Socket:
    """A TCP connection with Nagle's algorithm off (and TLS when ``tls`` is given).

    Raises:
        OSError: the peer cannot be reached, or the TLS handshake failed.
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        # Without it each small PDU waits for the peer's delayed ACK: ~40 ms per C-STORE.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            return tls.wrap_socket(sock, server_hostname=host if tls.check_hostname else None)
    except BaseException:
        sock.close()
        raise
    return sock


class Association:
    """An established association as requestor (see the module docstring)."""

    def __init__(
        self,
        sock: Socket,
        accepted: AssociationAccepted,
        *,
        timeout: float,
        max_pdu: int,
    ) -> None:
        self._sock = sock
        self.contexts = accepted.contexts
        self._reader = PduReader(sock, max_p_data=max_pdu, timeout=timeout)
        peer_max = accepted.max_length
        self._pdu_data = (peer_max - 6) if peer_max else UNLIMITED_PDU_DATA
        self._buffer = bytearray(max(SEND_BUFFER, self._pdu_data + 12))
        self._view = memoryview(self._buffer)
        self.closed = False

    @classmethod
    def request(
        cls,
        host: str,
        port: int,
        *,
        calling_ae: str,
        called_ae: str,
        contexts: Sequence[ProposedContext],
        timeout: float,
        max_pdu: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> Association:
        """Connect and negotiate (PS3.8 9.3.2).

        Raises:
            AssociationFailedError: see the class.
        """
        destination = f"{called_ae}@{host}:{port}"
        try:
            sock = connect(host, port, timeout=timeout, tls=tls)
        except ssl.SSLError as exc:
            raise AssociationFailedError(
                f"TLS handshake with {destination} failed: {exc}", connected=True
            ) from exc
        except OSError as exc:
            raise AssociationFailedError(
                f"cannot connect to {destination}: connection refused or host unreachable ({exc})",
                connected=False,
            ) from exc
        try:
            sock.sendall(
                encode_associate_rq(
                    calling_ae=calling_ae,
                    called_ae=called_ae,
                    contexts=contexts,
                    max_length=max_pdu,
                )
            )
            return cls._answer(
                sock,
                destination,
                contexts,
                PduReader(sock, max_p_data=max_pdu, timeout=timeout),
                timeout=timeout,
                max_pdu=max_pdu,
            )
        except AssociationFailedError:
            sock.close()
            raise
        except (OSError, ProtocolError) as exc:
            sock.close()
            raise AssociationFailedError(
                f"association with {destination} was aborted or timed out during "
                f"negotiation: {exc}",
                connected=True,
            ) from exc

    @classmethod
    def _answer(
        cls,
        sock: Socket,
        destination: str,
        contexts: Sequence[ProposedContext],
        reader: PduReader,
        *,
        timeout: float,
        max_pdu: int,
    ) -> Association:
        """The association, from the acceptor's answer to our request."""
        pdu_type, body = reader.read()
        if pdu_type == PduType.ASSOCIATE_AC:
            accepted = decode_associate_ac(body, contexts)
            return cls(sock, accepted, timeout=timeout, max_pdu=max_pdu)
        if pdu_type == PduType.ASSOCIATE_RJ:
            rejection = decode_associate_rj(body)
            raise AssociationFailedError(
                f"association rejected by {destination}: {rejection.describe()}",
                connected=True,
                rejection=rejection,
            )
        raise AssociationFailedError(
            f"association with {destination} was aborted during negotiation", connected=True
        )

    def store(
        self,
        context: NegotiatedContext,
        *,
        message_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        data_set: io.BufferedIOBase | io.RawIOBase | bytes,
        size: int,
    ) -> StoreResponse:
        """One C-STORE (PS3.7 9.1.1): the request, ``size`` bytes of data set, the response.

        ``data_set`` is a file positioned at the data set, or the encoded bytes.

        Raises:
            AssociationLostError: the association broke (it is aborted and closed).
        """
        command = dimse.c_store_rq(message_id, sop_class_uid, sop_instance_uid)
        try:
            self._send_message(context.context_id, command, data_set, size)
            response = self._read_response(message_id)
        except AssociationLostError:
            self.abort()
            raise
        except (OSError, ProtocolError, CommandError) as exc:
            self.abort()
            raise AssociationLostError(str(exc) or type(exc).__name__) from exc
        return StoreResponse(
            status=response.status if response.status is not None else 0xC000,
            error_comment=response.error_comment,
        )

    def release(self) -> None:
        """A-RELEASE (PS3.8 7.2); a peer that does not answer properly is aborted."""
        if self.closed:
            return
        try:
            self._sock.sendall(release_rq())
            while True:
                pdu_type, _body = self._reader.read()
                if pdu_type in (PduType.RELEASE_RP, PduType.ABORT):
                    break
        except (OSError, ProtocolError):
            pass
        self._close()

    def abort(self) -> None:
        """A-ABORT (PS3.8 7.3) and close."""
        if self.closed:
            return
        with contextlib.suppress(OSError):
            self._sock.sendall(abort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED))
        self._close()

    def _close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self._sock.close()

    def _send_message(
        self,
        context_id: int,
        command: bytes,
        data_set: io.BufferedIOBase | io.RawIOBase | bytes,
        size: int,
    ) -> None:
        # The command goes with the first data set PDUs in one send.
        pending = b"".join(
            p_data_pdus(command, context_id, command=True, max_pdu=self._pdu_data + 6)
        )
        if isinstance(data_set, bytes):
            self._sock.sendall(
                pending
                + b"".join(
                    p_data_pdus(data_set, context_id, command=False, max_pdu=self._pdu_data + 6)
                )
            )
            return
        buffer, view = self._buffer, self._view
        filled = len(pending)
        buffer[:filled] = pending
        remaining = size
        chunk = self._pdu_data
        readinto = data_set.readinto
        while True:
            part = min(chunk, remaining)
            if filled + 12 + part > len(buffer):
                self._sock.sendall(view[:filled])
                filled = 0
            last = part == remaining
            buffer[filled : filled + 12] = p_data_header(part, context_id, LAST if last else 0)
            target = view[filled + 12 : filled + 12 + part]
            got = 0
            while got < part:
                count = readinto(target[got:])
                if not count:
                    raise AssociationLostError(
                        f"the file ended {remaining - got} bytes early while being sent"
                    )
                got += count
            filled += 12 + part
            remaining -= part
            if last:
                break
        self._sock.sendall(view[:filled])

    def _read_response(self, message_id: int) -> Command:
        command_buffer = bytearray()
        while True:
            try:
                pdu_type, body = self._reader.read()
            except TimeoutError as exc:
                raise AssociationLostError(f"no response within the timeout: {exc}") from exc
            except ConnectionClosedError as exc:
                raise AssociationLostError("the peer closed the connection") from exc
            if pdu_type == PduType.ABORT:
                self._close()
                raise AssociationLostError("the peer aborted the association")
            if pdu_type != PduType.P_DATA_TF:
                raise ProtocolError(f"unexpected {PduType(pdu_type).name} PDU")
            for _context_id, control, data in iter_pdvs(body):
                if not control & COMMAND:
                    continue  # a data set with a response: not for C-STORE
                command_buffer += data
                if not control & LAST:
                    continue
                command = dimse.decode_command(command_buffer)
                command_buffer.clear()
                if (
                    command.command_field == CommandField.C_STORE_RSP
                    and command.message_id_being_responded_to == message_id
                ):
                    return command
