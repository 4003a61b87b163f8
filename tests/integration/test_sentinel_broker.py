"""The job queue and the broker inspector on Redis Sentinel (Debian's redis-sentinel), with
passwords on the Redis servers and on the Sentinels, as production sets them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import TransientError
from core.jobs import JobRecord, JobState
from core.messages import model_queue
from core.queue import BrokerInspector, JobQueue, make_celery
from core.settings import validate_settings
from tests.support.sentinel import SentinelGroup

pytestmark = [pytest.mark.peers, pytest.mark.slow]

# Two different passwords, so that a client that mixes them up fails.
REDIS_PASSWORD = "redis-secret"  # noqa: S105 -- throw-away servers on 127.0.0.1
SENTINEL_PASSWORD = "sentinel-secret"  # noqa: S105


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelGroup]:
    with SentinelGroup(
        tmp_path / "redis",
        replicas=1,
        sentinels=3,
        redis_password=REDIS_PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
    ) as group:
        yield group


def job(job_id: str) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        series_instance_uid="1.2.3",
        study_instance_uid="1.2",
        route="r",
        model_id="ct-lungs",
        destinations=(),
        priority=5,
        state=JobState.QUEUED,
        reason=None,
        attempts=0,
        created_at=0.0,
        updated_at=0.0,
    )


def queued_on(sentinels: SentinelGroup, port: int) -> int:
    """Messages waiting in the ct-lungs queue of the Redis server on ``port``."""
    with sentinels.redis_client(port) as client:
        return sum(int(client.llen(key)) for key in client.keys(f"{model_queue('ct-lungs')}*"))


def test_jobs_go_to_the_master_the_sentinels_name_and_follow_it_after_a_failover(
    sentinels: SentinelGroup,
) -> None:
    app = make_celery(validate_settings(sentinels.settings))
    queue, inspector = JobQueue(app), BrokerInspector(app, socket_timeout=2.0)
    try:
        queue.enqueue(job("before"))
        first_master = sentinels.master_port()
        held_before = inspector.job_ids()
        queued_before = queued_on(sentinels, first_master)
        # The Sentinel clients ask first goes with the master: they must ask the next.
        sentinels.kill_sentinel(sentinels.sentinel_ports[0])
        sentinels.kill_master()
        new_master = sentinels.wait_for_new_master(first_master)

        queue.enqueue(job("after"))
        held_after = inspector.job_ids()
        queued_after = queued_on(sentinels, new_master)
    finally:
        app.close()

    assert held_before == {"before"} and queued_before == 1
    # The replica had the first job; the second went to it once it was master.
    assert held_after == {"before", "after"} and queued_after == 2


def test_a_wrong_sentinel_password_is_a_transient_broker_error_that_says_so(
    sentinels: SentinelGroup,
) -> None:
    settings = dict(sentinels.settings)
    settings["broker_sentinel"] = {**settings["broker_sentinel"], "password": "wrong"}
    app = make_celery(validate_settings(settings))
    try:
        with pytest.raises(TransientError, match="the broker does not answer"):
            BrokerInspector(app, socket_timeout=2.0).ping()
    finally:
        app.close()
