"""A routed model that cannot accept a series is recorded NOT_APPLICABLE when the series
completes, decided from its headers, and never queued (a real node, DCMTK storescu and
Redis).

The series are the synthetic head of tests/support/brain.py: as written (a T1-weighted
spoiled gradient echo, TE 4 ms, TR 20 ms) and with T2-like contrast and headers (spin
echo, TE 95 ms, TR 4000 ms), both routed to the two brain-extraction examples. deepbrain
declares it takes T1-weighted heads only; mindgrab takes any contrast, of a head. A
whole-body PET routed to mindgrab is refused for its size, known from its headers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydicom import dcmread

from core.jobs import JobRecord, JobState, SeriesState
from core.messages import model_queue
from core.settings import validate_settings
from dicom_node.node import Node
from models.registry import EXAMPLES_DIR
from tests.support.brain import Head, small_head, t2_like, write_mr_series
from tests.support.peers import RedisServer, free_port, storescu, wait_for
from tests.support.whole_body import whole_body_pet

pytestmark = pytest.mark.peers

MINDGRAB = "brain-extraction-mindgrab"
DEEPBRAIN = "brain-extraction-deepbrain"


@pytest.fixture
def node(tmp_path: Path, redis_server: RedisServer) -> Iterator[Node]:
    settings = validate_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "broker_url": redis_server.url,
            "model_dirs": [
                str(EXAMPLES_DIR / "brain_extraction_mindgrab"),
                str(EXAMPLES_DIR / "brain_extraction_deepbrain"),
            ],
            "node": {"host": "127.0.0.1", "port": free_port(), "min_free_disk_mb": 0},
            "completion": {"series_quiet_seconds": 0.5, "check_interval_seconds": 0.1},
            "routes": [
                {"name": "brain", "match": {"Modality": "MR"}, "models": [MINDGRAB, DEEPBRAIN]},
                {"name": "pet-brain", "match": {"Modality": "PT"}, "models": [MINDGRAB]},
            ],
        }
    )
    with Node(settings) as running:
        yield running


@pytest.fixture(scope="module")
def head() -> Head:
    return small_head()


def _send(node: Node, files: list[Path]) -> str:
    sent = storescu(files, "127.0.0.1", node.port, "PACSAI", "SCANNER")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    return str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def _queue_key(model_id: str) -> str:
    """Redis' list for the model's jobs at the default priority (5)."""
    return f"{model_queue(model_id)}:5"


def _jobs_settled(node: Node, series_uid: str, count: int = 2) -> dict[str, JobRecord]:
    def settled() -> bool:
        states = [j.state for j in node.ledger.jobs(series_uid=series_uid)]
        return len(states) == count and JobState.READY not in states

    wait_for(settled, 20, "both jobs of the series recorded")
    return {job.model_id: job for job in node.ledger.jobs(series_uid=series_uid)}


def test_a_t2_head_is_not_applicable_for_deepbrain_with_the_reason_and_never_queued(
    node: Node, head: Head, redis_server: RedisServer, tmp_path: Path
) -> None:
    files = write_mr_series(
        t2_like(head), tmp_path / "t2", echo_time=95, repetition_time=4000, scanning_sequence="SE"
    )

    series_uid = _send(node, files)
    jobs = _jobs_settled(node, series_uid)

    deepbrain = jobs[DEEPBRAIN]
    assert deepbrain.state is JobState.NOT_APPLICABLE
    assert deepbrain.reason == (
        f"{DEEPBRAIN} 2018.09.24 cannot run on this series: EchoTime 95 ms > 20 ms; "
        "RepetitionTime 4000 ms > 3000 ms"
    )
    assert [(e.state, e.reason) for e in node.ledger.events(deepbrain.job_id)] == [
        (JobState.RECEIVING, None),
        (JobState.NOT_APPLICABLE, deepbrain.reason),
    ]
    assert jobs[MINDGRAB].state is JobState.QUEUED
    client = redis.Redis.from_url(redis_server.url)
    wait_for(lambda: client.llen(_queue_key(MINDGRAB)) == 1, 5, "mindgrab's job in Redis")
    assert client.llen(_queue_key(DEEPBRAIN)) == 0
    assert node.ledger.get_series(series_uid).state is SeriesState.ROUTED


def test_the_same_head_as_a_t1_is_queued_for_both_models(
    node: Node, head: Head, redis_server: RedisServer, tmp_path: Path
) -> None:
    series_uid = _send(node, write_mr_series(head, tmp_path / "t1"))
    jobs = _jobs_settled(node, series_uid)

    assert {model: job.state for model, job in jobs.items()} == {
        MINDGRAB: JobState.QUEUED,
        DEEPBRAIN: JobState.QUEUED,
    }
    client = redis.Redis.from_url(redis_server.url)
    wait_for(lambda: client.llen(_queue_key(DEEPBRAIN)) == 1, 5, "deepbrain's job in Redis")


def test_a_whole_body_pet_routed_to_a_head_model_is_refused_from_its_headers(
    node: Node, redis_server: RedisServer, tmp_path: Path
) -> None:
    series_uid = _send(node, whole_body_pet(tmp_path / "pet"))
    [job] = _jobs_settled(node, series_uid, count=1).values()

    assert job.state is JobState.NOT_APPLICABLE
    assert job.reason is not None
    assert job.reason.startswith(f"{MINDGRAB} 2025.08.13 cannot run on this series: ")
    assert "extent along z (feet-head) 1800 mm > 300 mm" in job.reason
    assert redis.Redis.from_url(redis_server.url).llen(_queue_key(MINDGRAB)) == 0
