"""Properties of the node's own wire parsers, with pydicom and pynetdicom as oracles.

Whatever bytes a peer sends, the PDU reader, the command decoder, the data set scanner and
the file meta reader give an answer or their own error, never another exception, and
never more memory than their bounds; on well-formed input they agree with pydicom and
pynetdicom.
"""

from __future__ import annotations

import socket
import zlib
from io import BytesIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from core.errors import InvalidInputError
from dicom_node.encoding import IMPLEMENTATION_CLASS_UID, file_meta, parse_file_meta
from dicom_node.scanner import DataSetScanner
from dicom_node.ul import dimse
from dicom_node.ul.dimse import CommandError
from dicom_node.ul.negotiation import decode_associate_rq, encode_associate_rq
from dicom_node.ul.pdu import (
    HARD_LIMIT,
    NEGOTIATION_LIMIT,
    ConnectionClosedError,
    PduReader,
    PduType,
    ProtocolError,
)

PROPERTIES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

uids = (
    st.lists(st.integers(min_value=0, max_value=10**12).map(str), min_size=2, max_size=8)
    .map(".".join)
    .filter(lambda uid: len(uid) <= 64)
)
texts = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"),
    max_size=40,
).map(str.strip)


# -- the PDU reader ------------------------------------------------------------------------


def _read_all(data: bytes, *, max_p_data: int) -> list[tuple[int, int]]:
    """(type, length) of each PDU read from ``data``; ends at the reader's own error."""
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        reader = PduReader(ours, max_p_data=max_p_data, timeout=5)
        pdus: list[tuple[int, int]] = []
        while True:
            try:
                pdu_type, body = reader.read()
            except (ProtocolError, ConnectionClosedError):
                return pdus
            pdus.append((pdu_type, len(body)))
    finally:
        ours.close()
        theirs.close()


@PROPERTIES
@given(st.binary(max_size=2048), st.sampled_from([0, 64, 16384]))
def test_any_bytes_read_as_pdus_give_whole_pdus_or_the_readers_own_error(
    data: bytes, max_p_data: int
) -> None:
    for pdu_type, length in _read_all(data, max_p_data=max_p_data):
        assert pdu_type in set(PduType)
        limit = NEGOTIATION_LIMIT if pdu_type in (1, 2) else (max_p_data + 64 or HARD_LIMIT)
        assert length <= max(limit, 4)


@PROPERTIES
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_a_pdu_announcing_any_length_never_makes_the_reader_allocate_past_its_limit(
    length: int,
) -> None:
    header = bytes([PduType.P_DATA_TF, 0]) + length.to_bytes(4, "big")

    pdus = _read_all(header + b"\x00" * 64, max_p_data=16384)

    # Whole PDUs only: one that fits what was sent, else nothing (over the limit: refused
    # before any buffer is made; within it: the connection closed before it was whole).
    assert pdus[:1] == ([(PduType.P_DATA_TF, length)] if length <= 64 else [])


# -- the association request ---------------------------------------------------------------


@PROPERTIES
@given(st.binary(max_size=512))
def test_any_association_request_body_decodes_or_is_a_protocol_error(body: bytes) -> None:
    try:
        request = decode_associate_rq(body)
    except ProtocolError:
        return
    # Whatever was sent, what may reach a log line is printable (escaped).
    for text in (request.calling_ae, request.called_ae, request.application_context):
        assert text.isascii() and text.isprintable(), text


@PROPERTIES
@given(calling=texts.filter(bool), called=texts.filter(bool), length=st.integers(0, 2**32 - 1))
def test_an_association_request_decodes_as_pynetdicom_encoded_it(
    calling: str, called: str, length: int
) -> None:
    # encode_associate_rq builds the PDU with pynetdicom's A_ASSOCIATE_RQ.
    encoded = encode_associate_rq(
        calling_ae=calling[:16], called_ae=called[:16], contexts=[], max_length=length
    )

    request = decode_associate_rq(encoded[6:])

    assert (request.calling_ae, request.called_ae) == (calling[:16].strip(), called[:16].strip())
    assert request.max_length == length


# -- the command decoder -------------------------------------------------------------------


@PROPERTIES
@given(st.binary(max_size=1024))
def test_any_bytes_as_a_command_set_decode_or_are_a_command_error(data: bytes) -> None:
    try:
        command = dimse.decode_command(data)
    except CommandError:
        return
    assert 0 <= command.command_field <= 0xFFFF
    assert sum(len(value) + 8 for value in command.elements.values()) <= len(data)


@PROPERTIES
@given(
    message_id=st.integers(0, 65535),
    priority=st.integers(0, 2),
    sop_class=uids,
    sop_instance=uids,
)
def test_a_store_request_decodes_to_what_pydicom_encoded(
    message_id: int, priority: int, sop_class: str, sop_instance: str
) -> None:
    command = Dataset()
    command.AffectedSOPClassUID = sop_class
    command.CommandField = 0x0001
    command.MessageID = message_id
    command.Priority = priority
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = sop_instance
    encoded = DicomBytesIO()
    encoded.is_little_endian, encoded.is_implicit_VR = True, True
    write_dataset(encoded, command)

    decoded = dimse.decode_command(encoded.getvalue())

    assert (decoded.command_field, decoded.message_id, decoded.has_data_set) == (
        1,
        message_id,
        True,
    )
    assert (decoded.affected_sop_class_uid, decoded.affected_sop_instance_uid) == (
        sop_class,
        sop_instance,
    )


# -- the data set scanner ------------------------------------------------------------------

SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]


@st.composite
def data_sets(draw: st.DrawFn) -> Dataset:
    """An image-like data set with identity UIDs, text values and nested sequences."""
    ds = Dataset()
    ds.SOPClassUID = draw(uids)
    ds.SOPInstanceUID = draw(uids)
    ds.Modality = draw(st.sampled_from(["CT", "MR", "DX", "OT"]))
    ds.PatientName = draw(texts)
    ds.StudyDescription = draw(texts)
    ds.StudyInstanceUID = draw(uids)
    ds.SeriesInstanceUID = draw(uids)
    depth = draw(st.integers(0, 3))
    items: list[Dataset] = []
    for _ in range(draw(st.integers(0, 3))):
        item = Dataset()
        item.CodeMeaning = draw(texts)
        nested = item
        for _level in range(depth):
            inner = Dataset()
            inner.CodeValue = draw(texts)[:16].strip()
            nested.ConceptNameCodeSequence = Sequence([inner])
            nested = inner
        items.append(item)
    if items:
        ds.ProcedureCodeSequence = Sequence(items)
    ds.BitsAllocated = 8
    ds.PixelData = draw(st.binary(max_size=64).map(lambda b: b + b"\x00" * (len(b) % 2)))
    return ds


def _encode(ds: Dataset, syntax: str) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, syntax == ImplicitVRLittleEndian
    write_dataset(buffer, ds)
    data = buffer.getvalue()
    if syntax == DeflatedExplicitVRLittleEndian:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
    return data


def _scan(data: bytes, syntax: str, *, fragment: int) -> DataSetScanner:
    scanner = DataSetScanner(syntax, max_bytes=1024 * 1024)
    for start in range(0, len(data), fragment):
        scanner.feed(memoryview(data)[start : start + fragment])
    return scanner


@PROPERTIES
@given(data_sets(), st.sampled_from(SYNTAXES), st.integers(1, 300))
def test_the_scanner_finds_the_identity_pydicom_wrote_in_any_fragmentation(
    ds: Dataset, syntax: str, fragment: int
) -> None:
    identity = _scan(_encode(ds, syntax), syntax, fragment=fragment).identity()

    assert (identity.sop_class_uid, identity.sop_instance_uid) == (
        ds.SOPClassUID,
        ds.SOPInstanceUID,
    )
    assert (identity.study_instance_uid, identity.series_instance_uid, identity.modality) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.Modality,
    )


@PROPERTIES
@given(data_sets(), st.sampled_from(SYNTAXES[:2]), st.data())
def test_a_data_set_cut_short_anywhere_inside_an_element_is_refused(
    ds: Dataset, syntax: str, data: st.DataObject
) -> None:
    encoded = _encode(ds, syntax)
    cut = data.draw(st.integers(1, len(encoded) - 1))

    scanner = _scan(encoded[:cut], syntax, fragment=97)
    try:
        scanner.identity()
    except InvalidInputError:
        return
    # Accepted: the cut fell between two top-level elements after the identity, and
    # pydicom reads the shorter data set whole too.
    from pydicom.filereader import read_dataset  # noqa: PLC0415

    read_dataset(
        BytesIO(encoded[:cut]),
        is_implicit_VR=syntax == ImplicitVRLittleEndian,
        is_little_endian=True,
    )


@PROPERTIES
@given(st.binary(max_size=4096), st.sampled_from(SYNTAXES))
def test_any_bytes_as_a_data_set_give_an_identity_or_a_clear_refusal(
    data: bytes, syntax: str
) -> None:
    try:
        _scan(data, syntax, fragment=512).identity()
    except InvalidInputError as exc:
        assert str(exc)


def test_the_scanner_refuses_a_data_set_past_its_limit_without_walking_further() -> None:
    scanner = DataSetScanner(ExplicitVRLittleEndian, max_bytes=1024 * 1024)
    for _ in range(3):
        scanner.feed(b"\x00" * 512 * 1024)

    assert scanner.over_limit
    with pytest.raises(InvalidInputError, match=r"larger than node\.max_instance_bytes"):
        scanner.identity()


# -- the PS3.10 file meta ------------------------------------------------------------------

ae_titles = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"),
    max_size=16,
)


@PROPERTIES
@given(sop_class=uids, sop_instance=uids, syntax=st.sampled_from(SYNTAXES), source_ae=ae_titles)
def test_pydicom_reads_the_file_meta_we_write_for_any_uids_and_sender(
    sop_class: str, sop_instance: str, syntax: str, source_ae: str
) -> None:
    encoded = file_meta(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax_uid=syntax,
        source_ae=source_ae,
    )

    meta = dcmread(BytesIO(encoded)).file_meta

    assert (meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID) == (
        sop_class,
        sop_instance,
    )
    assert meta.TransferSyntaxUID == syntax
    assert meta.get("SourceApplicationEntityTitle", "") == source_ae
    assert parse_file_meta(encoded) == (
        {
            0x0002: sop_class,
            0x0003: sop_instance,
            0x0010: syntax,
            0x0012: IMPLEMENTATION_CLASS_UID,
        },
        len(encoded),
    )


@PROPERTIES
@given(data_sets(), st.sampled_from(SYNTAXES))
def test_the_file_meta_pydicom_writes_gives_its_uids_and_where_the_data_set_starts(
    ds: Dataset, syntax: str
) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    encoded = buffer.getvalue()

    uids, offset = parse_file_meta(encoded)

    assert (uids[0x0002], uids[0x0003], uids[0x0010]) == (
        ds.SOPClassUID,
        ds.SOPInstanceUID,
        syntax,
    )
    assert _inflated(encoded[offset:], syntax) == _inflated(_encode(ds, syntax), syntax)


def _inflated(data: bytes, syntax: str) -> bytes:
    # pydicom deflates with other settings than _encode: compare what they deflated.
    return (
        zlib.decompress(data, -zlib.MAX_WBITS) if syntax == DeflatedExplicitVRLittleEndian else data
    )


@PROPERTIES
@given(st.binary(max_size=600), st.booleans())
def test_any_bytes_as_a_file_head_give_file_meta_or_a_value_error(
    data: bytes, with_prefix: bool
) -> None:
    head = b"\x00" * 128 + b"DICM" + data if with_prefix else data
    try:
        uids, offset = parse_file_meta(head)
    except ValueError:
        return
    assert offset >= 132
    assert all(isinstance(value, str) for value in uids.values())
