"""Check a data set's structure while it streams in, and pick out its identity.

The SCP writes each received data set straight into the spool, fragment by fragment, and
never holds it whole in memory. :class:`DataSetScanner` sees the same fragments: it walks
the element headers (PS3.5 7.1-7.5), skipping values without copying them, nested
sequences and items included, and keeps the few top-level values that file an instance
(SOP Class and Instance, Study and Series Instance UIDs, Modality). At the end it says
whether the data set is well formed: every element's length fits the data that follows
and its enclosing item, every sequence and item of undefined length is closed, nothing
is cut off. Values are never decoded or converted, so nothing is logged about them.

Deflated transfer syntaxes (PS3.5 A.5) are inflated on the fly for the walk, a bounded
piece at a time, and the inflated size is capped (``max_bytes``): a small deflate bomb is
refused without ever being held inflated. The bytes stored are the ones received.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from core.errors import InvalidInputError
from core.vr import LONG_VRS, SHORT_VRS
from dicom_node.encoding import (
    UnknownTransferSyntaxError,
    decode_text,
    encoding_of,
)
from dicom_node.header import InstanceIdentity, check_uid

__all__ = ["DataSetScanner", "UnknownTransferSyntaxError"]

_SOP_CLASS = 0x00080016
_SOP_INSTANCE = 0x00080018
_MODALITY = 0x00080060
_STUDY = 0x0020000D
_SERIES = 0x0020000E
_WANTED = frozenset({_SOP_CLASS, _SOP_INSTANCE, _MODALITY, _STUDY, _SERIES})
#: Inflated bytes walked at a time for the deflated syntaxes.
_INFLATE_PIECE = 1024 * 1024
#: Longer identity values are invalid anyway (UIDs have at most 64 characters).
_MAX_CAPTURE = 1024

_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF


def _vr(name: bytes) -> int:
    # The VR's two bytes as one number: the hot loop compares it without slicing.
    return int.from_bytes(name, "big")


_SQ, _UN, _OB, _OW = _vr(b"SQ"), _vr(b"UN"), _vr(b"OB"), _vr(b"OW")
_LONG_VRS = frozenset(map(_vr, LONG_VRS))
_SHORT_VRS = frozenset(map(_vr, SHORT_VRS))

#: Tag and 4-byte length; in explicit VR the last field holds VR and 2-byte length.
_IMPLICIT_LE, _IMPLICIT_BE = struct.Struct("<HHI"), struct.Struct(">HHI")
_UL_LE, _UL_BE = struct.Struct("<I"), struct.Struct(">I")

_SEQUENCE, _ITEM_KIND, _FRAGMENTS = 0, 1, 2
_KIND_NAMES = {_SEQUENCE: "sequence", _ITEM_KIND: "item", _FRAGMENTS: "encapsulated pixel data"}


@dataclass(slots=True)
class _Container:
    kind: int
    tag: int
    #: Absolute offset where it ends; ``None`` for undefined length (ends at a delimiter).
    end: int | None
    implicit: bool
    little: bool


class _MalformedError(Exception):
    pass


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class DataSetScanner:
    """Walks one data set fed in fragments; see the module docstring.

    Call :meth:`feed` with each fragment in order, then :meth:`identity`. A structural
    problem found along the way stops the walk (the caller keeps storing the bytes, to
    quarantine them) and is raised by :meth:`identity`.

    Raises:
        UnknownTransferSyntaxError: from the constructor, for a syntax we do not know.
    """

    def __init__(self, transfer_syntax: str, *, max_bytes: int = 0) -> None:
        encoding = encoding_of(transfer_syntax)
        self.transfer_syntax = transfer_syntax
        self._implicit = encoding.implicit_vr
        self._little = encoding.little_endian
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS) if encoding.deflated else None
        #: Bytes received (as stored, before any inflation).
        self.size = 0
        #: Largest data set accepted, as received and as inflated; 0: no limit.
        self.max_bytes = max_bytes
        self._inflated = 0
        self._position = 0
        self._skip = 0
        self._element_tag = 0
        self._element_length = 0
        self._capture: bytearray | None = None
        self._carry = b""
        self._stack: list[_Container] = []
        self._values: dict[int, bytes] = {}
        self._error: str | None = None
        #: The data set turned out to be implicit VR although the syntax is explicit.
        self.implicit_vr_found = False

    @property
    def error(self) -> str | None:
        """The first structural problem found so far, if any."""
        return self._error

    def feed(self, data: bytes | memoryview) -> None:
        """Walk the next fragment of the data set."""
        self.size += len(data)
        if self._error is not None:
            return
        try:
            self._check_size()
            if self._inflater is None:
                self._scan(data)
            else:
                self._inflate(data)
        except _MalformedError as exc:
            self._error = str(exc)

    def _check_size(self) -> None:
        if self.over_limit:
            raise _MalformedError(
                f"the data set is larger than node.max_instance_bytes ({self.max_bytes})"
            )

    @property
    def over_limit(self) -> bool:
        """Whether the data set went past ``max_bytes`` (its rest need not be kept)."""
        return bool(self.max_bytes) and self.size > self.max_bytes

    def _inflate(self, data: bytes | memoryview) -> None:
        """Inflate and walk ``data`` a bounded piece at a time (memory: one piece)."""
        assert self._inflater is not None
        pending: bytes | memoryview = data
        while pending:
            try:
                piece = self._inflater.decompress(pending, _INFLATE_PIECE)
            except zlib.error as exc:
                raise _MalformedError(f"the deflated data set cannot be inflated: {exc}") from exc
            self._inflated += len(piece)
            if self.max_bytes and self._inflated > self.max_bytes:
                raise _MalformedError(
                    "the deflated data set inflates beyond node.max_instance_bytes "
                    f"({self.max_bytes}) from {self.size} bytes received"
                )
            self._scan(piece)
            pending = self._inflater.unconsumed_tail

    def identity(self) -> InstanceIdentity:
        """The instance's identity, once the whole data set has been fed.

        Raises:
            InvalidInputError: the data set is malformed or truncated, or an identifying
                UID is missing or invalid; the message says what and where.
        """
        self._finish()
        if self._error is not None:
            raise InvalidInputError(self._error, stage="receive")
        values = {tag: decode_text(value) for tag, value in self._values.items()}
        return InstanceIdentity(
            sop_class_uid=check_uid(values.get(_SOP_CLASS, ""), "SOP Class UID (0008,0016)"),
            sop_instance_uid=check_uid(
                values.get(_SOP_INSTANCE, ""), "SOP Instance UID (0008,0018)"
            ),
            study_instance_uid=check_uid(values.get(_STUDY, ""), "Study Instance UID (0020,000D)"),
            series_instance_uid=check_uid(
                values.get(_SERIES, ""), "Series Instance UID (0020,000E)"
            ),
            modality=values.get(_MODALITY) or None,
        )

    # -- the walk ---------------------------------------------------------------------

    def _finish(self) -> None:
        if self._error is not None:
            return
        try:
            self._check_end()
        except _MalformedError as exc:
            self._error = str(exc)

    def _check_end(self) -> None:
        if self._inflater is not None:
            try:
                self._scan(self._inflater.flush())
            except zlib.error as exc:
                raise _MalformedError(f"the deflated data set cannot be inflated: {exc}") from exc
            if not self._inflater.eof:
                raise _MalformedError("the deflated data set is cut off before its end")
        if self._skip:
            raise _MalformedError(
                f"the data set ends inside element {_tag(self._element_tag)}: its length "
                f"is {self._element_length} but only "
                f"{self._element_length - self._skip} bytes follow"
            )
        if self._carry:
            raise _MalformedError(
                f"the data set ends inside an element header ({len(self._carry)} "
                "stray bytes at the end)"
            )
        if self._stack:
            open_container = self._stack[0]
            raise _MalformedError(
                f"the data set ends inside {_KIND_NAMES[open_container.kind]} "
                f"{_tag(open_container.tag)}, which is never closed"
            )

    def _scan(self, data: bytes | memoryview) -> None:
        position = 0
        size = len(data)
        if self._carry:
            carried = len(self._carry)
            head = self._carry + bytes(data[: 12 - carried])
            used = self._header(head, 0, len(head))
            if not used:
                self._carry = head
                return
            self._carry = b""
            position = used - carried
        stack = self._stack
        header = self._header
        while True:
            skip = self._skip
            if skip:
                take = skip if skip <= size - position else size - position
                if self._capture is not None:
                    self._capture += data[position : position + take]
                position += take
                self._position += take
                self._skip = skip = skip - take
                if skip:
                    return
                if self._capture is not None:
                    self._values[self._element_tag] = bytes(self._capture)
                    self._capture = None
            while stack and stack[-1].end == self._position:
                stack.pop()
            if position >= size:
                return
            used = header(data, position, size)
            if not used:
                self._carry = bytes(data[position:])
                return
            position += used

    def _header(  # noqa: PLR0912 -- the hot loop, kept in one function for speed
        self, data: bytes | memoryview, position: int, size: int
    ) -> int:
        """Handle the element header at ``position``; its length, or 0 if incomplete."""
        available = size - position
        if available < 8:
            return 0
        stack = self._stack
        if stack:
            implicit, little = stack[-1].implicit, stack[-1].little
        else:
            implicit, little = self._implicit, self._little
        if little:
            group, element, length = _IMPLICIT_LE.unpack_from(data, position)
        else:
            group, element, length = _IMPLICIT_BE.unpack_from(data, position)
        tag = (group << 16) | element
        vr = 0
        header = 8
        if group != 0xFFFE and not implicit:
            vr = (data[position + 4] << 8) | data[position + 5]
            if vr in _SHORT_VRS:
                length >>= 16 if little else 0
                length &= 0xFFFF
            elif vr in _LONG_VRS:
                if available < 12:
                    return 0
                (length,) = (_UL_LE if little else _UL_BE).unpack_from(data, position + 8)
                header = 12
            elif not stack and not self._position and self._switch_to_implicit(data, position):
                return self._header(data, position, size)
            else:
                shown = bytes(data[position + 4 : position + 6])
                raise _MalformedError(
                    f"element {_tag(tag)} has an unknown value representation {shown!r} "
                    "(is the data set in the negotiated transfer syntax?)"
                )
        value_start = self._position + header
        self._position = value_start
        if (
            length != _UNDEFINED
            and vr != _SQ
            and group != 0xFFFE
            and (not stack or (stack[-1].kind == _ITEM_KIND and stack[-1].end is None))
        ):
            # The common case: a plain element at the top level or in an undefined-length
            # item; its value is skipped (or captured when it identifies the instance).
            self._element_tag = tag
            self._element_length = length
            self._skip = length
            if not stack and tag in _WANTED and length <= _MAX_CAPTURE:
                if length:
                    self._capture = bytearray()
                else:
                    self._values[tag] = b""
            return header
        self._element(tag, vr, length, value_start, implicit=implicit, little=little)
        return header

    def _switch_to_implicit(self, data: bytes | memoryview, position: int) -> bool:
        """Whether an "explicit VR" data set is really implicit VR (checked on its first
        element only): some senders get this wrong, and pydicom reads such files the same
        way, so they are accepted as received and the caller is told."""
        candidate = bytes(data[position + 4 : position + 6])
        if candidate.isalpha() and candidate.isupper():
            return False
        self._implicit = True
        self.implicit_vr_found = True
        return True

    def _element(
        self, tag: int, vr: int, length: int, value_start: int, *, implicit: bool, little: bool
    ) -> None:
        stack = self._stack
        top = stack[-1] if stack else None
        if (
            top is not None
            and top.end is not None
            and length != _UNDEFINED
            and value_start + length > top.end
        ):
            raise _MalformedError(
                f"element {_tag(tag)} of length {length} runs past the end of its "
                f"{_KIND_NAMES[top.kind]} {_tag(top.tag)}"
            )
        if top is not None and top.kind == _SEQUENCE:
            self._in_sequence(top, tag, length, value_start)
        elif top is not None and top.kind == _FRAGMENTS:
            self._in_fragments(tag, length)
        else:
            self._in_item(top, tag, vr, length, value_start, implicit=implicit, little=little)

    def _in_sequence(self, top: _Container, tag: int, length: int, value_start: int) -> None:
        if tag == _ITEM:
            end = None if length == _UNDEFINED else value_start + length
            self._stack.append(_Container(_ITEM_KIND, top.tag, end, top.implicit, top.little))
        elif tag == _SEQUENCE_DELIMITER and top.end is None:
            self._stack.pop()
        else:
            raise _MalformedError(
                f"sequence {_tag(top.tag)} holds {_tag(tag)} where an item was expected"
            )

    def _in_fragments(self, tag: int, length: int) -> None:
        if tag == _ITEM and length != _UNDEFINED:
            self._skip_value(tag, length, capture=False)
        elif tag == _SEQUENCE_DELIMITER:
            self._stack.pop()
        else:
            raise _MalformedError(
                f"encapsulated pixel data holds {_tag(tag)} where a fragment was expected"
            )

    def _in_item(
        self,
        top: _Container | None,
        tag: int,
        vr: int,
        length: int,
        value_start: int,
        *,
        implicit: bool,
        little: bool,
    ) -> None:
        """An element in an item's content, or at the top level of the data set."""
        stack = self._stack
        if tag == _ITEM_DELIMITER and top is not None and top.end is None:
            stack.pop()
        elif tag >> 16 == 0xFFFE:
            raise _MalformedError(f"unexpected {_tag(tag)} among the data elements")
        elif length == _UNDEFINED:
            if tag == _PIXEL_DATA and top is None and (implicit or vr in (_OB, _OW)):
                stack.append(_Container(_FRAGMENTS, tag, None, implicit, little))
            elif implicit or vr == _SQ:
                stack.append(_Container(_SEQUENCE, tag, None, implicit, little))
            elif vr == _UN:
                # PS3.5 6.2.2: an undefined-length UN holds implicit VR little endian items.
                stack.append(_Container(_SEQUENCE, tag, None, True, True))
            else:
                raise _MalformedError(f"element {_tag(tag)} has an undefined length")
        elif vr == _SQ:
            stack.append(_Container(_SEQUENCE, tag, value_start + length, implicit, little))
        else:
            self._skip_value(tag, length, capture=top is None and tag in _WANTED)

    def _skip_value(self, tag: int, length: int, *, capture: bool) -> None:
        self._element_tag = tag
        self._element_length = length
        self._skip = length
        if capture and length <= _MAX_CAPTURE:
            if length:
                self._capture = bytearray()
            else:
                self._values[tag] = b""
