"""The DICOM node against real peers: DCMTK sends to it, Redis carries its jobs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydicom import dcmread

from core.jobs import JobState, SeriesState
from core.messages import model_queue
from core.settings import Settings, validate_settings
from dicom_node.node import Node
from tests.conftest import DicomFactory
from tests.support.peers import RedisServer, echoscu, free_port, storescu, wait_for

pytestmark = pytest.mark.peers


def node_settings(tmp_path: Path, broker_url: str, **completion: float | bool) -> Settings:
    return validate_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "broker_url": broker_url,
            "node": {
                "ae_title": "PACSAI",
                "host": "127.0.0.1",
                "port": free_port(),
                "min_free_disk_mb": 0,
            },
            "completion": {
                "series_quiet_seconds": 0.5,
                "check_interval_seconds": 0.1,
                **completion,
            },
            "destinations": {"pacs": {"host": "127.0.0.1", "port": 4242, "ae_title": "ORTHANC"}},
            "routes": [
                {
                    "name": "chest-ct",
                    "match": {"Modality": "CT"},
                    "models": ["ct-lungs"],
                    "send_results_to": ["pacs"],
                }
            ],
        }
    )


@pytest.fixture
def node(tmp_path: Path, redis_server: RedisServer) -> Iterator[Node]:
    with Node(node_settings(tmp_path, redis_server.url)) as running:
        yield running


def test_a_series_sent_by_storescu_is_stored_completed_routed_and_queued(
    node: Node, redis_server: RedisServer, dicom_factory: DicomFactory
) -> None:
    # ct-lungs takes at least 20 slices: fewer would be NOT_APPLICABLE, never queued.
    files = dicom_factory.series(20)

    sent = storescu(files, "127.0.0.1", node.port, "PACSAI", "SCANNER")

    assert sent.returncode == 0, sent.stdout + sent.stderr
    series_uid = str(dcmread(files[0]).SeriesInstanceUID)
    wait_for(
        lambda: bool(node.ledger.jobs(series_uid=series_uid, states=[JobState.QUEUED])),
        10,
        "job queued",
    )
    [job] = node.ledger.jobs(series_uid=series_uid)
    assert (job.route, job.model_id, job.destinations) == ("chest-ct", "ct-lungs", ("pacs",))
    assert [e.state for e in node.ledger.events(job.job_id)] == [
        JobState.RECEIVING,
        JobState.READY,
        JobState.QUEUED,
    ]
    series = node.ledger.get_series(series_uid)
    assert (series.state, series.instance_count, series.calling_ae) == (
        SeriesState.ROUTED,
        20,
        "SCANNER",
    )
    # Every instance is in the spool with the data set exactly as sent.
    stored = node.ledger.series_instances(series_uid)
    assert len(stored) == 20
    by_uid = {str(dcmread(f).SOPInstanceUID): dcmread(f) for f in files}
    for instance in stored:
        kept = dcmread(instance.path)
        assert kept == by_uid[instance.sop_instance_uid]
        assert kept.file_meta.SourceApplicationEntityTitle == "SCANNER"
    # The job message waits on the model's queue in the real Redis (kombu keeps one list
    # per priority step; the route's default priority is 5).
    # The ledger says QUEUED just before the message is sent, so wait for it.
    client = redis.Redis.from_url(redis_server.url)
    queue_key = f"{model_queue('ct-lungs')}:5"
    wait_for(lambda: client.llen(queue_key) == 1, 5, "job message in Redis")


def test_a_series_no_rule_matches_is_kept_and_recorded_unrouted_with_the_reason(
    node: Node, dicom_factory: DicomFactory
) -> None:
    files = dicom_factory.series(3, modality="MR")

    assert storescu(files, "127.0.0.1", node.port, "PACSAI").returncode == 0

    series_uid = str(dcmread(files[0]).SeriesInstanceUID)
    wait_for(lambda: _state(node, series_uid) == SeriesState.UNROUTED, 10, "series unrouted")
    series = node.ledger.get_series(series_uid)
    assert series.reason == "chest-ct: Modality is 'MR', not 'CT'"
    assert node.ledger.jobs(series_uid=series_uid) == []
    assert len(node.ledger.series_instances(series_uid)) == 3


def test_the_node_answers_c_echo(node: Node) -> None:
    assert echoscu("127.0.0.1", node.port, "PACSAI").returncode == 0


def test_a_series_half_received_before_a_restart_completes_afterwards(
    tmp_path: Path, redis_server: RedisServer, dicom_factory: DicomFactory
) -> None:
    # Long enough that neither node completes the series between its storescu calls.
    settings = node_settings(tmp_path, redis_server.url, series_quiet_seconds=3.0)
    files = dicom_factory.series(6)
    series_uid = str(dcmread(files[0]).SeriesInstanceUID)
    with Node(settings) as first:
        assert storescu(files[:3], "127.0.0.1", first.port, "PACSAI").returncode == 0
        first.recorder.flush()
        assert first.ledger.jobs(series_uid=series_uid) == []

    with Node(settings) as second:
        assert storescu(files[3:], "127.0.0.1", second.port, "PACSAI").returncode == 0
        wait_for(lambda: bool(second.ledger.jobs(series_uid=series_uid)), 10, "job opened")
        assert second.ledger.get_series(series_uid).instance_count == 6
        assert len(second.ledger.jobs(series_uid=series_uid)) == 1


def _state(node: Node, series_uid: str) -> SeriesState | None:
    try:
        return node.ledger.get_series(series_uid).state
    except KeyError:
        return None


def test_a_series_completes_when_its_association_is_released_if_configured(
    tmp_path: Path, redis_server: RedisServer, dicom_factory: DicomFactory
) -> None:
    # A quiet period far longer than the test: only the release can complete the series.
    settings = node_settings(
        tmp_path, redis_server.url, series_quiet_seconds=600, on_association_release=True
    )
    files = dicom_factory.series(4)
    with Node(settings) as node:
        assert storescu(files, "127.0.0.1", node.port, "PACSAI").returncode == 0

        series_uid = str(dcmread(files[0]).SeriesInstanceUID)
        wait_for(lambda: bool(node.ledger.jobs(series_uid=series_uid)), 15, "job on release")
        assert node.ledger.get_series(series_uid).instance_count == 4


def test_without_the_option_a_released_association_does_not_complete_a_series(
    tmp_path: Path, redis_server: RedisServer, dicom_factory: DicomFactory
) -> None:
    settings = node_settings(tmp_path, redis_server.url, series_quiet_seconds=600)
    files = dicom_factory.series(2)
    with Node(settings) as node:
        assert storescu(files, "127.0.0.1", node.port, "PACSAI").returncode == 0
        node.recorder.flush()
        node.watcher.run_once()

        series_uid = str(dcmread(files[0]).SeriesInstanceUID)
        assert node.ledger.get_series(series_uid).state is SeriesState.RECEIVING
