"""Jobs on a real Redis: urgent ones are taken first, and the inspector sees them all."""

from __future__ import annotations

import pytest

from core.jobs import JobRecord, JobState
from core.messages import model_queue
from core.queue import BrokerInspector, JobQueue, make_celery
from core.settings import validate_settings
from tests.support.peers import RedisServer

pytestmark = pytest.mark.peers


def job(job_id: str, priority: int) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        series_instance_uid="1.2.3",
        study_instance_uid="1.2",
        route="r",
        model_id="ct-lungs",
        destinations=(),
        priority=priority,
        state=JobState.QUEUED,
        reason=None,
        attempts=0,
        created_at=0.0,
        updated_at=0.0,
    )


def test_urgent_jobs_jump_the_queue_and_the_broker_inspector_lists_every_job(
    redis_server: RedisServer,
) -> None:
    app = make_celery(validate_settings({"broker_url": redis_server.url}))
    queue = JobQueue(app)
    for job_id, priority in (("routine", 9), ("normal", 5), ("urgent", 0)):
        queue.enqueue(job(job_id, priority))

    held = BrokerInspector(app).job_ids()
    taken = []
    with app.connection_for_read() as connection:
        consumer = connection.SimpleQueue(model_queue("ct-lungs"))
        for _ in range(3):
            message = consumer.get(timeout=5)
            taken.append(message.payload[1]["message"]["job_id"])
            message.ack()
        consumer.close()
    app.close()

    assert held == {"routine", "normal", "urgent"}
    assert taken == ["urgent", "normal", "routine"]
