"""Probes a broken or hostile sender could make, against a live node (issue 11).

Each test checks that the node answers as it should, and that a well-behaved DCMTK
storescu is still served afterwards.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import select
import socket
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from core.logs import TextFormatter
from dicom_node.acceptor import MAX_COMMAND_SET_BYTES
from dicom_node.node import Node
from dicom_node.requestor import AssociationFailedError
from dicom_node.status import Status
from dicom_node.ul.negotiation import (
    MIN_PEER_MAX_LENGTH,
    ProposedContext,
    decode_associate_rj,
    encode_associate_rq,
    escaped,
)
from dicom_node.ul.pdu import COMMAND, PduReader, PduType, p_data_pdus
from tests.conftest import DicomFactory
from tests.support.hostile import deflate_bomb, peak_rss_mib, process_tree
from tests.support.node import (
    CT_IMAGE,
    RawAssociation,
    associate,
    context_for,
    data_set_bytes,
    start_node,
)
from tests.support.peers import LOCALHOST, storescu, wait_for

pytestmark = pytest.mark.peers

_CONTEXTS = [ProposedContext(1, CT_IMAGE, ("1.2.840.10008.1.2.1",))]


def _request(*, max_length: int = 0, calling_ae: bytes = b"RAWSCU") -> bytes:
    pdu = bytearray(
        encode_associate_rq(
            calling_ae="X" * 16, called_ae="PACSAI", contexts=_CONTEXTS, max_length=max_length
        )
    )
    # The calling AE title is bytes 26-41 of the PDU (PS3.8 9.3.2); written by hand, since
    # pynetdicom refuses to encode the titles a hostile peer sends.
    pdu[26:42] = calling_ae.ljust(16, b" ")
    return bytes(pdu)


def _answer(port: int, request: bytes) -> tuple[int, bytes | memoryview]:
    with socket.create_connection((LOCALHOST, port), timeout=10) as sock:
        sock.sendall(request)
        return PduReader(sock, timeout=10).read()


def _still_serves(node: Node, dicom_factory: DicomFactory) -> None:
    result = storescu(dicom_factory.image(), LOCALHOST, node.port, "PACSAI", "STORESCU")
    assert result.returncode == 0, result.stderr


def test_a_peer_announcing_a_tiny_maximum_pdu_length_is_rejected_not_left_unanswered(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    with start_node(tmp_path / "data") as node:
        for tiny in (1, 5, 6, MIN_PEER_MAX_LENGTH - 1):
            pdu_type, body = _answer(node.port, _request(max_length=tiny))

            assert pdu_type == PduType.ASSOCIATE_RJ, tiny
            rejection = decode_associate_rj(body)
            assert (rejection.result, rejection.source, rejection.reason) == (1, 1, 1)
        pdu_type, _ = _answer(node.port, _request(max_length=MIN_PEER_MAX_LENGTH))
        assert pdu_type == PduType.ASSOCIATE_AC
        _still_serves(node, dicom_factory)


def test_command_fragments_that_never_end_are_aborted_at_the_command_set_limit(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    fragment = b"\x00" * 16000
    with start_node(tmp_path / "data") as node:
        with socket.create_connection((LOCALHOST, node.port), timeout=10) as sock:
            sock.sendall(_request())
            reader = PduReader(sock, timeout=10)
            assert reader.read()[0] == PduType.ASSOCIATE_AC
            pdv = (len(fragment) + 2).to_bytes(4, "big") + bytes([1, COMMAND]) + fragment
            pdu = bytes([PduType.P_DATA_TF, 0]) + len(pdv).to_bytes(4, "big") + pdv
            # Just past the limit, then nothing more: the node's answer is not lost to a
            # connection reset caused by bytes it never read.
            for _sent in range(MAX_COMMAND_SET_BYTES // len(fragment) + 1):
                sock.sendall(pdu)

            assert reader.read()[0] == PduType.ABORT
        _still_serves(node, dicom_factory)


def test_control_characters_in_a_calling_ae_title_are_refused_and_logged_on_one_line(
    tmp_path: Path, dicom_factory: DicomFactory, caplog: pytest.LogCaptureFixture
) -> None:
    callers = [{"ae_title": "CT1"}, {"ae_title": "STORESCU"}]
    with start_node(tmp_path / "data", allowed_callers=callers) as node:
        caplog.set_level(logging.INFO)
        forged = b"CT1\n" + b"FORGED LINE"

        pdu_type, _ = _answer(node.port, _request(calling_ae=forged))

        # A control character makes the A-ASSOCIATE-RQ malformed (PS3.5 6.2: AE titles
        # are printable): aborted, like any undecodable PDU, and never matched to CT1.
        assert pdu_type == PduType.ABORT
        lines = [TextFormatter().format(record) for record in caplog.records]
        assert not any("\n" in line for line in lines), lines
        assert any("CT1\\nFORGED LINE" in line for line in lines), lines
        assert node.ledger.count_instances() == 0
        _still_serves(node, dicom_factory)


def test_control_characters_in_an_application_context_name_are_escaped() -> None:
    assert escaped("1.2.840.10008.3.1.1.1\r\nINFO forged") == (
        "1.2.840.10008.3.1.1.1\\r\\nINFO forged"
    )
    assert escaped("CT_SCANNER") == "CT_SCANNER"


def test_a_sop_instance_uid_reused_in_another_study_is_refused_and_quarantined(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    first = dicom_factory.dataset()
    reused = dicom_factory.dataset()  # another study and series
    reused.SOPInstanceUID = reused.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    first_path = dicom_factory.save(first, ExplicitVRLittleEndian)
    reused_path = dicom_factory.save(reused, ExplicitVRLittleEndian)
    with start_node(tmp_path / "data") as node:
        assoc = associate(node.port, [(CT_IMAGE, ExplicitVRLittleEndian)])
        context = context_for(assoc, CT_IMAGE)
        statuses = []
        try:
            for number, path in enumerate((first_path, reused_path, first_path), start=1):
                data = data_set_bytes(path)
                response = assoc.store(
                    context,
                    message_id=number,
                    sop_class_uid=CT_IMAGE,
                    sop_instance_uid=str(first.SOPInstanceUID),
                    data_set=data,
                    size=len(data),
                )
                statuses.append((response.status, response.error_comment))
        finally:
            assoc.release()

        assert statuses == [
            (Status.SUCCESS, ""),
            (Status.CANNOT_UNDERSTAND, "SOP Instance UID already used in another series"),
            (Status.SUCCESS, ""),  # the first series sending it again: a re-send
        ]
        node.recorder.flush()
        (stored,) = node.ledger.series_instances(str(first.SeriesInstanceUID))
        assert stored.receive_count == 2
        assert pydicom.dcmread(stored.path).StudyInstanceUID == first.StudyInstanceUID
        assert node.ledger.series_instances(str(reused.SeriesInstanceUID)) == []
        (conflict,) = node.ledger.quarantined()
        assert conflict.stage == "identity"
        assert f"already stored in study/series {first.StudyInstanceUID}/" in conflict.reason
        (folder,) = node.settings.quarantine_dir.iterdir()
        assert (folder / "instance.dcm").read_bytes().endswith(data_set_bytes(reused_path))
        _still_serves(node, dicom_factory)


def test_a_deflate_bomb_is_refused_and_quarantined_within_the_memory_bound(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    ds, deflated = deflate_bomb(512)
    limit = 64 * 1024 * 1024
    with start_node(tmp_path / "data", max_instance_bytes=limit, receiver_processes=1) as node:
        tree = process_tree(os.getpid())
        before = {pid: peak_rss_mib(pid) for pid in tree}
        assoc = associate(node.port, [(CT_IMAGE, DeflatedExplicitVRLittleEndian)])
        try:
            response = assoc.store(
                context_for(assoc, CT_IMAGE),
                message_id=1,
                sop_class_uid=CT_IMAGE,
                sop_instance_uid=str(ds.SOPInstanceUID),
                data_set=deflated,
                size=len(deflated),
            )
        finally:
            assoc.release()

        assert response.status == Status.CANNOT_UNDERSTAND
        assert "inflates beyond node.max_instance_bytes" in response.error_comment
        grown = max(peak_rss_mib(pid) - before[pid] for pid in tree)
        assert grown < 48, f"a process's peak memory grew {grown:.0f} MiB"
        node.recorder.flush()
        assert node.ledger.count_instances() == 0
        (folder,) = node.settings.quarantine_dir.iterdir()
        assert (folder / "instance.dcm").stat().st_size < 2 * len(deflated)
        _still_serves(node, dicom_factory)


def test_a_large_malformed_instance_is_quarantined_without_being_read_into_memory(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    good_path = dicom_factory.image(size=16)
    good = data_set_bytes(good_path)
    # A Pixel Data element announcing more bytes than follow: 128 MiB of them.
    start = good.index(b"\xe0\x7f\x10\x00")
    sent = 128 * 1024 * 1024
    header = good[:start] + b"\xe0\x7f\x10\x00OW\x00\x00" + (sent + 1000).to_bytes(4, "little")
    data = header + bytes(sent)
    sop_instance_uid = str(pydicom.dcmread(good_path).SOPInstanceUID)
    with start_node(tmp_path / "data", receiver_processes=1) as node:
        receivers = process_tree(os.getpid())[1:]
        before = {pid: peak_rss_mib(pid) for pid in receivers}
        assoc = associate(node.port, [(CT_IMAGE, ExplicitVRLittleEndian)])
        try:
            response = assoc.store(
                context_for(assoc, CT_IMAGE),
                message_id=1,
                sop_class_uid=CT_IMAGE,
                sop_instance_uid=sop_instance_uid,
                data_set=data,
                size=len(data),
            )
        finally:
            assoc.release()

        assert response.status == Status.CANNOT_UNDERSTAND
        assert "ends inside element (7FE0,0010)" in response.error_comment
        grown = max(peak_rss_mib(pid) - before[pid] for pid in receivers)
        assert grown < 48, f"a receiving process's peak memory grew {grown:.0f} MiB"
        (folder,) = node.settings.quarantine_dir.iterdir()
        assert (folder / "instance.dcm").stat().st_size > sent
        _still_serves(node, dicom_factory)


def _silent_from(address: str, port: int) -> socket.socket:
    """A connection from another loopback address that never says anything."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((address, 0))
    sock.settimeout(10)
    sock.connect((LOCALHOST, port))
    return sock


def test_silent_connections_never_take_association_slots_nor_lock_others_out(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    with start_node(
        tmp_path / "data",
        receiver_processes=1,
        max_associations=1,
        max_pending_connections=8,
        max_pending_per_address=2,
    ) as node:
        # Six silent sockets from one address: two wait for their deadline, the rest are
        # closed at once; none takes the one association slot.
        silent = [_silent_from("127.0.0.2", node.port) for _ in range(6)]
        try:
            closed = 0
            for sock in silent:
                sock.settimeout(0.5)
                with contextlib.suppress(TimeoutError):
                    closed += sock.recv(1) == b""
            assert closed == 4

            _still_serves(node, dicom_factory)
        finally:
            for sock in silent:
                sock.close()


def test_a_peer_trickling_its_association_request_is_cut_off_at_one_deadline(
    tmp_path: Path,
) -> None:
    request = _request()
    with start_node(tmp_path / "data", acse_timeout_seconds=1.0) as node:
        with socket.create_connection((LOCALHOST, node.port), timeout=10) as sock:
            started = time.monotonic()
            sent = 0
            with contextlib.suppress(OSError):  # reset or broken pipe once it is closed
                for byte in request[:-1]:
                    sock.sendall(bytes([byte]))
                    sent += 1
                    if not select.select([sock], [], [], 0.2)[0]:
                        continue
                    assert sock.recv(100) == b""
                    break
            elapsed = time.monotonic() - started

        assert sent < len(request) - 1, "the node waited for the whole trickle"
        assert elapsed < 3.0, f"cut off after {elapsed:.1f} s, not at the 1 s deadline"


def test_a_peer_trickling_a_message_is_aborted_at_the_dimse_timeout(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    path = dicom_factory.image(size=64)
    data = data_set_bytes(path)
    with start_node(tmp_path / "data", dimse_timeout_seconds=1.0) as node:
        raw = RawAssociation(node.port)
        try:
            # The command and the first bytes of a P-DATA-TF, then one byte every 0.2 s:
            # never silent for a second, yet far too slow.
            raw.send_command_and_part_of(str(pydicom.dcmread(path).SOPInstanceUID), data, sent=0)
            pdu = p_data_pdus(data, 1, command=False, max_pdu=16384)[0]
            started = time.monotonic()
            with contextlib.suppress(OSError):
                for byte in pdu:
                    raw.sock.sendall(bytes([byte]))
                    if select.select([raw.sock], [], [], 0.2)[0]:
                        break
            answer = raw.reader.read()[0]
            elapsed = time.monotonic() - started
        finally:
            raw.close()

        assert answer == PduType.ABORT
        assert elapsed < 4.0, f"aborted after {elapsed:.1f} s"
        _still_serves(node, dicom_factory)


def test_one_calling_ae_cannot_take_every_association_slot(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    verification = [("1.2.840.10008.1.1", "1.2.840.10008.1.2")]
    with start_node(
        tmp_path / "data", receiver_processes=1, max_associations=4, max_associations_per_ae=1
    ) as node:
        held = associate(node.port, verification, calling_ae="GREEDY")
        try:
            with pytest.raises(AssociationFailedError, match=r"Rejected Transient.*Local limit"):
                associate(node.port, verification, calling_ae="GREEDY")
            _still_serves(node, dicom_factory)  # STORESCU: another AE title
        finally:
            held.release()
        wait_for(lambda: _associates(node.port, verification, "GREEDY"), 10, "GREEDY's slot back")


def _associates(port: int, contexts: list[tuple[str, str]], calling_ae: str) -> bool:
    try:
        associate(port, contexts, calling_ae=calling_ae).release()
    except AssociationFailedError:
        return False
    return True


def test_an_ended_association_is_freed_at_once_not_left_to_the_garbage_collector(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    from dicom_node import acceptor  # noqa: PLC0415 -- its private class is what is counted

    def live() -> int:
        # type(), not isinstance(): torch's lazy modules warn when asked for __class__.
        return sum(type(o) is acceptor._Association for o in gc.get_objects())

    with start_node(tmp_path / "data", receiver_processes=0) as node:
        gc.collect()
        gc.disable()
        try:
            _still_serves(node, dicom_factory)
            wait_for(lambda: node.scp.stats["associations"] == 1, 10, "the association")
            # Without the garbage collector, only reference counting frees it.
            wait_for(lambda: live() == 0, 10, "the association freed")
        finally:
            gc.enable()
