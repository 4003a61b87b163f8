"""How DICOM bytes are laid out: transfer syntaxes, value representations, values, and
the PS3.10 File Meta Information. One place for what the node's readers and writers share.

* Transfer syntaxes by name (PS3.5 Annex A, PS3.6 Annex A) and what each means for the
  encoding of a data set: :func:`encoding_of`.
* The value representations whose explicit VR header has a 4-byte length (PS3.5 Table
  7.1-1) and those with a 2-byte one (Table 7.1-2).
* Values: UIDs padded with NUL, text with spaces, to an even length (PS3.5 6.2); identity
  values read back as ASCII without their padding (:func:`decode_text`). The node reads
  and writes only identifying values (UIDs, AE titles, codes), never text in a specific
  character set, so nothing here decodes one.
* The File Meta Information group of a Part 10 file (PS3.10 7.1): written for every
  received data set (:func:`file_meta`), read to send a file (:func:`parse_file_meta`,
  :func:`read_file_meta`) without reading its data set.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import ALL_TRANSFER_SYNTAXES

from core.vr import LONG_VRS

# -- transfer syntaxes (PS3.5 Annex A) -------------------------------------------------------

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPIP_REFERENCED_DEFLATE = "1.2.840.10008.1.2.4.95"
JPIP_HTJ2K_REFERENCED_DEFLATE = "1.2.840.10008.1.2.4.205"

#: Transfer syntaxes whose whole data set is deflated (PS3.5 A.5, A.4.33 JPIP).
DEFLATED = frozenset(
    {DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, JPIP_REFERENCED_DEFLATE, JPIP_HTJ2K_REFERENCED_DEFLATE}
)
#: Transfer syntaxes whose pixel data is native (not encapsulated, PS3.5 A.4); as in
#: pydicom, the JPIP syntaxes (pixel data referenced, not sent) count as encapsulated.
NATIVE = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    }
)
#: Every transfer syntax pydicom or pynetdicom knows; all but implicit VR little endian and
#: explicit VR big endian are explicit VR little endian (every encapsulated one is).
KNOWN_TRANSFER_SYNTAXES = frozenset(str(uid) for uid in AllTransferSyntaxes) | frozenset(
    str(uid) for uid in ALL_TRANSFER_SYNTAXES
)


class UnknownTransferSyntaxError(ValueError):
    """A transfer syntax whose encoding we do not know (never negotiated)."""


@dataclass(frozen=True, slots=True)
class Encoding:
    """How a transfer syntax encodes a data set (PS3.5 Annex A)."""

    implicit_vr: bool
    little_endian: bool
    #: The data set is deflated as a whole after its file meta (PS3.5 A.5).
    deflated: bool
    #: Pixel data, if any, is encapsulated (compressed) rather than native.
    encapsulated: bool


def encoding_of(transfer_syntax: str) -> Encoding:
    """How ``transfer_syntax`` encodes a data set.

    Raises:
        UnknownTransferSyntaxError: a syntax that neither pydicom nor pynetdicom knows
            (a private one, or a typo): its encoding cannot be assumed.
    """
    if transfer_syntax not in KNOWN_TRANSFER_SYNTAXES:
        raise UnknownTransferSyntaxError(f"unknown transfer syntax {transfer_syntax}")
    return Encoding(
        implicit_vr=transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN,
        little_endian=transfer_syntax != EXPLICIT_VR_BIG_ENDIAN,
        deflated=transfer_syntax in DEFLATED,
        encapsulated=transfer_syntax not in NATIVE,
    )


# -- value representations (PS3.5 7.1.2) ----------------------------------------------------


# LONG_VRS and SHORT_VRS live in core.vr, shared with the writers' strict re-read.

# -- values (PS3.5 6.2) ---------------------------------------------------------------------


def uid_value(uid: str, *, errors: str = "strict") -> bytes:
    """A UI value: ASCII, padded with one NUL to an even length (PS3.5 6.2).

    ``errors`` as for :meth:`str.encode`: ``"replace"`` writes what a peer sent even when
    it is not ASCII (such a UID is refused later, where UIDs are checked).

    Raises:
        UnicodeEncodeError: with ``errors="strict"``, a character that is not ASCII.
    """
    raw = uid.encode("ascii", errors=errors)
    return raw + b"\x00" if len(raw) % 2 else raw


def text_value(text: str) -> bytes:
    """An AE, CS, SH or LO value: ASCII (others as ``?``), padded with one space to an
    even length (PS3.5 6.2)."""
    raw = text.encode("ascii", errors="replace")
    return raw + b" " if len(raw) % 2 else raw


def decode_text(value: bytes | bytearray | memoryview) -> str:
    """An identifying value (UI, AE, CS, SH, LO) as text, without its padding.

    UI values are padded with NUL, the others with spaces (PS3.5 6.2); leading spaces are
    not significant either. Bytes that are not ASCII become U+FFFD: never an exception,
    whatever a peer sent.
    """
    return bytes(value).rstrip(b"\x00 ").lstrip(b" ").decode("ascii", errors="replace")


# -- PS3.10 file meta information (PS3.10 7.1) ----------------------------------------------

PREAMBLE = b"\x00" * 128
PREFIX = b"DICM"
#: The group of the File Meta Information elements.
FILE_META_GROUP = 0x0002
# Elements of group 0002 by name (PS3.10 Table 7.1-1).
GROUP_LENGTH = 0x0000
FILE_META_VERSION = 0x0001
MEDIA_STORAGE_SOP_CLASS_UID = 0x0002
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x0003
TRANSFER_SYNTAX_UID = 0x0010
IMPLEMENTATION_CLASS_UID_ELEMENT = 0x0012
IMPLEMENTATION_VERSION_NAME_ELEMENT = 0x0013
SOURCE_AE_TITLE = 0x0016

#: Our implementation identity (PS3.7 D.3.3.2): in association negotiation and in the
#: file meta of every spooled file.
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1399.1"
IMPLEMENTATION_VERSION_NAME = "PACSAI_010"

#: Tag, VR and 2-byte length (explicit VR little endian, as the file meta always is).
_ELEMENT = struct.Struct("<HH2sH")
#: Tag, VR, two reserved bytes and 4-byte length.
_LONG_ELEMENT = struct.Struct("<HH2sHI")
_UL = struct.Struct("<I")
#: UIDs have at most 64 characters (PS3.5 9.1); longer ones from a peer are cut there.
_MAX_UID = 64
#: Enough to hold the file meta of nearly every file in one read.
_HEAD_BYTES = 4096


def file_meta(
    *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str
) -> bytes:
    """Preamble, prefix and File Meta Information for a received data set (PS3.10 7.1).

    The values are what the peer sent (from its C-STORE request and association), written
    as they are: one that is not ASCII is written with ``?`` and refused later, where the
    data set's own UIDs are compared with them.
    """
    elements = [
        (MEDIA_STORAGE_SOP_CLASS_UID, b"UI", _peer_uid(sop_class_uid)),
        (MEDIA_STORAGE_SOP_INSTANCE_UID, b"UI", _peer_uid(sop_instance_uid)),
        (TRANSFER_SYNTAX_UID, b"UI", _peer_uid(transfer_syntax_uid)),
        (IMPLEMENTATION_CLASS_UID_ELEMENT, b"UI", uid_value(IMPLEMENTATION_CLASS_UID)),
        (IMPLEMENTATION_VERSION_NAME_ELEMENT, b"SH", text_value(IMPLEMENTATION_VERSION_NAME)),
    ]
    if source_ae:
        elements.append((SOURCE_AE_TITLE, b"AE", text_value(source_ae[:64])))
    # File Meta Information Version (0002,0001) OB 00\01, then the rest in tag order.
    body = _LONG_ELEMENT.pack(FILE_META_GROUP, FILE_META_VERSION, b"OB", 0, 2) + b"\x00\x01"
    for element, vr, value in elements:
        body += _ELEMENT.pack(FILE_META_GROUP, element, vr, len(value)) + value
    group_length = _ELEMENT.pack(FILE_META_GROUP, GROUP_LENGTH, b"UL", 4) + _UL.pack(len(body))
    return PREAMBLE + PREFIX + group_length + body


def _peer_uid(uid: str) -> bytes:
    return uid_value(uid[:_MAX_UID], errors="replace")


@dataclass(frozen=True, slots=True)
class FileMeta:
    """What a Part 10 file's File Meta Information says (PS3.10 7.1)."""

    #: The UI values of group 0002 by element number.
    uids: Mapping[int, str]
    #: Where the data set starts in the file (after preamble, prefix and file meta).
    data_set_offset: int

    @property
    def sop_class_uid(self) -> str:
        """Media Storage SOP Class UID (0002,0002); "" when absent."""
        return self.uids.get(MEDIA_STORAGE_SOP_CLASS_UID, "")

    @property
    def sop_instance_uid(self) -> str:
        """Media Storage SOP Instance UID (0002,0003); "" when absent."""
        return self.uids.get(MEDIA_STORAGE_SOP_INSTANCE_UID, "")

    @property
    def transfer_syntax_uid(self) -> str:
        """Transfer Syntax UID (0002,0010); "" when absent."""
        return self.uids.get(TRANSFER_SYNTAX_UID, "")

    def missing(self) -> list[str]:
        """The keywords of the identifying UIDs that are absent or empty."""
        return [keyword for element, keyword in _IDENTIFYING.items() if not self.uids.get(element)]


_IDENTIFYING = {
    MEDIA_STORAGE_SOP_CLASS_UID: "MediaStorageSOPClassUID",
    MEDIA_STORAGE_SOP_INSTANCE_UID: "MediaStorageSOPInstanceUID",
    TRANSFER_SYNTAX_UID: "TransferSyntaxUID",
}


def parse_file_meta(data: bytes | bytearray | memoryview) -> tuple[dict[int, str], int]:
    """The UI values of group 0002 by element, and the offset where the data set starts.

    ``data`` is the start of a Part 10 file; the offset may lie beyond it when the file
    meta is longer than what was read (read that much, and parse again). Without a File
    Meta Information Group Length, the group ends at the first element of another group.

    Raises:
        ValueError: no "DICM" prefix, or the meta cannot be parsed.
    """
    if bytes(data[128:132]) != PREFIX:
        raise ValueError("no DICM prefix at byte 128 (not a DICOM Part 10 file)")
    position = 132
    values: dict[int, str] = {}
    end: int | None = None
    while end is None or position < end:
        if position + 8 > len(data):
            if end is not None:
                return values, end
            raise ValueError("the file meta information is cut off")
        group, element, vr, short = _ELEMENT.unpack_from(data, position)
        if group != FILE_META_GROUP:
            break
        if vr in LONG_VRS:
            if position + 12 > len(data):
                if end is not None:
                    return values, end
                raise ValueError("the file meta information is cut off")
            (length,) = _UL.unpack_from(data, position + 8)
            header = 12
        else:
            length, header = short, 8
        value = data[position + header : position + header + length]
        if element == GROUP_LENGTH and length == 4 and len(value) == 4:
            end = position + header + length + _UL.unpack(value)[0]
        elif vr == b"UI":
            values[element] = decode_text(value)
        position += header + length
    return values, position if end is None else end


def read_file_meta(path: Path) -> FileMeta:
    """The File Meta Information of the Part 10 file at ``path``; its data set is not read.

    Raises:
        OSError: the file cannot be read.
        ValueError: not a Part 10 file, or a file meta that cannot be parsed.
    """
    with path.open("rb") as stream:
        head = stream.read(_HEAD_BYTES)
        uids, offset = parse_file_meta(head)
        if offset > len(head):
            head += stream.read(offset - len(head))
            uids, offset = parse_file_meta(head)
    return FileMeta(uids=uids, data_set_offset=offset)


def is_part10(path: Path) -> bool:
    """Whether the file at ``path`` starts like a Part 10 file (preamble and "DICM").

    Raises:
        OSError: the file cannot be read.
    """
    with path.open("rb") as stream:
        return stream.read(132)[128:] == PREFIX
