"""The Celery application every process shares, and how the node puts jobs on the queue.

The node only *sends* tasks, by name: it never imports the worker's task code (and with
it torch). Workers register the task in :mod:`workers.tasks`.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery import Celery
from kombu import Queue

from core.broker import broker_url, redis_client, transport_options
from core.errors import TransientError
from core.jobs import JobRecord
from core.messages import RUN_JOB_TASK, RunJobMessage, model_queue
from core.settings import Settings

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

#: Redis has no native priorities; kombu emulates them with one list per step.
#: 0 is the most urgent (kombu's Redis transport pops lower numbers first).
PRIORITY_STEPS = list(range(10))


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for pacs-ai's reliability contract (DESIGN.md, Workers)."""
    app = Celery("pacs_ai", broker=broker_url(settings), set_as_current=False)
    # The broker hands an unacknowledged job to another worker after this long; it must
    # exceed the longest job or a slow job would run twice at the same time.
    visibility_timeout = int(settings.worker.job_timeout_seconds * 2 + 60)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        # acks_late + reject_on_worker_lost: a worker killed mid-job leaves the message
        # unacknowledged, and the broker redelivers it. Tasks are idempotent for this.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=int(settings.worker.job_timeout_seconds),
        broker_transport_options={
            # Redis Sentinel: the master's name (BrokerInspector reads it here too).
            **transport_options(settings),
            "visibility_timeout": visibility_timeout,
            "priority_steps": PRIORITY_STEPS,
            "sep": ":",
            "queue_order_strategy": "priority",
        },
        broker_connection_retry_on_startup=True,
        task_default_queue="pacs_ai.default",
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


def queues_for(model_ids: list[str]) -> list[Queue]:
    return [Queue(model_queue(model_id)) for model_id in model_ids]


class JobQueue:
    """Puts jobs on their model's queue."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def enqueue(self, job: JobRecord) -> None:
        """Send ``job`` to its model's queue.

        Raises:
            TransientError: the broker could not be reached.
        """
        message = RunJobMessage(
            job_id=job.job_id, model_id=job.model_id, series_uid=job.series_instance_uid
        )
        try:
            self._app.send_task(
                RUN_JOB_TASK,
                kwargs={"message": message.model_dump()},
                queue=model_queue(job.model_id),
                priority=job.priority,
                retry=True,
                retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
            )
        except Exception as exc:  # kombu raises many transport-specific types
            raise TransientError(f"could not queue job {job.job_id}: {exc}") from exc
        logger.info("queued job %s for model %s", job.job_id, job.model_id)


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Messages waiting in one model queue at one priority step."""

    queue: str
    priority: int
    depth: int
    #: The job of the message a worker would take last (the longest waiting), if readable.
    oldest_job_id: str | None


class BrokerInspector:
    """Which jobs the broker holds: waiting in a model queue, or delivered and unacked.

    Reads kombu's Redis layout directly (one list per queue and priority step, the
    ``unacked`` hash), because Celery has no API that lists queued messages.
    """

    def __init__(self, app: Celery, *, socket_timeout: float | None = None) -> None:
        self._app = app
        self._socket_timeout = socket_timeout

    @contextmanager
    def _client(self) -> Iterator[redis.Redis]:
        options = self._app.conf.broker_transport_options or {}
        with redis_client(
            str(self._app.conf.broker_url), options, timeout=self._socket_timeout
        ) as client:
            yield client

    def ping(self) -> None:
        """Raises:
        TransientError: the broker does not answer.
        """
        import redis  # noqa: PLC0415

        try:
            with self._client() as client:
                client.ping()
        except (redis.RedisError, OSError) as exc:
            raise TransientError(f"the broker does not answer: {exc}") from exc

    def queue_depths(self) -> list[QueueDepth]:
        """Every non-empty model queue and priority step, with its oldest job.

        kombu pushes on the left and workers pop from the right, so the longest-waiting
        message of a list is its last element; lower priority numbers are taken first.

        Raises:
            TransientError: the broker could not be read.
        """
        import redis  # noqa: PLC0415

        depths: list[QueueDepth] = []
        try:
            with self._client() as client:
                for raw_key in client.scan_iter(match=f"{model_queue('')}*", count=500):
                    key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
                    queue, priority = _queue_and_priority(key)
                    if client.type(key) not in (b"list", "list"):
                        continue
                    depth = int(client.llen(key))
                    if depth == 0:
                        continue
                    oldest = client.lindex(key, -1)
                    ids = _job_ids_in(oldest) if oldest is not None else set()
                    depths.append(QueueDepth(queue, priority, depth, next(iter(ids), None)))
        except redis.RedisError as exc:
            raise TransientError(f"cannot read the broker: {exc}") from exc
        return sorted(depths, key=lambda d: (d.queue, d.priority))

    def unacked_by_queue(self) -> dict[str, int]:
        """Messages handed to a worker and not yet acknowledged (running jobs), per queue.

        Raises:
            TransientError: the broker could not be read.
        """
        import redis  # noqa: PLC0415

        counts: dict[str, int] = {}
        try:
            with self._client() as client:
                for raw in client.hvals("unacked"):
                    try:
                        queue = str(json.loads(raw)[2])
                    except (ValueError, IndexError, TypeError):
                        continue
                    counts[queue] = counts.get(queue, 0) + 1
        except redis.RedisError as exc:
            raise TransientError(f"cannot read the broker: {exc}") from exc
        return counts

    def job_ids(self) -> set[str]:
        """Job ids of every pacs-ai job message in the broker.

        Raises:
            TransientError: the broker could not be read.
        """
        import redis  # noqa: PLC0415

        found: set[str] = set()
        try:
            with self._client() as client:
                for key in client.scan_iter(match=f"{model_queue('')}*", count=500):
                    for raw in client.lrange(key, 0, -1):
                        found.update(_job_ids_in(raw))
                for raw in client.hvals("unacked"):
                    found.update(_job_ids_in(raw))
        except redis.RedisError as exc:
            raise TransientError(f"cannot read the broker: {exc}") from exc
        return found


def _queue_and_priority(key: str) -> tuple[str, int]:
    """``pacs_ai.model.x:3`` -> (``pacs_ai.model.x``, 3); no suffix is priority 0."""
    queue, sep, suffix = key.rpartition(":")
    if sep and suffix.isdigit():
        return queue, int(suffix)
    return key, 0


def _job_ids_in(raw: bytes | str) -> set[str]:
    """The job id in one stored kombu message (a queue entry or an ``unacked`` value)."""
    try:
        envelope = json.loads(raw)
        if isinstance(envelope, list):  # unacked: [message, exchange, routing_key]
            envelope = envelope[0]
        body = envelope.get("body", "")
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)
        kwargs = args[1] if isinstance(args, list) and len(args) > 1 else {}
        return {str(kwargs["message"]["job_id"])}
    except (ValueError, KeyError, TypeError, IndexError):
        # Someone else's message on our key pattern: not ours to count.
        return set()
