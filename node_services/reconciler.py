"""The reconciler: the ledger is the source of truth, and the broker is made to agree.

Runs in the node process every ``reconciler.interval_seconds``:

* a QUEUED or RETRYING job that the broker no longer holds (Redis restarted without
  persistence, flushed, a message lost) for ``reconciler.requeue_after_seconds`` is
  queued again;
* a RUNNING job whose worker has not sent a heartbeat for ``worker.lost_after_seconds``
  (killed with SIGKILL, machine gone) is queued again; when it has used up
  ``worker.max_attempts`` it ends FAILED with the reason (a poison input that kills
  every worker it meets must not kill them all, forever).

A job queued twice is harmless: the executor ignores a message for a finished job, and
results replace each other (same derived UIDs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from core.errors import TransientError
from core.jobs import JobRecord, JobState
from core.ledger import InvalidTransitionError, Ledger
from core.logs import log_context
from core.periodic import Periodic
from core.quarantine import Quarantine, QuarantineEntry
from core.queue import BrokerInspector, JobQueue
from core.settings import Settings

logger = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        *,
        queue: JobQueue,
        inspector: BrokerInspector,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self._queue = queue
        self._inspector = inspector
        self._clock = clock
        self._loop = Periodic("reconciler", settings.reconciler.interval_seconds, self.run_once)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def run_once(self) -> list[str]:
        """Queue again what the broker lost; return the ids of the jobs queued again."""
        requeued = self._lost_workers()
        requeued += self._lost_messages()
        return requeued

    def _lost_workers(self) -> list[str]:
        now = self._clock()
        lost_after = self.settings.worker.lost_after_seconds
        alive = {w.name for w in self.ledger.workers(seen_since=now - lost_after)}
        requeued: list[str] = []
        for job in self.ledger.jobs(states=[JobState.RUNNING], limit=10_000):
            if job.worker in alive or now - job.updated_at < lost_after:
                continue
            with log_context(job_id=job.job_id):
                reason = f"worker {job.worker or '(unknown)'} stopped answering during the job"
                if job.attempts >= self.settings.worker.max_attempts:
                    self._give_up(job, reason)
                    continue
                logger.warning("%s: queueing the job again", reason)
                if self._requeue(job, reason):
                    requeued.append(job.job_id)
        return requeued

    def _lost_messages(self) -> list[str]:
        now = self._clock()
        after = self.settings.reconciler.requeue_after_seconds
        waiting = [
            job
            for job in self.ledger.jobs(states=[JobState.QUEUED, JobState.RETRYING], limit=10_000)
            if now - job.updated_at >= after + _retry_delay(job, self.settings)
        ]
        if not waiting:
            return []
        try:
            held = self._inspector.job_ids()
        except TransientError as exc:
            logger.warning("cannot check the broker's queues: %s", exc)
            return []
        requeued: list[str] = []
        for job in waiting:
            if job.job_id in held:
                continue
            with log_context(job_id=job.job_id):
                reason = "the broker no longer holds the job (restarted or flushed?)"
                logger.warning("%s: queueing it again", reason)
                if self._requeue(job, reason):
                    requeued.append(job.job_id)
        return requeued

    def _requeue(self, job: JobRecord, reason: str) -> bool:
        try:
            queued = self.ledger.transition(
                job.job_id, JobState.QUEUED, reason=reason, expected={job.state}
            )
        except InvalidTransitionError:
            # It moved on meanwhile: its worker answered after all, or the reconciler of
            # another node sharing the ledger queued it first.
            return False
        try:
            self._queue.enqueue(queued)
        except TransientError as exc:
            # Still QUEUED in the ledger: the next round finds it missing again.
            logger.warning("could not queue job %s again: %s", job.job_id, exc)
            return False
        return True

    def _give_up(self, job: JobRecord, reason: str) -> None:
        message = (
            f"{reason}; gave up after {job.attempts} attempts (does this input crash workers?)"
        )
        logger.error("job failed: %s", message)
        self.ledger.transition(job.job_id, JobState.FAILED, reason=message)
        folder = Quarantine(self.settings.quarantine_dir).put(
            QuarantineEntry(
                stage="worker",
                error_type="WorkerLost",
                message=message,
                attempts=job.attempts,
                uids={
                    "SeriesInstanceUID": job.series_instance_uid,
                    "StudyInstanceUID": job.study_instance_uid,
                },
                job_id=job.job_id,
            ),
            quarantine_id=f"job-{job.job_id}-lost-{job.attempts}",
        )
        self.ledger.record_quarantine(
            stage="worker",
            reason=message,
            path=str(folder),
            series_uid=job.series_instance_uid,
            job_id=job.job_id,
        )


def _retry_delay(job: JobRecord, settings: Settings) -> float:
    """How long a RETRYING job may legitimately wait in the broker before its retry."""
    if job.state != JobState.RETRYING:
        return 0.0
    return float(settings.worker.retry_backoff_seconds * 2 ** max(0, job.attempts - 1))
