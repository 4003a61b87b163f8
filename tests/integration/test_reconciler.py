"""The reconciler makes a real Redis agree with the ledger after faults."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.jobs import InstanceRecord, JobRecord, JobState
from core.ledger import Ledger
from core.queue import BrokerInspector, JobQueue, make_celery
from core.settings import Settings, validate_settings
from node_services.reconciler import Reconciler
from tests.support.peers import RedisServer

pytestmark = pytest.mark.peers


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(tmp_path: Path, redis_server: RedisServer) -> Settings:
    return validate_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "broker_url": redis_server.url,
            "reconciler": {"requeue_after_seconds": 30},
            "worker": {"lost_after_seconds": 60, "max_attempts": 2},
        }
    )


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    instance = Ledger(settings.resolved_ledger_url)
    instance.create_schema()
    yield instance
    instance.close()


@pytest.fixture
def rig(
    settings: Settings, ledger: Ledger
) -> Iterator[tuple[Reconciler, JobQueue, BrokerInspector, Clock]]:
    app = make_celery(settings)
    clock = Clock()
    queue, inspector = JobQueue(app), BrokerInspector(app)
    yield (
        Reconciler(settings, ledger, queue=queue, inspector=inspector, clock=clock),
        queue,
        inspector,
        clock,
    )
    app.close()


def queued_job(ledger: Ledger, queue: JobQueue, series: str) -> JobRecord:
    ledger.record_instances(
        [
            InstanceRecord(
                sop_instance_uid=f"{series}.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                series_instance_uid=series,
                study_instance_uid="1.2.3",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path="/nowhere.dcm",
                size=1,
                received_at=time.time(),
                calling_ae="X",
                called_ae="PACSAI",
                peer="127.0.0.1:1",
            )
        ]
    )
    job = ledger.open_job(
        ledger.get_series(series), route="r", model_id="ct-lungs", destinations=[], priority=5
    )
    job = ledger.transition(job.job_id, JobState.QUEUED)
    queue.enqueue(job)
    return job


def test_jobs_lost_by_a_flushed_broker_are_queued_again_and_the_others_left_alone(
    ledger: Ledger,
    redis_server: RedisServer,
    rig: tuple[Reconciler, JobQueue, BrokerInspector, Clock],
) -> None:
    reconciler, queue, inspector, clock = rig
    lost = queued_job(ledger, queue, "1.2.3.1")
    redis_server.flushall()
    kept = queued_job(ledger, queue, "1.2.3.2")
    clock.now += 31

    requeued = reconciler.run_once()

    assert requeued == [lost.job_id]
    assert inspector.job_ids() == {lost.job_id, kept.job_id}
    last = ledger.events(lost.job_id)[-1]
    assert (last.state, last.reason) == (
        JobState.QUEUED,
        "the broker no longer holds the job (restarted or flushed?)",
    )


def test_a_restarted_redis_loses_nothing_the_ledger_knows(
    ledger: Ledger,
    redis_server: RedisServer,
    rig: tuple[Reconciler, JobQueue, BrokerInspector, Clock],
) -> None:
    reconciler, queue, inspector, clock = rig
    jobs = [queued_job(ledger, queue, f"1.2.3.{n}") for n in range(1, 4)]
    redis_server.restart()
    assert inspector.job_ids() == set()
    clock.now += 31

    reconciler.run_once()

    assert inspector.job_ids() == {job.job_id for job in jobs}


def test_a_job_whose_worker_went_silent_is_queued_again_then_given_up_after_max_attempts(
    ledger: Ledger, settings: Settings, rig: tuple[Reconciler, JobQueue, BrokerInspector, Clock]
) -> None:
    reconciler, queue, _inspector, clock = rig
    job = queued_job(ledger, queue, "1.2.3.1")
    ledger.worker_heartbeat("w:1", host="h", pid=1, device="cpu", models=["ct-lungs"])
    ledger.transition(job.job_id, JobState.RUNNING, count_attempt=True, detail={"worker": "w:1"})
    clock.now += 30
    assert reconciler.run_once() == []  # not silent for long enough

    clock.now += 31
    assert reconciler.run_once() == [job.job_id]
    assert ledger.get_job(job.job_id).state is JobState.QUEUED

    ledger.worker_heartbeat("w:2", host="h", pid=2, device="cpu", models=["ct-lungs"])
    ledger.transition(job.job_id, JobState.RUNNING, count_attempt=True, detail={"worker": "w:2"})
    clock.now += 61
    assert reconciler.run_once() == []
    failed = ledger.get_job(job.job_id)
    assert failed.state is JobState.FAILED
    assert failed.reason is not None and "gave up after 2 attempts" in failed.reason
    [entry] = ledger.quarantined(series_uid=job.series_instance_uid)
    assert json.loads((Path(entry.path) / "error.json").read_text())["error_type"] == "WorkerLost"
