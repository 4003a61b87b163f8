"""The peer fixtures work: real Orthanc, DCMTK and redis-server, talking to each other."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from tests.conftest import DicomFactory
from tests.support.peers import (
    LOCALHOST,
    Orthanc,
    PeerNotReadyError,
    PeerProcess,
    RedisServer,
    StoreSCP,
    dciodvfy_errors,
    echoscu,
    find_tool,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.peers


def test_storescu_stores_an_instance_that_orthanc_lists_over_rest(
    orthanc: Orthanc, dicom_factory: DicomFactory
) -> None:
    path = dicom_factory.image()
    sop_instance_uid = pydicom.dcmread(path).SOPInstanceUID

    result = storescu(path, LOCALHOST, orthanc.dicom_port, orthanc.aet)

    assert result.returncode == 0, result.stderr
    found = orthanc.find("Instance", {"SOPInstanceUID": sop_instance_uid})
    assert len(found) == 1
    stored = pydicom.dcmread(io.BytesIO(orthanc.download(found[0]["ID"])))
    assert stored.SOPInstanceUID == sop_instance_uid
    assert orthanc.instance_tags(found[0]["ID"])["Modality"] == "CT"


def test_storescu_sends_a_folder_to_storescp(
    storescp: StoreSCP, dicom_factory: DicomFactory
) -> None:
    paths = dicom_factory.series(3)

    result = storescu(paths[0].parent, LOCALHOST, storescp.port, storescp.aet)

    assert result.returncode == 0, result.stderr
    received = {pydicom.dcmread(path).SOPInstanceUID for path in storescp.files()}
    assert received == {pydicom.dcmread(path).SOPInstanceUID for path in paths}


def test_echoscu_is_answered_by_storescp(storescp: StoreSCP) -> None:
    result = echoscu(LOCALHOST, storescp.port, storescp.aet)

    assert result.returncode == 0, result.stderr


def test_orthanc_sends_to_a_declared_modality(
    make_orthanc: Callable[..., Orthanc], storescp: StoreSCP, dicom_factory: DicomFactory
) -> None:
    orthanc = make_orthanc(modalities={"scp": (storescp.aet, LOCALHOST, storescp.port)})
    uploaded = orthanc.upload(dicom_factory.image().read_bytes())

    orthanc.send_to_modality("scp", [uploaded["ID"]])

    assert len(storescp.files()) == 1


def test_orthanc_accepts_a_modality_added_while_running(
    orthanc: Orthanc, storescp: StoreSCP
) -> None:
    orthanc.add_modality("later", storescp.aet, LOCALHOST, storescp.port)

    assert orthanc.echo("later")


def test_redis_server_answers_ping_and_loses_keys_on_restart(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://{LOCALHOST}:{redis_server.port}/0"
    assert redis_server.command("SET", "key", "value") == b"+OK"

    redis_server.restart()

    assert redis_server.ping()
    assert redis_server.command("EXISTS", "key") == b":0"
    redis_server.flushall()


def test_dciodvfy_reports_what_an_incomplete_image_lacks(dicom_factory: DicomFactory) -> None:
    complete = dicom_factory.image()
    ds = dicom_factory.dataset()
    del ds.PatientID
    incomplete = dicom_factory.save(ds)

    assert dciodvfy_errors(complete) == []
    errors = dciodvfy_errors(incomplete)
    assert any("PatientID" in line for line in errors), errors


def test_a_peer_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    process = PeerProcess(
        "quitter",
        [sys.executable, "-c", "print('cannot bind port 1234'); raise SystemExit(3)"],
        log_path=tmp_path / "quitter.log",
    )
    process.start()
    try:
        with pytest.raises(PeerNotReadyError, match=r"(?s)quitter exited with code 3.*port 1234"):
            wait_for(lambda: False, 10, "the quitter", process=process)
    finally:
        process.stop()


def test_find_tool_skips_pynetdicom_scripts_that_shadow_dcmtk() -> None:
    storescp = find_tool("storescp")

    if storescp is None:
        pytest.skip("DCMTK is not installed")
    assert not storescp.read_bytes().startswith(b"#!")
    assert find_tool("no-such-program-pacs-ai") is None


def test_orthanc_keeps_its_instances_across_a_restart_on_the_same_ports(
    orthanc: Orthanc, dicom_factory: DicomFactory
) -> None:
    uploaded = orthanc.upload(dicom_factory.image().read_bytes())
    ports = (orthanc.http_port, orthanc.dicom_port)

    orthanc.restart(graceful=False)

    assert (orthanc.http_port, orthanc.dicom_port) == ports
    assert orthanc.instances() == [uploaded["ID"]]
