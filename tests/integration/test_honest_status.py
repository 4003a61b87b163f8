"""Honest status against a live node: receive measured per sending run, stopped workers
shown as stopped, and everything that did not become a result listed by ``pacs-ai
status`` and counted by ``/metrics`` (series no rule matched, NOT_APPLICABLE jobs,
instances refused at the door, quarantined deliveries)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from core.jobs import InstanceRecord, JobState, SeriesState
from core.ledger import Ledger, Outbox, Presence, result_items
from core.settings import validate_settings
from dicom_node.node import Node
from dicom_node.status import Status
from monitor.metrics import MetricsEndpoint
from monitor.readings import Readings
from node_services.delivery import DeliveryService
from pacs_ai.cli import main
from tests.conftest import DicomFactory
from tests.support.node import CT_IMAGE, associate, context_for, data_set_bytes
from tests.support.peers import LOCALHOST, RedisServer, free_port, storescu, wait_for

pytestmark = pytest.mark.peers


def node_config(tmp_path: Path, broker_url: str, **completion: object) -> dict[str, object]:
    return {
        "data_dir": str(tmp_path / "data"),
        "broker_url": broker_url,
        "node": {"host": LOCALHOST, "port": free_port(), "min_free_disk_mb": 0},
        "completion": {"series_quiet_seconds": 0.5, "check_interval_seconds": 0.1, **completion},
        # Nothing listens there: a delivery to it is dead-lettered at once (no retries).
        "destinations": {"pacs": {"host": LOCALHOST, "port": free_port(), "ae_title": "GONE"}},
        "delivery": {"retry_delays": []},
        "routes": [
            {
                "name": "chest-ct",
                "match": {"Modality": "CT"},
                "models": ["ct-lungs"],
                "send_results_to": ["pacs"],
            }
        ],
        "monitor": {"enabled": False},
    }


@pytest.fixture
def config(tmp_path: Path, redis_server: RedisServer) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(node_config(tmp_path, redis_server.url)))
    return path


@pytest.fixture
def node(config: Path) -> Iterator[Node]:
    with Node(validate_settings(json.loads(config.read_text()))) as running:
        yield running


def record(ledger: Ledger, files: list[Path], *, at: float) -> str:
    """Record ``files`` as received one second apart from ``at``; their series UID."""
    records = []
    for index, path in enumerate(files):
        ds = dcmread(path, stop_before_pixels=True)
        records.append(
            InstanceRecord(
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                study_instance_uid=str(ds.StudyInstanceUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                path=str(path),
                size=path.stat().st_size,
                received_at=at + index,
                calling_ae="CT1",
                called_ae="PACSAI",
                peer="127.0.0.1",
                modality=str(ds.Modality),
            )
        )
    ledger.record_instances(records)
    return records[0].series_instance_uid


def test_a_series_sent_again_22_minutes_later_shows_the_receive_time_of_its_second_sending(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    settings = validate_settings({"data_dir": str(tmp_path / "data")})
    ledger = Ledger(settings.resolved_ledger_url)
    ledger.create_schema()
    files = dicom_factory.series(4)
    series_uid = record(ledger, files, at=1000.0)  # first sending: 1000 .. 1003
    ledger.set_series_state(series_uid, SeriesState.ROUTED, completed_at=1010.0)
    job = ledger.open_job(
        ledger.get_series(series_uid), route="r", model_id="m", destinations=[], priority=5
    )
    for state in (JobState.QUEUED, JobState.RUNNING, JobState.DELIVERING, JobState.DONE):
        ledger.transition(job.job_id, state)

    record(ledger, files, at=1000.0 + 22 * 60)  # sent again: 2320 .. 2323
    series = ledger.get_series(series_uid)
    ledger.set_series_state(series_uid, SeriesState.ROUTED, completed_at=2330.0)
    ledger.open_job(series, route="r", model_id="m", destinations=[], priority=5)
    [view] = Readings(settings, ledger, inspector=None).jobs()
    ledger.close()

    assert series.receiving_since == 2320.0 and series.first_received_at == 1000.0
    assert view.times.first_received == 2320.0
    assert view.times.durations()["receive"] == 3.0


def test_a_series_received_again_after_the_force_period_is_not_forced_at_its_first_image(
    tmp_path: Path, redis_server: RedisServer, dicom_factory: DicomFactory
) -> None:
    raw = node_config(tmp_path, redis_server.url, force_complete_seconds=1.5)
    raw["completion"]["force_policy"] = "discard"  # type: ignore[index]
    files = dicom_factory.series(3)
    with Node(validate_settings(raw)) as running:
        assert storescu(files, LOCALHOST, running.port, "PACSAI").returncode == 0
        running.recorder.flush()
        series_uid = str(dcmread(files[0]).SeriesInstanceUID)
        first = running.ledger.get_series(series_uid).first_received_at
        wait_for(
            lambda: running.ledger.get_series(series_uid).state != SeriesState.RECEIVING,
            10,
            "the first sending to complete",
        )
        # Beyond the force period from the first sending, then the series again.
        wait_for(lambda: time.time() - first > 2.0, 5, "the force period to pass")
        assert storescu(files, LOCALHOST, running.port, "PACSAI").returncode == 0
        running.recorder.flush()
        wait_for(
            lambda: running.ledger.get_series(series_uid).state != SeriesState.RECEIVING,
            10,
            "the second sending to complete",
        )
        series = running.ledger.get_series(series_uid)

    assert series.state is SeriesState.ROUTED, series.reason
    assert series.run_started_at > first + 2.0


def test_a_worker_that_stopped_cleanly_is_shown_stopped_and_forgotten_after_a_day(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    settings = validate_settings(node_config(tmp_path, redis_server.url))
    ledger = Ledger(settings.resolved_ledger_url)
    ledger.create_schema()
    for name in ("stopped", "silent", "alive"):
        ledger.worker_heartbeat(name, host="h", pid=1, device="cpu", models=["ct-lungs"])
    Presence(ledger).worker_stopped("stopped")
    now = time.time()

    def states(at: float) -> dict[str, str]:
        readings = Readings(settings, ledger, inspector=None, clock=lambda: at)
        return {w.name: w.state for w in readings.workers()}

    assert states(now) == {"alive": "alive", "silent": "alive", "stopped": "stopped"}
    ledger.worker_heartbeat("alive", host="h", pid=1, device="cpu", models=["ct-lungs"])
    later = time.time() + settings.worker.lost_after_seconds + 1
    assert states(later) == {"alive": "silent", "silent": "silent", "stopped": "stopped"}
    # Silent ones go after an hour, stopped ones after a day.
    assert states(now + 7200) == {"stopped": "stopped"}
    assert states(now + 86_401) == {}
    ledger.close()


def _refuse_at_the_door(node: Node, dicom_factory: DicomFactory) -> None:
    """A C-STORE whose data set is not the instance the request names (PS3.7 9.3.1.1)."""
    path = dicom_factory.save(dicom_factory.dataset(), ExplicitVRLittleEndian)
    assoc = associate(node.port, [(CT_IMAGE, ExplicitVRLittleEndian)], calling_ae="BADSCU")
    try:
        data = data_set_bytes(path)
        response = assoc.store(
            context_for(assoc, CT_IMAGE),
            message_id=1,
            sop_class_uid=CT_IMAGE,
            sop_instance_uid="1.2.3.999",
            data_set=data,
            size=len(data),
        )
    finally:
        assoc.release()
    assert response.status == Status.CANNOT_UNDERSTAND


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_status_and_metrics_show_everything_that_did_not_become_a_result(
    node: Node, config: Path, dicom_factory: DicomFactory
) -> None:
    mr = dicom_factory.series(3, modality="MR")
    few = dicom_factory.series(3)  # ct-lungs takes 20 slices or more: NOT_APPLICABLE
    good = dicom_factory.series(20)
    for files in (mr, few, good):
        assert storescu(files, LOCALHOST, node.port, "PACSAI", "CT1").returncode == 0
    _refuse_at_the_door(node, dicom_factory)
    node.recorder.flush()
    uid = {name: str(dcmread(f[0]).SeriesInstanceUID) for name, f in (("mr", mr), ("few", few))}
    good_uid = str(dcmread(good[0]).SeriesInstanceUID)
    # Queued, not only opened: the node queues a job a moment after it opens it.
    wait_for(
        lambda: [j.state for j in node.ledger.jobs(series_uid=good_uid)] == [JobState.QUEUED],
        10,
        "the CT job queued",
    )
    wait_for(
        lambda: node.ledger.get_series(uid["mr"]).state == SeriesState.UNROUTED,
        10,
        "the MR series unrouted",
    )
    # The CT job's results cannot reach the PACS: dead-lettered, quarantined (stage deliver).
    [job] = node.ledger.jobs(series_uid=good_uid)
    for state in (JobState.RUNNING, JobState.DELIVERING):
        node.ledger.transition(job.job_id, state)
    Outbox(node.ledger).add(
        result_items(
            job_id=job.job_id,
            series_uid=good_uid,
            route="chest-ct",
            destinations=["pacs"],
            files=[("1.2.3.4.5", CT_IMAGE, good[0])],
        )
    )
    DeliveryService(node.settings, node.ledger).run_once()

    shown = CliRunner().invoke(main, ["status", "--config", str(config), "--json"])
    text = CliRunner().invoke(main, ["status", "--config", str(config)])
    metrics = _samples(
        MetricsEndpoint(Readings(node.settings, node.ledger, inspector=None)).render().decode()
    )

    aside = json.loads(shown.output)["set_aside"]
    [unrouted] = aside["not_routed"]
    assert unrouted["series_uid"] == uid["mr"] and unrouted["state"] == "UNROUTED"
    assert unrouted["reason"] == "chest-ct: Modality is 'MR', not 'CT'"
    [not_applicable] = aside["not_applicable"]
    assert not_applicable["series_uid"] == uid["few"] and "20" in not_applicable["reason"]
    [refused] = aside["refused_at_the_door"]
    assert refused["stage"] == "receive" and refused["calling_ae"] == "BADSCU"
    assert "differs from the request's Affected SOP Instance UID" in refused["reason"]
    [quarantined] = aside["quarantined"]
    assert quarantined["stage"] == "deliver" and quarantined["job_id"] == job.job_id
    assert "series not routed: 1" in text.output
    assert f"{uid['mr']} UNROUTED MR from CT1" in text.output
    assert "instances refused at the door: 1 (receive 1)" in text.output
    assert "quarantined by jobs and deliveries: 1 (deliver 1)" in text.output
    assert metrics[("pacs_ai_series", (("state", "UNROUTED"),))] == 1
    assert metrics[("pacs_ai_jobs", (("model", "ct-lungs"), ("state", "NOT_APPLICABLE")))] == 1
    assert metrics[("pacs_ai_quarantine_records", (("stage", "receive"),))] == 1
    assert metrics[("pacs_ai_quarantine_records", (("stage", "deliver"),))] == 1


def test_the_serve_log_says_why_a_series_was_not_routed_without_its_values(
    node: Node, dicom_factory: DicomFactory, caplog: pytest.LogCaptureFixture
) -> None:
    files = dicom_factory.series(2, modality="MR")
    caplog.set_level("INFO", logger="dicom_node.assembly")

    assert storescu(files, LOCALHOST, node.port, "PACSAI").returncode == 0
    node.recorder.flush()
    series_uid = str(dcmread(files[0]).SeriesInstanceUID)
    wait_for(
        lambda: node.ledger.get_series(series_uid).state == SeriesState.UNROUTED, 10, "unrouted"
    )

    [line] = [r.getMessage() for r in caplog.records if "not routed" in r.getMessage()]
    assert line == f"series {series_uid} not routed (UNROUTED): rule chest-ct: no match on Modality"
    assert "'MR'" not in line
    assert "Test^Peer" not in caplog.text
