"""DIMSE status codes we send and interpret, by name (PS3.4 Annex B.2.3, PS3.7 Annex C).

Every status pacs-ai answers or checks is named here, so that no bare hex literal can
hide a wrong code (pynetdicom's storescp once answered 0x0210 where 0xC210 was meant).
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """C-STORE / C-ECHO statuses (PS3.4 Table B.2-1, PS3.7 Table C-1)."""

    SUCCESS = 0x0000
    #: Failure: Processing failure (PS3.7 C.4.1): a fault of ours, not of the data.
    PROCESSING_FAILURE = 0x0110
    #: Failure: Refused: SOP Class not supported (PS3.7 C.4.1).
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: Failure: Unrecognized Operation (PS3.7 C.4.1): a DIMSE operation we do not perform.
    UNRECOGNIZED_OPERATION = 0x0211
    #: Failure: Refused: Out of Resources (PS3.4 B.2.3; A7xx range).
    OUT_OF_RESOURCES = 0xA700
    #: Failure: Error: Data Set does not match SOP Class (A9xx range).
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: Failure: Error: Cannot understand (Cxxx range).
    CANNOT_UNDERSTAND = 0xC000
    #: Warning: Coercion of Data Elements.
    COERCION_OF_DATA_ELEMENTS = 0xB000
    #: Warning: Elements Discarded.
    ELEMENTS_DISCARDED = 0xB006
    #: Warning: Data Set does not match SOP Class.
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007


def category(status: int) -> str:
    """Return ``success``, ``warning`` or ``failure`` for a C-STORE response status.

    PS3.4 B.2.3: 0x0000 success; 0x0001 and 0xBxxx warnings; everything else a failure
    (0x0107 and 0x0116 are also warnings in PS3.7 C.4.1).
    """
    if status == Status.SUCCESS:
        return "success"
    if status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return "warning"
    return "failure"


def is_transient_failure(status: int) -> bool:
    """Whether a failure status may succeed on retry (out of resources, processing failure)."""
    return 0xA700 <= status <= 0xA7FF or status in {0x0110, 0x0213}


class QueryRetrieveStatus(IntEnum):
    """C-FIND, C-GET and C-MOVE response statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4)."""

    SUCCESS = 0x0000
    #: Matches (C-FIND) or sub-operations (C-GET, C-MOVE) are continuing.
    PENDING = 0xFF00
    #: Pending, but the SCP does not support some optional keys (C-FIND).
    PENDING_KEYS_UNSUPPORTED = 0xFF01
    CANCELLED = 0xFE00
    #: Warning: one or more sub-operations failed or had warnings (C-GET, C-MOVE).
    SUB_OPERATIONS_FAILED = 0xB000
    #: Refused: Out of Resources, unable to calculate the number of matches.
    OUT_OF_RESOURCES_MATCHES = 0xA701
    #: Refused: Out of Resources, unable to perform sub-operations.
    OUT_OF_RESOURCES_SUB_OPERATIONS = 0xA702
    #: Refused: Move Destination unknown (C-MOVE).
    MOVE_DESTINATION_UNKNOWN = 0xA801
    #: Error: Identifier does not match SOP Class.
    IDENTIFIER_DOES_NOT_MATCH = 0xA900
    #: Failed: Unable to process (Cxxx range).
    UNABLE_TO_PROCESS = 0xC000


def is_pending(status: int) -> bool:
    """Whether a C-FIND / C-GET / C-MOVE response says more are coming."""
    return status in (QueryRetrieveStatus.PENDING, QueryRetrieveStatus.PENDING_KEYS_UNSUPPORTED)
