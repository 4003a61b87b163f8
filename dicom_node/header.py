"""Read the identity of a received instance (its UIDs) without decoding the dataset.

The node stores bytes as received and never decodes pixel data. To file an instance it
needs only the SOP class/instance, study and series UIDs and the modality; those are read
from the raw elements, so no value conversion (and no pydicom validation warning) happens
here: the UIDs are checked by :func:`check_uid` with our own, path-safe rules.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_file_meta_info, read_partial
from pydicom.tag import BaseTag, Tag

from core.errors import InvalidInputError
from dicom_node.encoding import DEFLATED, decode_text, read_file_meta

_SOP_CLASS = Tag(0x0008, 0x0016)
_SOP_INSTANCE = Tag(0x0008, 0x0018)
_MODALITY = Tag(0x0008, 0x0060)
_STUDY = Tag(0x0020, 0x000D)
_SERIES = Tag(0x0020, 0x000E)
_PIXEL_DATA = Tag(0x7FE0, 0x0010)
_WANTED = [_SOP_CLASS, _SOP_INSTANCE, _MODALITY, _STUDY, _SERIES]

# PS3.5 9.1: components of digits separated by '.', no leading zero in a component,
# at most 64 characters. The same rule keeps UIDs safe as file and folder names.
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


@dataclass(frozen=True, slots=True)
class InstanceIdentity:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str | None


def check_uid(value: str, name: str) -> str:
    """Return ``value`` if it is a valid UID (PS3.5 9.1).

    Raises:
        InvalidInputError: naming the attribute and the offending value.
    """
    if not value:
        raise InvalidInputError(f"{name} is missing or empty", stage="receive")
    # fullmatch: ``match`` with ``$`` would let a trailing newline through.
    if len(value) > 64 or not _UID_RE.fullmatch(value):
        raise InvalidInputError(
            f"{name} {value[:80]!r} is not a valid UID (digits and dots, at most 64 "
            "characters, PS3.5 9.1)",
            stage="receive",
        )
    return value


def read_identity(encoded_file: bytes | memoryview) -> InstanceIdentity:
    """Parse the identifying UIDs from a DICOM file image (preamble + meta + dataset).

    Raises:
        InvalidInputError: the dataset cannot be parsed or lacks a valid UID.
    """
    try:
        dataset = read_partial(
            BytesIO(encoded_file),
            stop_when=_past_series_uid,
            specific_tags=list(_WANTED),
        )
        raw = {tag: _raw_text(dataset, tag) for tag in _WANTED}
    except InvalidInputError:
        raise
    except Exception as exc:  # pydicom raises many types for malformed input
        raise InvalidInputError(
            f"the dataset cannot be parsed: {type(exc).__name__}: {exc}", stage="receive"
        ) from exc
    return _identity(raw)


def _identity(raw: dict[BaseTag, str]) -> InstanceIdentity:
    return InstanceIdentity(
        sop_class_uid=check_uid(raw[_SOP_CLASS], "SOP Class UID (0008,0016)"),
        sop_instance_uid=check_uid(raw[_SOP_INSTANCE], "SOP Instance UID (0008,0018)"),
        study_instance_uid=check_uid(raw[_STUDY], "Study Instance UID (0020,000D)"),
        series_instance_uid=check_uid(raw[_SERIES], "Series Instance UID (0020,000E)"),
        modality=raw[_MODALITY] or None,
    )


def _past_series_uid(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return bool(tag > _SERIES)


def _raw_text(dataset: Any, tag: BaseTag) -> str:
    if tag not in dataset:
        return ""
    element = dataset.get_item(tag)
    value = element.value
    if isinstance(value, bytes):
        return decode_text(value)
    return "" if value is None else str(value).strip()


#: At most this much of a deflated data set is inflated to read its header.
HEADER_INFLATE_LIMIT = 16 * 1024 * 1024
_READ_CHUNK = 256 * 1024


def read_stored_header(path: Path) -> Dataset:
    """The data set of a spooled instance up to its pixel data, in bounded memory.

    pydicom inflates a deflated file whole before parsing it, so one small deflated
    instance could take gigabytes when its series completes; here at most
    :data:`HEADER_INFLATE_LIMIT` bytes are inflated. Pixel data is never read.

    Raises:
        InvalidInputError: the file cannot be parsed, or its header alone inflates past
            the limit.
    """
    try:
        meta = read_file_meta_info(path)
        if str(meta.get("TransferSyntaxUID", "")) not in DEFLATED:
            return dcmread(path, stop_before_pixels=True, defer_size="64 KB")
        with path.open("rb") as file:
            file.seek(read_file_meta(path).data_set_offset)
            inflated = _inflate_bounded(file)
        dataset = read_dataset(
            BytesIO(inflated),
            is_implicit_VR=False,
            is_little_endian=True,
            stop_when=_at_pixel_data,
        )
    except InvalidInputError:
        raise
    except Exception as exc:  # pydicom and zlib raise many types for malformed input
        raise InvalidInputError(
            f"{path.name}: the header cannot be read: {type(exc).__name__}: {exc}",
            stage="header",
        ) from exc
    dataset.file_meta = meta
    return dataset


def read_file_identity(path: Path) -> InstanceIdentity:
    """The identifying UIDs of a spooled file, read in bounded memory (never its pixels).

    Raises:
        InvalidInputError: the file cannot be parsed or lacks a valid UID.
    """
    dataset = read_stored_header(path)
    raw = {tag: _raw_text(dataset, tag) for tag in _WANTED}
    return _identity(raw)


def _inflate_bounded(file: BinaryIO) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    while len(out) < HEADER_INFLATE_LIMIT and not inflater.eof:
        pending = inflater.unconsumed_tail or file.read(_READ_CHUNK)
        if not pending:
            break
        out += inflater.decompress(pending, HEADER_INFLATE_LIMIT + 1 - len(out))
    if len(out) > HEADER_INFLATE_LIMIT:
        # Parse what fits: the header normally ends long before; a header that does not
        # fit fails in the parser as truncated.
        del out[HEADER_INFLATE_LIMIT:]
    return bytes(out)


def _at_pixel_data(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return bool(tag >= _PIXEL_DATA)
