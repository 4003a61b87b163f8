"""Protocol Data Units on a socket (PS3.8 9.3): reading them, and the small fixed ones.

Every PDU starts with a 6-byte header: type, reserved, and the length of what follows
(big endian). :class:`PduReader` reads the header and then exactly that many bytes into
one reusable buffer with ``recv_into``, so a 1 MiB P-DATA-TF costs one or two system
calls and no allocation. The body is returned as a memory view that stays valid until
the next :meth:`PduReader.read`.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from enum import IntEnum

#: Largest PDU of any type we read; a peer sending more is broken or hostile. P-DATA-TF
#: PDUs are also bounded by the maximum length we announce (PS3.8 D.1).
HARD_LIMIT = 64 * 1024 * 1024
#: Largest A-ASSOCIATE-RQ/AC we read (128 contexts with many transfer syntaxes fit).
NEGOTIATION_LIMIT = 1024 * 1024

_HEADER = struct.Struct(">BBI")
_PDV_HEADER = struct.Struct(">IBB")

#: Message Control Header bits of a PDV (PS3.8 E.2).
COMMAND = 0x01
LAST = 0x02


class PduType(IntEnum):
    """PDU types (PS3.8 Table 9-1)."""

    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


class AbortSource(IntEnum):
    """A-ABORT source (PS3.8 Table 9-26)."""

    SERVICE_USER = 0
    SERVICE_PROVIDER = 2


class AbortReason(IntEnum):
    """A-ABORT reason when the source is the service provider (PS3.8 Table 9-26)."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER = 6


class ConnectionClosedError(ConnectionError):
    """The peer closed the TCP connection."""


class ProtocolError(Exception):
    """The peer broke the Upper Layer protocol; the association is aborted with ``reason``."""

    def __init__(self, message: str, reason: AbortReason = AbortReason.UNEXPECTED_PDU) -> None:
        self.reason = reason
        super().__init__(message)


Socket = socket.socket | ssl.SSLSocket


class PduReader:
    """Reads whole PDUs from ``sock`` into one reusable buffer.

    ``max_p_data`` is the maximum PDU length we announced to the peer (0: none); a longer
    P-DATA-TF is a protocol error, as is any PDU over :data:`HARD_LIMIT`.

    Timeouts are the kernel's (``SO_RCVTIMEO``/``SO_SNDTIMEO`` on a blocking socket) rather
    than Python's, which would poll() before every read. When a read has waited
    ``timeout`` seconds, :attr:`keep_waiting` is asked (with the silence so far) whether
    to go on waiting; by default it says no and :class:`TimeoutError` is raised.

    A peer that sends a byte now and then is never silent for long; two deadlines bound
    it all the same: :attr:`deadline` (a :func:`time.monotonic` time by which every read
    must be done: the association negotiation as a whole) and :attr:`pdu_seconds` (how
    long one PDU may take from its first byte to its last: the minimum progress rate of
    a message in flight). Both are checked between reads, so they may be overrun by one
    read's timeout at most.
    """

    def __init__(self, sock: Socket, *, max_p_data: int = 0, timeout: float | None = None) -> None:
        self._sock = sock
        self._header = bytearray(6)
        self._header_view = memoryview(self._header)
        # P-DATA-TF bodies are at most max_p_data (PS3.8 D.1); a little slack for peers
        # that count the PDU header in (several do).
        self._max_p_data = (max_p_data + 64) if max_p_data else HARD_LIMIT
        self._buffer = bytearray(max(65536, min(self._max_p_data, 4 * 1024 * 1024)))
        self._view = memoryview(self._buffer)
        self._tick = 0.0
        self.keep_waiting: Callable[[float], bool] = _never
        #: Every read must be done by this :func:`time.monotonic` time (``None``: no limit).
        self.deadline: float | None = None
        #: Longest time one PDU may take from its first byte to its last (0: no limit).
        self.pdu_seconds = 0.0
        self._until: float | None = None
        if timeout is not None:
            self.set_timeout(timeout)

    def set_timeout(self, seconds: float) -> None:
        """Wait at most ``seconds`` for each read and each send on the socket."""
        self._tick = seconds
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket):
            # OpenSSL does not retry a read interrupted by SO_RCVTIMEO; Python's own
            # timeout handling does.
            sock.settimeout(seconds)
            return
        sock.settimeout(None)
        whole = int(seconds)
        timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)

    def read(self) -> tuple[int, memoryview]:
        """The next PDU's type and body (valid until the next call).

        Raises:
            ConnectionClosedError: the peer closed the connection (even mid-PDU).
            ProtocolError: an unknown PDU type or a PDU longer than allowed.
            TimeoutError: nothing arrived for as long as allowed.
        """
        self._until = self.deadline
        self._fill(self._header_view, 6)
        if self.pdu_seconds:
            started = time.monotonic() + self.pdu_seconds
            self._until = started if self._until is None else min(self._until, started)
        pdu_type, _reserved, length = _HEADER.unpack(self._header)
        if pdu_type == PduType.P_DATA_TF:
            limit = self._max_p_data
        elif pdu_type in (PduType.ASSOCIATE_RQ, PduType.ASSOCIATE_AC):
            limit = NEGOTIATION_LIMIT
        elif pdu_type in _FIXED_LENGTH:
            limit = _FIXED_LENGTH[pdu_type]
        else:
            raise ProtocolError(f"unknown PDU type 0x{pdu_type:02X}", AbortReason.UNRECOGNIZED_PDU)
        if length > limit:
            raise ProtocolError(
                f"{PduType(pdu_type).name} PDU of {length} bytes exceeds the {limit} allowed",
                AbortReason.INVALID_PDU_PARAMETER,
            )
        if length > len(self._buffer):
            # A new buffer rather than a resize: the caller may still hold a view of the
            # old one (a bytearray with exported views cannot be resized).
            self._buffer = bytearray(length)
            self._view = memoryview(self._buffer)
        body = self._view[:length]
        self._fill(body, length)
        return pdu_type, body

    def _fill(self, view: memoryview, size: int) -> None:
        received = 0
        silent = 0.0
        recv_into = self._sock.recv_into
        until = self._until
        while received < size:
            try:
                count = recv_into(view[received:size], size - received)
            except (BlockingIOError, TimeoutError, ssl.SSLWantReadError):
                silent += self._tick
                if self.keep_waiting(silent) and (until is None or time.monotonic() < until):
                    continue
                raise TimeoutError(f"nothing received for {silent:g} s") from None
            if count == 0:
                raise ConnectionClosedError("the peer closed the connection")
            received += count
            silent = 0.0
            if until is not None and received < size and time.monotonic() > until:
                raise TimeoutError(
                    f"too slow: {received} of {size} bytes of a PDU arrived in the time allowed"
                )


def _never(_silent: float) -> bool:
    return False


#: Body lengths of the fixed-size PDUs (PS3.8 9.3.4-9.3.8).
_FIXED_LENGTH = {
    PduType.ASSOCIATE_RJ: 4,
    PduType.RELEASE_RQ: 4,
    PduType.RELEASE_RP: 4,
    PduType.ABORT: 4,
}


def iter_pdvs(body: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """The PDVs of a P-DATA-TF body: (presentation context ID, control header, data).

    Raises:
        ProtocolError: a PDV item whose length does not fit the PDU (PS3.8 9.3.5.1).
    """
    position = 0
    end = len(body)
    while position < end:
        if end - position < 6:
            raise ProtocolError(
                "P-DATA-TF ends inside a PDV item header", AbortReason.INVALID_PDU_PARAMETER
            )
        length, context_id, control = _PDV_HEADER.unpack_from(body, position)
        if length < 2 or position + 4 + length > end:
            raise ProtocolError(
                f"PDV item length {length} does not fit its P-DATA-TF PDU",
                AbortReason.INVALID_PDU_PARAMETER,
            )
        yield context_id, control, body[position + 6 : position + 4 + length]
        position += 4 + length


def p_data_header(data_length: int, context_id: int, control: int) -> bytes:
    """PDU header and PDV item header for one PDV carrying ``data_length`` bytes."""
    return _HEADER.pack(PduType.P_DATA_TF, 0, data_length + 6) + _PDV_HEADER.pack(
        data_length + 2, context_id, control
    )


def p_data_pdus(
    data: bytes | memoryview, context_id: int, *, command: bool, max_pdu: int
) -> list[bytes]:
    """``data`` as P-DATA-TF PDUs of one PDV each, at most ``max_pdu`` long (0: one PDU)."""
    chunk = (max_pdu - 6) if max_pdu else max(len(data), 1)
    flag = COMMAND if command else 0
    view = memoryview(data)
    pdus = []
    for start in range(0, max(len(view), 1), chunk):
        part = view[start : start + chunk]
        last = start + chunk >= len(view)
        pdus.append(p_data_header(len(part), context_id, flag | (LAST if last else 0)) + part)
    return pdus


def release_rq() -> bytes:
    """A-RELEASE-RQ (PS3.8 9.3.6)."""
    return _HEADER.pack(PduType.RELEASE_RQ, 0, 4) + bytes(4)


def release_rp() -> bytes:
    """A-RELEASE-RP (PS3.8 9.3.7)."""
    return _HEADER.pack(PduType.RELEASE_RP, 0, 4) + bytes(4)


def abort(
    source: AbortSource = AbortSource.SERVICE_PROVIDER,
    reason: AbortReason = AbortReason.NOT_SPECIFIED,
) -> bytes:
    """A-ABORT (PS3.8 9.3.8); the reason is 0 when the service user aborts."""
    reason_value = reason if source == AbortSource.SERVICE_PROVIDER else 0
    return _HEADER.pack(PduType.ABORT, 0, 4) + bytes([0, 0, source, reason_value])


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    return _HEADER.pack(PduType.ASSOCIATE_RJ, 0, 4) + bytes([0, result, source, reason])


def with_header(pdu_type: PduType, body: bytes) -> bytes:
    """A PDU from its type and body."""
    return _HEADER.pack(pdu_type, 0, len(body)) + body
