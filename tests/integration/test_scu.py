"""Our C-STORE SCU against real peers: DCMTK storescp and Orthanc."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom.dsutils import split_dataset

from core.errors import TransientError
from dicom_node.requestor import connect
from dicom_node.scu import AssociationError, send_files
from dicom_node.status import Status
from tests.conftest import DicomFactory
from tests.support.peers import LOCALHOST, Orthanc, StoreSCP, free_port

pytestmark = pytest.mark.peers

#: A SOP class no peer knows (under pydicom's private root).
UNKNOWN_SOP_CLASS = "1.2.826.0.1.3680043.8.498.4242.1"
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
]


def _mixed_files(dicom_factory: DicomFactory) -> list[Path]:
    """CT and MR images, each in four transfer syntaxes (native, deflated, RLE)."""
    return [
        dicom_factory.image(modality=modality, transfer_syntax=syntax)
        for modality in ("CT", "MR")
        for syntax in TRANSFER_SYNTAXES
    ]


def _dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file, without preamble and file meta."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def _by_sop_instance(paths: list[Path]) -> dict[str, Path]:
    return {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID: path for path in paths}


def test_files_of_two_sop_classes_and_four_syntaxes_reach_storescp_byte_identical(
    storescp: StoreSCP, dicom_factory: DicomFactory
) -> None:
    paths = _mixed_files(dicom_factory)

    report = send_files(paths, host=LOCALHOST, port=storescp.port, called_ae=storescp.aet)

    assert report.ok, report.failed
    assert [result.status for result in report.results] == [Status.SUCCESS] * len(paths)
    assert [result.path for result in report.results] == paths
    received = _by_sop_instance(storescp.files())
    for path, result in zip(paths, report.results, strict=True):
        stored = received[result.sop_instance_uid]
        meta = pydicom.filereader.read_file_meta_info(stored)
        assert meta.TransferSyntaxUID == result.transfer_syntax_uid
        assert _dataset_bytes(stored) == _dataset_bytes(path), path.name


def test_files_reach_orthanc_with_identical_data_sets(
    orthanc: Orthanc, dicom_factory: DicomFactory
) -> None:
    paths = _mixed_files(dicom_factory)

    report = send_files(paths, host=LOCALHOST, port=orthanc.dicom_port, called_ae=orthanc.aet)

    assert report.ok, report.failed
    for path, result in zip(paths, report.results, strict=True):
        (found,) = orthanc.find("Instance", {"SOPInstanceUID": result.sop_instance_uid})
        stored = pydicom.dcmread(io.BytesIO(orthanc.download(found["ID"])))
        sent = pydicom.dcmread(path)
        assert stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert stored == sent, path.name


def test_a_peer_that_takes_only_implicit_vr_gets_explicit_vr_files_converted(
    make_storescp: Callable[..., StoreSCP], dicom_factory: DicomFactory
) -> None:
    storescp = make_storescp(bit_preserving=False, extra_args=["+xi"])
    path = dicom_factory.image(transfer_syntax=ExplicitVRLittleEndian)

    report = send_files([path], host=LOCALHOST, port=storescp.port, called_ae=storescp.aet)

    assert report.ok, report.failed
    (stored,) = storescp.files()
    received = pydicom.dcmread(stored)
    assert received.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert received == pydicom.dcmread(path)


def test_a_compressed_file_the_peer_cannot_take_is_reported_not_converted(
    make_storescp: Callable[..., StoreSCP], dicom_factory: DicomFactory
) -> None:
    storescp = make_storescp(extra_args=["+xi"])
    native = dicom_factory.image(transfer_syntax=ImplicitVRLittleEndian)
    compressed = dicom_factory.image(transfer_syntax=RLELossless)

    report = send_files(
        [native, compressed], host=LOCALHOST, port=storescp.port, called_ae=storescp.aet
    )

    assert [result.ok for result in report.results] == [True, False]
    (failed,) = report.failed
    assert "accepted no presentation context for CT Image Storage in RLE Lossless" in (
        failed.reason
    )
    assert not failed.transient


def test_connection_refused_raises_a_transient_error_naming_the_destination(
    dicom_factory: DicomFactory,
) -> None:
    port = free_port()  # nothing listens there
    path = dicom_factory.image()

    with pytest.raises(TransientError, match=rf"cannot connect to PACS@127\.0\.0\.1:{port}"):
        send_files([path], host=LOCALHOST, port=port, called_ae="PACS", timeout=5)


def test_connection_refused_comes_with_an_empty_partial_report(
    dicom_factory: DicomFactory,
) -> None:
    port = free_port()

    with pytest.raises(AssociationError, match="connection refused") as raised:
        send_files([dicom_factory.image()], host=LOCALHOST, port=port, called_ae="PACS")
    assert raised.value.report.results == ()
    assert raised.value.destination == f"PACS@127.0.0.1:{port}"


def test_an_empty_batch_sends_nothing_and_opens_no_connection() -> None:
    report = send_files([], host=LOCALHOST, port=free_port(), called_ae="PACS")

    assert report.ok
    assert report.results == ()


def test_a_rejected_association_raises_a_transient_error_with_the_reason(
    make_storescp: Callable[..., StoreSCP], dicom_factory: DicomFactory
) -> None:
    storescp = make_storescp(extra_args=["--refuse"])

    with pytest.raises(TransientError, match=r"association rejected by STORESCP@.*Rejected"):
        send_files(
            [dicom_factory.image()], host=LOCALHOST, port=storescp.port, called_ae=storescp.aet
        )


def test_a_peer_aborting_mid_batch_raises_a_transient_error_with_a_partial_report(
    make_storescp: Callable[..., StoreSCP], dicom_factory: DicomFactory
) -> None:
    storescp = make_storescp(extra_args=["--abort-after"])
    paths = dicom_factory.series(3)

    with pytest.raises(AssociationError, match=r"no C-STORE response .* from STORESCP@") as raised:
        send_files(paths, host=LOCALHOST, port=storescp.port, called_ae=storescp.aet)
    (in_flight,) = raised.value.report.results
    assert in_flight.path == paths[0]
    assert in_flight.status is None


def test_more_contexts_than_one_association_carries_are_sent_over_two(
    make_storescp: Callable[..., StoreSCP], dicom_factory: DicomFactory
) -> None:
    storescp = make_storescp(promiscuous=True)
    # 70 SOP classes x (own syntax + native fallback) = 140 contexts; at most 128 fit.
    paths = [
        dicom_factory.image(sop_class_uid=f"{UNKNOWN_SOP_CLASS}.{number}")
        for number in range(1, 71)
    ]

    report = send_files(paths, host=LOCALHOST, port=storescp.port, called_ae=storescp.aet)

    assert report.ok, report.failed[:3]
    assert len(storescp.files()) == 70
    assert storescp.log_path.read_text().count("Association Acknowledged") == 2


def test_an_unknown_sop_class_is_a_failure_in_the_report(
    storescp: StoreSCP, dicom_factory: DicomFactory
) -> None:
    unknown = dicom_factory.image(sop_class_uid=UNKNOWN_SOP_CLASS)
    known = dicom_factory.image()

    report = send_files(
        [unknown, known], host=LOCALHOST, port=storescp.port, called_ae=storescp.aet
    )

    assert not report.ok
    assert report.results[1].ok
    (failed,) = report.failed
    assert failed.path == unknown
    assert failed.status is None
    assert f"accepted no presentation context for {UNKNOWN_SOP_CLASS}" in failed.reason
    assert len(storescp.files()) == 1


def test_a_batch_of_only_unknown_sop_classes_is_reported_not_raised(
    orthanc: Orthanc, dicom_factory: DicomFactory
) -> None:
    paths = [dicom_factory.image(sop_class_uid=UNKNOWN_SOP_CLASS) for _ in range(2)]

    report = send_files(paths, host=LOCALHOST, port=orthanc.dicom_port, called_ae=orthanc.aet)

    assert len(report.failed) == 2
    assert all("accepted no presentation context" in r.reason for r in report.failed)
    assert orthanc.instances() == []


def test_out_of_resources_is_recorded_as_a_transient_failure(
    storescp: StoreSCP, dicom_factory: DicomFactory
) -> None:
    paths = dicom_factory.series(2)
    # storescp answers Out of Resources (0xA700) when it cannot write the file.
    storescp.output_dir.rmdir()

    report = send_files(paths, host=LOCALHOST, port=storescp.port, called_ae=storescp.aet)

    assert len(report.failed) == 2
    assert all(result.status == Status.OUT_OF_RESOURCES for result in report.failed)
    assert all(result.transient for result in report.failed)
    assert "OUT_OF_RESOURCES 0xA700" in report.failed[0].reason


def test_an_unreadable_file_is_reported_and_the_others_are_sent(
    storescp: StoreSCP, dicom_factory: DicomFactory, tmp_path: Path
) -> None:
    garbage = tmp_path / "not-dicom.dcm"
    garbage.write_bytes(b"this is not DICOM" * 20)
    good = dicom_factory.image()

    report = send_files([garbage, good], host=LOCALHOST, port=storescp.port, called_ae="STORESCP")

    assert [result.ok for result in report.results] == [False, True]
    assert "cannot read the DICOM file meta information" in report.results[0].reason
    assert len(storescp.files()) == 1


def test_our_scu_connects_with_nagles_algorithm_off(storescp: StoreSCP) -> None:
    sock = connect(LOCALHOST, storescp.port, timeout=5)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()
