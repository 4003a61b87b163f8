"""Reading our own encoded objects back strictly, before they reach the disk.

Every value of a result object is converted as a strict reader converts it (pydicom's
reading validation RAISE: length, characters, format of each VR, PS3.5 6.2), from the very
bytes that will be written: elements copied from the source images as whole objects
bypass any check made while building, and the encoder may format a value differently
from how it was set.

The bytes are walked directly (Explicit VR Little Endian, which every result is written
in, PS3.5 7.1.2 and 7.5), without building a dataset: a SEG has thousands of sequence
items, an SR on a CT thousands of content items, and their values repeat (codes, units,
the same UIDs in the SEG and the SR). Each distinct value is converted once per VR and
character set (:class:`StrictChecker` keeps them for the objects of one result), by
pydicom's own conversion. Objects in another transfer syntax are read with pydicom.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import MutableSequence
from io import BytesIO

from pydicom import config, dcmread
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from core.errors import InvalidInputError
from core.vr import LONG_VRS

logger = logging.getLogger(__name__)

STAGE = "write"

#: Values too large to be anything but pixels or documents: never converted.
BULK_TAGS = frozenset(
    {Tag(0x7FE0, 0x0010), Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009), Tag(0x0042, 0x0011)}
)
_SPECIFIC_CHARACTER_SET = 0x00080005
_TRANSFER_SYNTAX = 0x00020010
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
#: VRs whose values are converted every time, never from the values seen: UN may become
#: the tag's dictionary VR.
_CONVERT_ALWAYS = frozenset({"UN"})
_EXPLICIT_LITTLE = UID("1.2.840.10008.1.2.1")
_FILE_META_START = 132  # 128-byte preamble and "DICM"

_Encoding = str | MutableSequence[str]


class StrictChecker:
    """Checks encoded objects strictly, remembering the values already converted, so that
    the objects of one result (SEG, SR, ...) convert what they share only once."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, bytes, str]] = set()

    def check(self, encoded: bytes) -> None:
        """Convert every value of ``encoded`` (a PS3.10 file) with reading validation RAISE.

        Raises:
            InvalidInputError: (``stage="write"``) a value does not conform to its VR. The
                message names the attribute and where it is, never its value (a patient's
                name or birth date, as often as not): pydicom's own text, which quotes
                it, is logged at DEBUG only.
        """
        with config.strict_reading():
            meta_end, syntax = _file_meta(encoded)
            if syntax != _EXPLICIT_LITTLE or meta_end is None:
                _check_dataset(dcmread(BytesIO(encoded)), "")
                return
            _Walk(encoded, self._seen).elements(meta_end, len(encoded), "", default_encoding)


def check_strictly(encoded: bytes) -> None:
    """:meth:`StrictChecker.check` of one object on its own."""
    StrictChecker().check(encoded)


def _file_meta(encoded: bytes) -> tuple[int | None, UID | None]:
    """Where the dataset after the File Meta Information starts, and its transfer syntax."""
    if encoded[128:_FILE_META_START] != b"DICM":
        return None, None
    offset, syntax = _FILE_META_START, None
    while offset + 8 <= len(encoded):
        group, element = struct.unpack_from("<HH", encoded, offset)
        if group != 0x0002:
            return offset, syntax
        vr = encoded[offset + 4 : offset + 6]
        if vr in LONG_VRS:
            (length,) = struct.unpack_from("<I", encoded, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", encoded, offset + 6)
            start = offset + 8
        if (group << 16 | element) == _TRANSFER_SYNTAX:
            syntax = UID(encoded[start : start + length].decode("ascii").rstrip("\0 "))
        offset = start + length
    return None, syntax


class _Walk:
    def __init__(self, data: bytes, seen: set[tuple[str, bytes, str]]) -> None:
        self.data = data
        self.seen = seen

    def elements(self, offset: int, end: int, path: str, encoding: _Encoding) -> int:
        """Check the elements from ``offset`` to ``end`` (or to the end of an item of
        undefined length); returns where they end."""
        data = self.data
        while offset < end:
            group, element = struct.unpack_from("<HH", data, offset)
            tag = group << 16 | element
            if tag == _ITEM_END:
                return offset + 8
            vr = data[offset + 4 : offset + 6]
            if vr in LONG_VRS:
                (length,) = struct.unpack_from("<I", data, offset + 8)
                start = offset + 12
            else:
                (length,) = struct.unpack_from("<H", data, offset + 6)
                start = offset + 8
            if vr == b"SQ":
                keyword = keyword_for_tag(tag) or "private element"
                offset = self.sequence(start, length, f"{path}{keyword}", encoding)
                continue
            if length == _UNDEFINED:  # encapsulated pixel data (PS3.5 A.4)
                offset = self.fragments(start)
                continue
            offset = start + length
            if tag in BULK_TAGS:
                continue
            value = data[start:offset]
            if tag == _SPECIFIC_CHARACTER_SET:
                encoding = self.character_set(value, path)
            self.convert(tag, vr.decode("ascii"), value, path, encoding)
        return offset

    def sequence(self, start: int, length: int, name: str, encoding: _Encoding) -> int:
        """Check the items of a sequence; returns where it ends."""
        data = self.data
        end = len(data) if length == _UNDEFINED else start + length
        offset, index = start, 0
        while offset < end:
            group, element = struct.unpack_from("<HH", data, offset)
            (item_length,) = struct.unpack_from("<I", data, offset + 4)
            offset += 8
            if (group << 16 | element) == _SEQUENCE_END:
                return offset
            item_end = end if item_length == _UNDEFINED else offset + item_length
            offset = self.elements(offset, item_end, f"{name}[{index}].", encoding)
            index += 1
        return offset

    def fragments(self, start: int) -> int:
        """Skip the items of encapsulated pixel data; returns where they end."""
        offset = start
        while offset < len(self.data):
            group, element = struct.unpack_from("<HH", self.data, offset)
            (length,) = struct.unpack_from("<I", self.data, offset + 4)
            offset += 8
            if (group << 16 | element) == _SEQUENCE_END:
                return offset
            offset += length
        return offset

    def character_set(self, value: bytes, path: str) -> _Encoding:
        terms = value.decode("ascii", errors="replace").rstrip(" \0").split("\\")
        try:
            return convert_encodings([term.strip() for term in terms])
        except (LookupError, ValueError) as exc:
            raise _nonconforming(_where(path, _SPECIFIC_CHARACTER_SET), exc) from None

    def convert(self, tag: int, vr: str, value: bytes, path: str, encoding: _Encoding) -> None:
        key = (vr, value, str(encoding))
        if key in self.seen and vr not in _CONVERT_ALWAYS:
            return
        raw = RawDataElement(BaseTag(tag), vr, len(value), value, 0, False, True)
        try:
            convert_raw_data_element(raw, encoding=encoding)
        except (ValueError, OverflowError, LookupError) as exc:
            # pydicom: OverflowError for a DS value longer than 16 characters.
            raise _nonconforming(_where(path, tag), exc) from None
        self.seen.add(key)


def _where(path: str, tag: int) -> str:
    """``path``, the attribute's keyword and its tag: ``ContentSequence[2].CodeValue
    (0008,0100)``."""
    return f"{path}{keyword_for_tag(tag) or 'private element'} {BaseTag(tag)}"


def _nonconforming(where: str, exc: Exception) -> InvalidInputError:
    """The error naming ``where``; the cause's text quotes the value, so it is logged at
    DEBUG only and the error is not chained to it."""
    logger.debug("strict re-reading: %s: %s", where, exc)
    return InvalidInputError(
        f"the encoded object's {where} has a value that does not conform to its VR "
        "(PS3.5 6.2); it is most likely copied from the source images: fix them at the "
        "source (the value is logged at DEBUG only)",
        stage=STAGE,
    )


def _check_dataset(dataset: Dataset, path: str) -> None:
    """The same check on a dataset read by pydicom (a transfer syntax not walked here)."""
    for tag in list(dataset.keys()):
        if tag in BULK_TAGS:
            continue
        try:
            element = dataset[tag]
        except (ValueError, OverflowError, LookupError) as exc:
            raise _nonconforming(_where(path, tag), exc) from None
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                _check_dataset(item, f"{path}{element.keyword}[{index}].")
