"""Receiving from real senders: every encoding stored unchanged, re-sends counted, parallel
associations, limits and timeouts. Every case checks that nothing was lost."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from core.jobs import SeriesState
from dicom_node.node import Node
from dicom_node.requestor import AssociationFailedError
from dicom_node.ul.pdu import ConnectionClosedError, PduType
from tests.conftest import DicomFactory, shared_data_root
from tests.support.node import (
    VERIFICATION,
    RawAssociation,
    associate,
    data_set_bytes,
    spooled_files,
    start_node,
    unfinished_writes,
)
from tests.support.peers import (
    LOCALHOST,
    Orthanc,
    StoreSCP,
    dcmsend,
    dcmtk_env,
    echoscu,
    storescu,
    tool_or_skip,
    wait_for,
)

pytestmark = pytest.mark.peers


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with start_node(tmp_path / "data") as running:
        yield running


def _by_sop_instance(paths: list[Path]) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


def _dcmtk_convert(tool: str, source: Path, target: Path, *options: str) -> Path:
    result = subprocess.run(
        [str(tool_or_skip(tool)), *options, str(source), str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return target


def _encodings(dicom_factory: DicomFactory, tmp_path: Path) -> dict[str, list[Path]]:
    """Files in every encoding (each its own SOP instance), by the sender that sends them as
    they are: dcmsend proposes each file's own syntax; for the native syntaxes that are not
    its first choice storescu is told which to propose."""

    def ct() -> Path:
        return dicom_factory.image(size=64)

    def pydicom_file(name: str) -> Path:
        return Path(str(get_testdata_file(name)))

    as_they_are = [
        ct(),
        dicom_factory.image(size=64, transfer_syntax=DeflatedExplicitVRLittleEndian),
        dicom_factory.image(size=64, transfer_syntax=RLELossless),
        dicom_factory.image(size=64, transfer_syntax=JPEG2000Lossless),
        _dcmtk_convert("dcmcjpeg", ct(), tmp_path / "jpeg-lossless-sv1.dcm", "+e1"),
        _dcmtk_convert("dcmcjpeg", ct(), tmp_path / "jpeg-lossless.dcm", "+el"),
        _dcmtk_convert("dcmcjpls", ct(), tmp_path / "jpeg-ls.dcm"),
        _dcmtk_convert(  # near-lossless needs unsigned pixels: an MR image
            "dcmcjpls", dicom_factory.image(modality="MR", size=64), tmp_path / "jls.dcm", "+en"
        ),
        _dcmtk_convert("dcmcrle", ct(), tmp_path / "rle.dcm"),
        pydicom_file("SC_rgb_jpeg_dcmtk.dcm"),  # JPEG baseline
        pydicom_file("JPEG-lossy.dcm"),  # JPEG extended
        pydicom_file("MR_small_jp2klossless.dcm"),  # JPEG 2000 lossless
        pydicom_file("693_J2KI.dcm"),  # JPEG 2000
        pydicom_file("image_dfl.dcm"),  # deflated
        pydicom_file("SC_rgb_rle_2frame.dcm"),  # RLE, two frames
        pydicom_file("liver_1frame.dcm"),  # Segmentation (multi-frame IOD)
    ]
    enhanced = shared_data_root() / "reference-seg-sr" / "dcmqi" / "24x38x3" / "multiframe"
    if (enhanced / "mf.dcm").exists():
        as_they_are.append(enhanced / "mf.dcm")  # Legacy Converted Enhanced CT, 3 frames
    return {
        "dcmsend": as_they_are,
        "storescu -xb": [_dcmtk_convert("dcmconv", ct(), tmp_path / "big-endian.dcm", "+tb")],
        "storescu -xi": [dicom_factory.image(transfer_syntax=ImplicitVRLittleEndian)],
    }


def _send(sender: str, paths: list[Path], port: int, called_ae: str) -> str:
    if sender == "dcmsend":
        result = dcmsend(paths, LOCALHOST, port, called_ae, "MODALITY", "-v")
    else:
        option = sender.split()[1]
        result = storescu(paths, LOCALHOST, port, called_ae, "MODALITY", option, "-v")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_every_transfer_syntax_and_sop_class_is_stored_exactly_as_sent(
    node: Node,
    make_storescp: Callable[..., StoreSCP],
    dicom_factory: DicomFactory,
    tmp_path: Path,
) -> None:
    # DCMTK re-encodes some files as it sends them (group lengths, padding), so what was
    # sent is what DCMTK's own bit-preserving storescp receives from the same sender.
    reference = make_storescp(promiscuous=True)
    groups = _encodings(dicom_factory, tmp_path)
    sent: list[Path] = []

    for sender, paths in groups.items():
        output = _send(sender, paths, node.port, "PACSAI")
        _send(sender, paths, reference.port, reference.aet)
        # DCMTK says "Converting transfer syntax: X -> Y" for files it sends; X == Y means
        # it sent the file in its own syntax.
        conversions = [
            line.split("syntax: ", 1)[1].split(" -> ")
            for line in output.splitlines()
            if "Converting transfer syntax" in line
        ]
        assert all(before == after for before, after in conversions), conversions
        sent += paths

    node.recorder.flush()
    stored = _by_sop_instance(spooled_files(node))
    received = _by_sop_instance(reference.files())
    assert len(stored) == len(sent) == len(received)
    syntaxes = set()
    identical = 0
    for path in sent:
        original = pydicom.dcmread(path, stop_before_pixels=True)
        uid = str(original.SOPInstanceUID)
        meta = pydicom.filereader.read_file_meta_info(stored[uid])
        assert meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, path.name
        assert meta.MediaStorageSOPClassUID == original.SOPClassUID, path.name
        assert meta.SourceApplicationEntityTitle == "MODALITY"
        # The pixels are never decoded or transcoded (DCMTK itself drops trailing padding
        # and may change OW to OB on the way, so elements are compared with storescp's).
        assert pydicom.dcmread(stored[uid]).PixelData == pydicom.dcmread(path).PixelData
        if pydicom.filereader.read_file_meta_info(received[uid]).TransferSyntaxUID == (
            meta.TransferSyntaxUID
        ):  # storescp may have chosen another syntax for the same proposal
            assert data_set_bytes(stored[uid]) == data_set_bytes(received[uid]), path.name
            identical += 1
        syntaxes.add(str(meta.TransferSyntaxUID))
    # Native (explicit and implicit little endian, big endian), deflated, JPEG baseline,
    # extended, lossless (two), JPEG-LS (two), JPEG 2000 (two), RLE.
    assert len(syntaxes) == 13, syntaxes
    assert identical >= len(sent) // 2
    assert node.scp.stats["stored"] == len(sent)
    assert node.ledger.count_instances() == len(sent)
    assert unfinished_writes(node) == []


def test_a_series_sent_by_orthanc_arrives_whole_and_unchanged(
    node: Node, make_orthanc: Callable[..., Orthanc], dicom_factory: DicomFactory
) -> None:
    orthanc = make_orthanc(modalities={"node": ("PACSAI", LOCALHOST, node.port)})
    paths = dicom_factory.series(12, size=64)
    for path in paths:
        orthanc.upload(path.read_bytes())
    (series_id,) = orthanc.series()

    orthanc.send_to_modality("node", [series_id])

    node.recorder.flush()
    stored = _by_sop_instance(spooled_files(node))
    assert len(stored) == 12
    for path in paths:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert pydicom.dcmread(stored[uid]) == pydicom.dcmread(path)
    series_uid = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    assert node.ledger.get_series(series_uid).instance_count == 12


def test_re_sent_instances_replace_the_earlier_files_and_are_counted(
    node: Node, dicom_factory: DicomFactory
) -> None:
    paths = dicom_factory.series(4)
    series_uid = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)

    assert storescu(paths, LOCALHOST, node.port, "PACSAI").returncode == 0
    assert storescu(paths[:2], LOCALHOST, node.port, "PACSAI").returncode == 0

    node.recorder.flush()
    series = node.ledger.get_series(series_uid)
    assert (series.instance_count, series.resent_count) == (4, 2)
    counts = sorted(i.receive_count for i in node.ledger.series_instances(series_uid))
    assert counts == [1, 1, 2, 2]
    assert len(spooled_files(node)) == 4
    assert node.scp.stats["stored"] == 6


def test_many_parallel_associations_are_spread_over_the_receiving_processes(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    storescu_binary = tool_or_skip("storescu")
    series = [dicom_factory.series(6, size=64) for _ in range(8)]
    with start_node(tmp_path / "data", receiver_processes=2) as node:
        senders = [
            subprocess.Popen(
                [
                    str(storescu_binary),
                    "-aec",
                    "PACSAI",
                    LOCALHOST,
                    str(node.port),
                    *map(str, paths),
                ],
                env=dcmtk_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for paths in series
        ]
        outputs = [sender.communicate(timeout=120)[0] for sender in senders]

        assert [sender.returncode for sender in senders] == [0] * 8, outputs
        node.recorder.flush()
        assert node.ledger.count_instances() == 48
        assert len(spooled_files(node)) == 48
        assert node.scp.stats["associations"] == 8
        assert len(node.scp.pids) == 2
        for paths in series:
            uid = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
            assert node.ledger.get_series(uid).instance_count == 6


def test_associations_beyond_the_limit_are_rejected_for_now_and_later_accepted(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    path = dicom_factory.image()
    with start_node(tmp_path / "data", max_associations=2) as node:
        held = [associate(node.port, [(VERIFICATION, "1.2.840.10008.1.2")]) for _ in range(2)]

        with pytest.raises(AssociationFailedError, match=r"Rejected Transient.*Local limit"):
            associate(node.port, [(VERIFICATION, "1.2.840.10008.1.2")])
        refused = storescu(path, LOCALHOST, node.port, "PACSAI")
        assert refused.returncode != 0
        assert "Local Limit Exceeded" in refused.stderr + refused.stdout

        for assoc in held:
            assoc.release()
        wait_for(
            lambda: storescu(path, LOCALHOST, node.port, "PACSAI").returncode == 0, 10, "a slot"
        )
        node.recorder.flush()
        assert node.ledger.count_instances() == 1
        assert node.scp.stats["rejected"] == 2


def test_an_idle_association_is_aborted_after_the_network_timeout(tmp_path: Path) -> None:
    with start_node(tmp_path / "data", network_timeout_seconds=0.5) as node:
        idle = RawAssociation(node.port, abstract_syntax=VERIFICATION)
        try:
            pdu_type, _body = idle.reader.read()
        except ConnectionClosedError:
            pdu_type = PduType.ABORT  # the abort and the close can race on loopback
        finally:
            idle.close()

        assert pdu_type == PduType.ABORT
        assert echoscu(LOCALHOST, node.port, "PACSAI").returncode == 0


def test_a_connection_that_never_asks_for_an_association_is_closed_after_the_acse_timeout(
    tmp_path: Path,
) -> None:
    with start_node(tmp_path / "data", acse_timeout_seconds=0.5) as node:
        with socket.create_connection((LOCALHOST, node.port), timeout=10) as silent:
            assert silent.recv(100) == b""
        assert echoscu(LOCALHOST, node.port, "PACSAI").returncode == 0


def test_a_receiving_process_that_dies_is_replaced_and_the_node_goes_on(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    paths = dicom_factory.series(3)
    with start_node(tmp_path / "data", receiver_processes=1) as node:
        (first,) = node.scp.pids
        os.kill(first, signal.SIGKILL)

        wait_for(lambda: bool(node.scp.pids) and node.scp.pids != [first], 30, "a new receiver")
        assert storescu(paths, LOCALHOST, node.port, "PACSAI").returncode == 0
        node.recorder.flush()
        assert node.ledger.count_instances() == 3


def test_a_series_is_completed_from_instances_received_by_several_processes(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    paths = dicom_factory.series(8)
    series_uid = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    quick = {"series_quiet_seconds": 0.5, "check_interval_seconds": 0.1}
    with start_node(tmp_path / "data", completion=quick) as node:
        halves = [paths[:4], paths[4:]]
        threads = [
            threading.Thread(target=storescu, args=(half, LOCALHOST, node.port, "PACSAI"))
            for half in halves
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        wait_for(lambda: _state(node, series_uid) == SeriesState.UNROUTED, 20, "completion")
        assert node.ledger.get_series(series_uid).instance_count == 8


def test_the_node_answers_c_echo_from_dcmtk(node: Node) -> None:
    result = echoscu(LOCALHOST, node.port, "PACSAI")

    assert result.returncode == 0, result.stderr


def test_the_lidc_ct_arrives_whole_over_one_association(node: Node, lidc_ct_dir: Path) -> None:
    # -xi: the files are implicit VR; storescu would convert them to its first choice.
    result = storescu(lidc_ct_dir, LOCALHOST, node.port, "PACSAI", "MODALITY", "-xi")

    assert result.returncode == 0, result.stderr
    node.recorder.flush()
    assert node.ledger.count_instances() == 275
    stored = _by_sop_instance(spooled_files(node))
    for path in sorted(lidc_ct_dir.glob("*.dcm"))[::25]:
        sent = pydicom.dcmread(path)
        kept = pydicom.dcmread(stored[str(sent.SOPInstanceUID)])
        # storescu recomputes group lengths as it sends; everything else is as sent.
        assert _without_group_lengths(kept) == _without_group_lengths(sent), path.name
        assert kept.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID


def _without_group_lengths(dataset: pydicom.Dataset) -> pydicom.Dataset:
    for element in list(dataset):
        if element.tag.element == 0x0000:
            del dataset[element.tag]
    return dataset


def _state(node: Node, series_uid: str) -> SeriesState | None:
    try:
        return node.ledger.get_series(series_uid).state
    except KeyError:
        return None
