"""Our Upper Layer pieces: PDU framing, DIMSE command sets, association negotiation."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from dicom_node.ul import dimse
from dicom_node.ul.dimse import CommandError, CommandField
from dicom_node.ul.negotiation import (
    CALLING_AE_NOT_RECOGNIZED,
    LOCAL_LIMIT_EXCEEDED,
    ContextResult,
    ProposedContext,
    decode_associate_ac,
    decode_associate_rj,
    decode_associate_rq,
    encode_associate_ac,
    encode_associate_rq,
    negotiate,
)
from dicom_node.ul.pdu import (
    COMMAND,
    LAST,
    AbortReason,
    ConnectionClosedError,
    PduReader,
    PduType,
    ProtocolError,
    associate_rj,
    iter_pdvs,
    p_data_pdus,
    release_rq,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    try:
        yield left, right
    finally:
        left.close()
        right.close()


def test_a_command_set_round_trips_with_its_group_length() -> None:
    encoded = dimse.c_store_rq(7, CT, "1.2.3.4")

    command = dimse.decode_command(encoded)

    assert command.command_field == CommandField.C_STORE_RQ
    assert command.message_id == 7
    assert command.has_data_set
    assert (command.affected_sop_class_uid, command.affected_sop_instance_uid) == (CT, "1.2.3.4")
    (group_length,) = struct.unpack_from("<I", encoded, 8)
    assert group_length == len(encoded) - 12


def test_a_store_response_echoes_the_request_uids_and_carries_status_and_comment() -> None:
    request = dimse.decode_command(dimse.c_store_rq(3, CT, "1.2.3.4.5"))

    response = dimse.decode_command(
        dimse.c_store_rsp(
            3,
            request.elements[dimse.AFFECTED_SOP_CLASS_UID],
            request.elements[dimse.AFFECTED_SOP_INSTANCE_UID],
            0xA700,
            error_comment="spool disk full",
        )
    )

    assert response.command_field == CommandField.C_STORE_RSP
    assert response.message_id_being_responded_to == 3
    assert not response.has_data_set
    assert (response.status, response.error_comment) == (0xA700, "spool disk full")
    assert response.affected_sop_instance_uid == "1.2.3.4.5"


def test_an_error_comment_is_cut_to_64_characters() -> None:
    encoded = dimse.c_store_rsp(1, b"", b"", 0xC000, error_comment="x" * 100)

    assert dimse.decode_command(encoded).error_comment == "x" * 64


def test_a_command_element_running_past_the_end_is_refused() -> None:
    encoded = bytearray(dimse.c_echo_rq(1, "1.2.840.10008.1.1"))
    struct.pack_into("<I", encoded, len(encoded) - 2 - 4, 1000)

    with pytest.raises(CommandError, match="runs past the end"):
        dimse.decode_command(bytes(encoded))


def test_a_command_without_command_field_is_refused() -> None:
    with pytest.raises(CommandError, match=r"no Command Field \(0000,0100\)"):
        dimse.decode_command(dimse.encode_command([(0x0110, dimse.us_value(1))]))


def test_pdus_are_read_whole_however_the_bytes_arrive(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    data = bytes(range(256)) * 100
    pdus = p_data_pdus(data, 3, command=False, max_pdu=4096)
    stream = b"".join(pdus) + release_rq()
    for start in range(0, len(stream), 999):
        left.sendall(stream[start : start + 999])
    reader = PduReader(right, max_p_data=4096, timeout=5)

    received = bytearray()
    controls = []
    for _ in pdus:
        pdu_type, body = reader.read()
        assert pdu_type == PduType.P_DATA_TF
        for context_id, control, fragment in iter_pdvs(body):
            assert context_id == 3
            controls.append(control)
            received += fragment

    assert bytes(received) == data
    assert controls == [0] * (len(pdus) - 1) + [LAST]
    assert reader.read()[0] == PduType.RELEASE_RQ


def test_a_command_is_framed_with_the_command_and_last_bits() -> None:
    (pdu,) = p_data_pdus(b"abcd", 5, command=True, max_pdu=0)

    ((context_id, control, fragment),) = list(iter_pdvs(memoryview(pdu)[6:]))

    assert (context_id, control, bytes(fragment)) == (5, COMMAND | LAST, b"abcd")


def test_a_p_data_pdu_longer_than_announced_is_a_protocol_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    left.sendall(p_data_pdus(b"x" * 10000, 1, command=False, max_pdu=0)[0])

    with pytest.raises(ProtocolError, match="exceeds the 4160 allowed") as raised:
        PduReader(right, max_p_data=4096, timeout=5).read()
    assert raised.value.reason == AbortReason.INVALID_PDU_PARAMETER


def test_an_unknown_pdu_type_is_a_protocol_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    left.sendall(b"\x09\x00\x00\x00\x00\x00")

    with pytest.raises(ProtocolError, match="unknown PDU type 0x09"):
        PduReader(right, timeout=5).read()


def test_a_connection_closed_mid_pdu_is_reported(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    left.sendall(p_data_pdus(b"x" * 100, 1, command=False, max_pdu=0)[0][:50])
    left.close()

    with pytest.raises(ConnectionClosedError, match="closed the connection"):
        PduReader(right, timeout=5).read()


def test_a_silent_peer_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    _left, right = pair

    with pytest.raises(TimeoutError, match=r"nothing received for 0\.2 s"):
        PduReader(right, timeout=0.2).read()


def test_a_pdv_that_does_not_fit_its_pdu_is_a_protocol_error() -> None:
    body = struct.pack(">IBB", 100, 1, 0) + b"short"

    with pytest.raises(ProtocolError, match="does not fit"):
        list(iter_pdvs(memoryview(body)))


def test_negotiation_accepts_the_first_known_syntax_in_the_callers_order() -> None:
    contexts = [
        ProposedContext(1, CT, (JPEG_LOSSLESS, EXPLICIT)),
        ProposedContext(3, CT, ("1.2.3.999", IMPLICIT)),
        ProposedContext(5, "1.2.3.4.5.6", (EXPLICIT,)),
        ProposedContext(7, CT, ("1.2.3.999",)),
    ]
    request = decode_associate_rq(
        encode_associate_rq(
            calling_ae="SCANNER", called_ae="PACSAI", contexts=contexts, max_length=16384
        )[6:]
    )

    results = negotiate(
        request,
        abstract_syntaxes=frozenset({CT}),
        transfer_syntaxes=frozenset({EXPLICIT, IMPLICIT, JPEG_LOSSLESS}),
    )

    assert (request.calling_ae, request.called_ae, request.max_length) == (
        "SCANNER",
        "PACSAI",
        16384,
    )
    assert [(r.context_id, r.result, r.transfer_syntax) for r in results[:2]] == [
        (1, ContextResult.ACCEPTANCE, JPEG_LOSSLESS),
        (3, ContextResult.ACCEPTANCE, IMPLICIT),
    ]
    assert results[2].result == ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED
    assert results[3].result == ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED
    accepted = decode_associate_ac(
        encode_associate_ac(request, results, max_length=131072)[6:], contexts
    )
    assert accepted.max_length == 131072
    assert [(c.context_id, c.abstract_syntax, c.accepted) for c in accepted.contexts] == [
        (1, CT, True),
        (3, CT, True),
        (5, "1.2.3.4.5.6", False),
        (7, CT, False),
    ]


def test_rejections_say_what_they_mean() -> None:
    rejection = decode_associate_rj(associate_rj(1, 1, 3)[6:])

    assert rejection == CALLING_AE_NOT_RECOGNIZED
    assert rejection.describe() == (
        "Rejected Permanent, source Service User, reason: Calling AE title not recognised"
    )
    assert LOCAL_LIMIT_EXCEEDED.describe().startswith("Rejected Transient")


def test_an_undecodable_association_request_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="cannot decode the A-ASSOCIATE-RQ"):
        decode_associate_rq(b"\x00\x01\x00\x00" + b"\xff" * 30)
