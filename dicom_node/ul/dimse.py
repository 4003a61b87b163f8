"""DIMSE command sets for C-STORE and C-ECHO (PS3.7 9.3.1, 9.3.5 and Annex E).

A command set is group 0000 encoded in Implicit VR Little Endian, whatever transfer
syntax the presentation context negotiated (PS3.7 6.3.1), and starts with its Command
Group Length. Only the handful of elements C-STORE and C-ECHO use are read and written;
others that a peer sends are kept in :attr:`Command.elements` and otherwise ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from dicom_node.encoding import decode_text, text_value, uid_value

_ELEMENT_HEADER = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")


class CommandField(IntEnum):
    """Command Field (0000,0100) values (PS3.7 Table E.1-1)."""

    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    C_CANCEL_RQ = 0x0FFF


#: Command Data Set Type (0000,0800) meaning "no data set follows" (PS3.7 E.1).
NO_DATA_SET = 0x0101
#: Any other value means a data set follows; 0x0000 is what most implementations send.
DATA_SET_PRESENT = 0x0000

# Element numbers in group 0000 (PS3.7 Table E.1-1).
GROUP_LENGTH = 0x0000
AFFECTED_SOP_CLASS_UID = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
PRIORITY = 0x0700
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE_UID = 0x1000


class CommandError(ValueError):
    """A command set that cannot be decoded (the association is aborted)."""


@dataclass(frozen=True, slots=True)
class Command:
    """A decoded command set: the values C-STORE and C-ECHO need, and the raw elements."""

    command_field: int
    message_id: int | None
    message_id_being_responded_to: int | None
    has_data_set: bool
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    status: int | None
    error_comment: str
    elements: dict[int, bytes] = field(repr=False)


def decode_command(data: bytes | bytearray | memoryview) -> Command:
    """Decode a command set (PS3.7 E.1, Implicit VR Little Endian).

    Raises:
        CommandError: an element runs past the end, an element is not in group 0000, or
            the Command Field is missing.
    """
    elements: dict[int, bytes] = {}
    position = 0
    end = len(data)
    while position < end:
        if end - position < 8:
            raise CommandError("the command set ends inside an element header")
        group, element, length = _ELEMENT_HEADER.unpack_from(data, position)
        position += 8
        if group != 0x0000:
            raise CommandError(f"element ({group:04X},{element:04X}) is not a command element")
        if length > end - position:
            raise CommandError(
                f"command element (0000,{element:04X}) of length {length} runs past the end"
            )
        elements[element] = bytes(data[position : position + length])
        position += length
    if COMMAND_FIELD not in elements:
        raise CommandError("the command set has no Command Field (0000,0100)")
    return Command(
        command_field=_us(elements, COMMAND_FIELD) or 0,
        message_id=_us(elements, MESSAGE_ID),
        message_id_being_responded_to=_us(elements, MESSAGE_ID_BEING_RESPONDED_TO),
        has_data_set=_us(elements, COMMAND_DATA_SET_TYPE) != NO_DATA_SET,
        affected_sop_class_uid=_text(elements, AFFECTED_SOP_CLASS_UID),
        affected_sop_instance_uid=_text(elements, AFFECTED_SOP_INSTANCE_UID),
        status=_us(elements, STATUS),
        error_comment=_text(elements, ERROR_COMMENT),
        elements=elements,
    )


def _us(elements: dict[int, bytes], element: int) -> int | None:
    value = elements.get(element)
    if value is None:
        return None
    if len(value) != 2:
        raise CommandError(f"command element (0000,{element:04X}) is not 2 bytes long (US)")
    return int(_US.unpack(value)[0])


def _text(elements: dict[int, bytes], element: int) -> str:
    return decode_text(elements.get(element, b""))


def encode_command(elements: list[tuple[int, bytes]]) -> bytes:
    """Encode group-0000 elements, in ascending order, with their group length first."""
    body = bytearray()
    for element, value in elements:
        body += _ELEMENT_HEADER.pack(0x0000, element, len(value))
        body += value
    return _ELEMENT_HEADER.pack(0x0000, GROUP_LENGTH, 4) + _UL.pack(len(body)) + body


def us_value(number: int) -> bytes:
    return _US.pack(number)


def c_store_rq(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, *, priority: int = 0
) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1); a data set follows it."""
    return encode_command(
        [
            (AFFECTED_SOP_CLASS_UID, uid_value(sop_class_uid)),
            (COMMAND_FIELD, us_value(CommandField.C_STORE_RQ)),
            (MESSAGE_ID, us_value(message_id)),
            (PRIORITY, us_value(priority)),
            (COMMAND_DATA_SET_TYPE, us_value(DATA_SET_PRESENT)),
            (AFFECTED_SOP_INSTANCE_UID, uid_value(sop_instance_uid)),
        ]
    )


def c_store_rsp(
    message_id: int,
    sop_class_uid: bytes,
    sop_instance_uid: bytes,
    status: int,
    *,
    error_comment: str = "",
) -> bytes:
    """A C-STORE-RSP command set (PS3.7 9.3.1.2).

    The UIDs are the request's raw (already padded) values, echoed back unchanged.
    """
    elements = [
        (AFFECTED_SOP_CLASS_UID, sop_class_uid),
        (COMMAND_FIELD, us_value(CommandField.C_STORE_RSP)),
        (MESSAGE_ID_BEING_RESPONDED_TO, us_value(message_id)),
        (COMMAND_DATA_SET_TYPE, us_value(NO_DATA_SET)),
        (STATUS, us_value(status)),
    ]
    if error_comment:
        # Error Comment is LO: at most 64 characters (PS3.7 C.4.2, PS3.5 6.2).
        elements.append((ERROR_COMMENT, text_value(error_comment[:64])))
    elements.append((AFFECTED_SOP_INSTANCE_UID, sop_instance_uid))
    return encode_command(elements)


def c_echo_rq(message_id: int, sop_class_uid: str) -> bytes:
    """A C-ECHO-RQ command set (PS3.7 9.3.5.1)."""
    return encode_command(
        [
            (AFFECTED_SOP_CLASS_UID, uid_value(sop_class_uid)),
            (COMMAND_FIELD, us_value(CommandField.C_ECHO_RQ)),
            (MESSAGE_ID, us_value(message_id)),
            (COMMAND_DATA_SET_TYPE, us_value(NO_DATA_SET)),
        ]
    )


def response(command_field: int, message_id: int, sop_class_uid: bytes, status: int) -> bytes:
    """A response without a data set: C-ECHO-RSP (PS3.7 9.3.5.2), or the answer to an
    operation we do not perform (command field with the response bit set)."""
    return encode_command(
        [
            (AFFECTED_SOP_CLASS_UID, sop_class_uid),
            (COMMAND_FIELD, us_value(command_field | 0x8000)),
            (MESSAGE_ID_BEING_RESPONDED_TO, us_value(message_id)),
            (COMMAND_DATA_SET_TYPE, us_value(NO_DATA_SET)),
            (STATUS, us_value(status)),
        ]
    )
