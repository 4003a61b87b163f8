"""Encoding a result object as the bytes of a PS3.10 file, as pydicom writes it, faster.

pydicom's writer (``dcmwrite``) spends most of its time on bookkeeping around each
element: a buffer per element, and the correction of ambiguous VRs run again for every
nested dataset, once for each of its ancestors (a SEG's thousands of functional group
items, an SR's deep content tree). :func:`encode_file` frames the elements itself
(tag, VR, length; sequences and items with their lengths, PS3.5 7.1.2 and 7.5) after
correcting ambiguous VRs once, and leaves everything that is a matter of DICOM values to
pydicom: its per-VR value writers encode each value (character sets, number strings,
padding), :func:`pydicom.filewriter.write_data_element` writes what is out of the
ordinary (pixel data, buffered values, values too long for their VR), and ``dcmwrite``
writes the preamble and File Meta Information. The result is the same bytes as
``dataset.save_as(..., enforce_file_format=True)``; the tests compare them for every kind
of result object. Only Explicit VR Little Endian bodies (every transfer syntax pacs-ai
writes) are encoded here; anything else goes to ``dcmwrite`` whole.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, MutableSequence
from io import BytesIO
from typing import Any, cast

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element, writers
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import AMBIGUOUS_VR, CUSTOMIZABLE_CHARSET_VR, EXPLICIT_VR_LENGTH_32, VR

_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
#: Elements whose encoding pydicom's own element writer decides (pixel data, whose
#: length depends on the transfer syntax; float and double pixel data).
_WHOLE_ELEMENT_TAGS = frozenset({_PIXEL_DATA, 0x7FE00008, 0x7FE00009})

#: VRs whose pydicom value writers only call ``write`` (and read the byte order): AT's,
#: for one, writes tags through the file's own method, so its element is written whole.
_VALUE_WRITTEN = frozenset(
    {
        *("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM"),
        *("UC", "UI", "UR", "UT", "FD", "FL", "SL", "SS", "SV", "UL", "US", "UV"),
        *("OB", "OD", "OF", "OL", "OV", "OW"),
    }
)

_Encodings = str | MutableSequence[str]


def encode_file(dataset: Dataset) -> bytes:
    """``dataset`` as a PS3.10 file: the bytes of ``dataset.save_as(buffer,
    enforce_file_format=True)``.

    Changes ``dataset`` as ``dcmwrite`` does: ambiguous VRs resolved, raw elements
    converted, the Pixel Data's undefined length set by the transfer syntax.

    Raises:
        ValueError: as ``dcmwrite`` (invalid File Meta Information, a value that cannot
            be encoded with writing validation RAISE, ...).
    """
    file_meta = getattr(dataset, "file_meta", None)
    syntax = UID(file_meta.get("TransferSyntaxUID", "") if file_meta is not None else "")
    if not _explicit_little(syntax):
        return _dcmwrite(dataset)
    header = _header(dataset, syntax)
    if "PixelData" in dataset:
        # PS3.5 A.4: encapsulated pixel data has undefined length (as dcmwrite sets it).
        dataset["PixelData"].is_undefined_length = syntax.is_compressed
    _correct_ambiguous(dataset, [dataset])
    body = bytearray()
    _Encoder(body).dataset(dataset, default_encoding)
    return header + bytes(body)


def encode_items(items: Iterable[Dataset], encoding: str = default_encoding) -> bytes:
    """The encoded items of a sequence (PS3.5 7.5), each with its defined length, in
    ``encoding`` (a character set that every value's characters share with the object's)."""
    out = bytearray()
    encoder = _Encoder(out)
    for item in items:
        _correct_ambiguous(item, [item])
        encoder.item(item, convert_encodings(encoding))
    return bytes(out)


def raw_sequence(tag: int, items: bytes) -> RawDataElement:
    """A sequence element whose ``items`` (:func:`encode_items`, :func:`item`) are
    encoded already: pydicom writes it as it is and reads it on access, as a sequence
    read from an Explicit VR Little Endian file. Put it in a dataset marked as read in
    that encoding (:func:`mark_encoded`), or pydicom decodes it before writing."""
    return RawDataElement(BaseTag(tag), "SQ", len(items), items, 0, False, True)


def mark_encoded(dataset: Dataset) -> Dataset:
    """Mark ``dataset`` as read from Explicit VR Little Endian in its own character set,
    so that its raw elements are written as they are (``Dataset.set_original_encoding``)."""
    dataset.set_original_encoding(False, True, default_encoding)
    return dataset


def item(body: bytes) -> bytes:
    """A sequence item of defined length around the encoded elements ``body``."""
    return _ITEM + struct.pack("<I", len(body)) + body


def element(tag: int, vr: str, value: bytes) -> bytes:
    """An encoded element (Explicit VR Little Endian); ``value`` of even length."""
    group, number = tag >> 16, tag & 0xFFFF
    if vr in EXPLICIT_VR_LENGTH_32:
        return struct.pack("<HH2sHI", group, number, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, number, vr.encode(), len(value)) + value


def text(value: str, padding: bytes = b" ") -> bytes:
    """A text value in the default character repertoire, padded to even length (UI
    values with NUL, PS3.5 6.2)."""
    encoded = value.encode(default_encoding)
    return encoded + padding if len(encoded) % 2 else encoded


def _correct_ambiguous(dataset: Dataset, ancestors: list[Dataset]) -> None:
    """Resolve the ambiguous VRs of ``dataset`` and its items once (pydicom's rules,
    ``correct_ambiguous_vr_element``), leaving raw elements (encoded already) as they are.
    """
    for value in dataset.elements():
        if isinstance(value, RawDataElement):
            continue
        if value.VR == "SQ":
            for child in value.value:
                _correct_ambiguous(child, [child, *ancestors])
        elif value.VR in AMBIGUOUS_VR:
            correct_ambiguous_vr_element(value, dataset, True, ancestors)


def _dcmwrite(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _header(dataset: Dataset, syntax: UID) -> bytes:
    """The preamble and File Meta Information ``dcmwrite`` writes for ``dataset``: from a
    dataset with only what it reads for them (its SOP Class and Instance UIDs)."""
    proxy = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if keyword in dataset:
            setattr(proxy, keyword, dataset[keyword].value)
    proxy.file_meta = dataset.file_meta
    preamble = getattr(dataset, "preamble", None)
    if preamble is not None:
        proxy.preamble = preamble
    written = _dcmwrite(proxy)
    end = _meta_end(written)
    if end is None or syntax != dataset.file_meta.TransferSyntaxUID:
        raise ValueError("pydicom wrote no File Meta Information before the dataset")
    return written[:end]


def _meta_end(encoded: bytes) -> int | None:
    """Where the group 0002 elements after the preamble end."""
    if encoded[128:132] != b"DICM":
        return None
    offset = 132
    while offset + 8 <= len(encoded):
        (group,) = struct.unpack_from("<H", encoded, offset)
        if group != 0x0002:
            return offset
        vr = encoded[offset + 4 : offset + 6].decode("ascii")
        if vr in EXPLICIT_VR_LENGTH_32:
            (length,) = struct.unpack_from("<I", encoded, offset + 8)
            offset += 12 + length
        else:
            (length,) = struct.unpack_from("<H", encoded, offset + 6)
            offset += 8 + length
    return offset


def _scratch() -> DicomBytesIO:
    """A buffer for pydicom's writers, in the encoding of the body."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    return buffer


class _Parts(list[bytes]):
    """What pydicom's value writers write to (all they use of a file: ``write`` and the
    encoding), kept as the list of what they wrote."""

    is_little_endian = True

    def write(self, data: bytes) -> int:
        self.append(data)
        return len(data)


class _Encoder:
    """Explicit VR Little Endian encoding of datasets into ``out``."""

    def __init__(self, out: bytearray) -> None:
        self.out = out

    def dataset(self, dataset: Dataset, parent_encoding: _Encodings) -> None:
        charset = dataset.get("SpecificCharacterSet", parent_encoding)
        encodings = convert_encodings(charset or [default_encoding])
        # As write_dataset: a dataset read in this very encoding and character set keeps
        # its raw elements' bytes; any other has them converted and encoded again.
        keeps_raw = (
            dataset.original_encoding == (False, True)
            and dataset.original_character_set == dataset._character_set
        )
        get = dataset.get_item if keeps_raw else dataset.__getitem__
        for tag in sorted(dataset.keys()):
            # Group Length elements are retired (PS3.5 7.2): not written, as dcmwrite.
            if tag.element == 0 and tag.group > 6:
                continue
            self.element(get(tag), encodings)

    def element(self, element: DataElement | RawDataElement, encodings: list[str]) -> None:
        if isinstance(element, RawDataElement):
            self.whole(element, encodings)
            return
        vr = element.VR
        if vr == "SQ":
            self.sequence(element, encodings)
            return
        if vr not in _VALUE_WRITTEN or element.tag in _WHOLE_ELEMENT_TAGS or element.is_buffered:
            self.whole(element, encodings)
            return
        value = self.value(element, vr, encodings)
        if vr in EXPLICIT_VR_LENGTH_32:
            self.out += struct.pack(
                "<HH2sHI", element.tag.group, element.tag.element, vr.encode(), 0, len(value)
            )
        elif len(value) > 0xFFFF:
            # dcmwrite writes such a value as UN (with a warning): its own writer does it.
            self.whole(element, encodings)
            return
        else:
            self.out += struct.pack(
                "<HH2sH", element.tag.group, element.tag.element, vr.encode(), len(value)
            )
        self.out += value

    def value(self, element: DataElement, vr: str, encodings: list[str]) -> bytes:
        """The encoded value, by pydicom's writer for the VR (``write_data_element``'s
        three ways of calling them)."""
        if element.is_empty:
            return b""
        found, parameter = writers[VR(vr)]
        # The writers take a DicomIO; _Parts is what of one they use.
        writer = cast(Callable[..., Any], found)
        parts = _Parts()
        if vr in CUSTOMIZABLE_CHARSET_VR:
            writer(parts, element, encodings=encodings)
        elif parameter is not None:
            writer(parts, element, parameter)
        else:
            writer(parts, element)
        return b"".join(parts)

    def whole(self, element: DataElement | RawDataElement, encodings: list[str]) -> None:
        buffer = _scratch()
        write_data_element(buffer, element, encodings)
        self.out += buffer.getvalue()

    def sequence(self, element: DataElement, encodings: list[str]) -> None:
        header = len(self.out)
        self.out += struct.pack("<HH2sHI", element.tag.group, element.tag.element, b"SQ", 0, 0)
        start = len(self.out)
        for item in element.value:
            self.item(item, encodings)
        if element.is_undefined_length:
            struct.pack_into("<I", self.out, header + 8, _UNDEFINED)
            self.out += _SEQUENCE_END
        else:
            struct.pack_into("<I", self.out, header + 8, len(self.out) - start)

    def item(self, item: Dataset, encodings: list[str]) -> None:
        header = len(self.out)
        self.out += _ITEM + struct.pack("<I", _UNDEFINED)
        start = len(self.out)
        self.dataset(item, encodings)
        if getattr(item, "is_undefined_length_sequence_item", False):
            self.out += _ITEM_END
        else:
            struct.pack_into("<I", self.out, header + 4, len(self.out) - start)


def _explicit_little(syntax: UID) -> bool:
    """Whether ``syntax`` is a public transfer syntax whose datasets are Explicit VR Little
    Endian, not deflated (PS3.5 A.2, A.4)."""
    return bool(
        syntax.is_transfer_syntax
        and not syntax.is_private
        and not syntax.is_implicit_VR
        and syntax.is_little_endian
        and not syntax.is_deflated
    )
