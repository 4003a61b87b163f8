"""The delivery service: sends outbox items to their destinations, on a retry schedule.

Runs in the node process (``pacs-ai serve``), so GPU workers never wait on a PACS. Each
round takes the due items, groups them by destination, and sends each group over one
association (DIMSE C-STORE) or one STOW-RS request (DICOMweb). Per item:

* stored (Success or a warning) -> SENT;
* a transient failure (destination unreachable, association rejected transiently or
  aborted, Out of Resources, HTTP 5xx) -> retried after the next of
  ``delivery.retry_delays``, and dead-lettered (DEAD) when they are used up; meanwhile
  the job's reason says what failed and when the next attempt is;
* the association rejected *permanently* (A-ASSOCIATE-RJ result 1: our calling AE title
  or the called AE title not recognised, PS3.8 9.3.4) -> a configuration error, on our
  side or the destination's. The destination is recorded misconfigured (``pacs-ai
  status`` shows it) and tried again on its own slower schedule,
  ``delivery.config_error_retry_delays`` (the last delay repeats), until an association
  succeeds; its items stay PENDING without using up their retries, and each job says at
  once what to fix and that ``pacs-ai resend JOB_ID`` tries again at once;
* a permanent rejection of an object (SOP class not supported, Cannot Understand, HTTP
  4xx) -> REJECTED.

Then each job whose results were in the round moves on: DONE when every result is SENT,
FAILED with the destination's reason (and a quarantine record) when one is REJECTED or
DEAD. ``pacs-ai resend JOB_ID`` sends a failed job's results again.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.jobs import JobState
from core.ledger import (
    DeliveryState,
    DestinationProblem,
    InvalidTransitionError,
    Ledger,
    Outbox,
    OutboxItem,
    UnknownJobError,
)
from core.logs import log_context
from core.periodic import Periodic
from core.quarantine import Quarantine, QuarantineEntry
from core.settings import DestinationSettings, DicomWebDestination, Settings
from dicom_node.scu import AssociationError, InstanceResult, send_files
from dicom_node.status import Status
from dicom_node.ul.negotiation import CALLED_AE_NOT_RECOGNIZED, CALLING_AE_NOT_RECOGNIZED
from node_services.stow import stow

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of sending one item once."""

    item: OutboxItem
    stored: bool
    status: int | None
    error: str
    transient: bool
    #: The destination rejects our association permanently: what to fix (no job id).
    config_error: str | None = None


class DeliveryService:
    """Sends due outbox items, in a background thread or one round at a time."""

    def __init__(
        self, settings: Settings, ledger: Ledger, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.outbox = Outbox(ledger)
        self.quarantine = Quarantine(settings.quarantine_dir)
        self._clock = clock
        self._loop = Periodic("delivery", settings.delivery.poll_interval_seconds, self.run_once)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def run_once(self) -> int:
        """Send every due item once; return how many were attempted."""
        now = self._clock()
        # Only what this node's disk holds: nodes sharing the ledger each send their own.
        due = self.outbox.due(now=now, node=self.settings.node.name)
        by_destination: dict[str, list[OutboxItem]] = defaultdict(list)
        for item in due:
            by_destination[item.destination].append(item)
        problems = self.outbox.destination_problems() if by_destination else {}
        attempts: list[Attempt] = []
        for name, items in by_destination.items():
            problem = problems.get(name)
            if problem is not None and problem.next_attempt_at > now:
                # Misconfigured: it waits for its own schedule, new results with it.
                self.outbox.postpone([i.item_id for i in items], until=problem.next_attempt_at)
                for job_id in sorted({i.job_id for i in items if i.job_id is not None}):
                    self._explain(
                        job_id,
                        _config_reason(
                            problem, job_id, self.settings.delivery.config_error_retry_delays
                        ),
                    )
                continue
            tried = self._send(name, items)
            problem = self._destination_outcome(name, tried, problem, now)
            if problem is not None:
                problems[name] = problem
            else:
                problems.pop(name, None)
            attempts.extend(tried)
        self._record(attempts, problems)
        # Also the jobs that just reached DELIVERING: their items may all have been sent
        # before the worker recorded the transition, in an earlier round.
        recent = self.ledger.jobs(
            states=[JobState.DELIVERING], updated_after=self._clock() - 60, limit=10_000
        )
        settle = {job.job_id for job in recent}
        settle.update(a.item.job_id for a in attempts if a.item.job_id is not None)
        self._settle_jobs(settle)
        return len(attempts)

    def _send(self, name: str, items: list[OutboxItem]) -> list[Attempt]:
        destination = self.settings.destinations.get(name)
        if destination is None:
            return [
                Attempt(
                    item,
                    stored=False,
                    status=None,
                    error=f"destination {name!r} is no longer configured",
                    transient=False,
                )
                for item in items
            ]
        present = [item for item in items if Path(item.path).is_file()]
        missing = [
            Attempt(
                item, stored=False, status=None, error=f"file {item.path} is gone", transient=False
            )
            for item in items
            if item not in present
        ]
        if isinstance(destination, DicomWebDestination):
            return missing + self._send_stow(destination, present)
        return missing + self._send_dimse(name, destination, present)

    def _send_dimse(
        self, name: str, destination: DestinationSettings, items: list[OutboxItem]
    ) -> list[Attempt]:
        if not items:
            return []
        try:
            report = send_files(
                [Path(item.path) for item in items],
                host=destination.host,
                port=destination.port,
                called_ae=destination.ae_title,
                calling_ae=self.settings.node.ae_title,
                timeout=destination.timeout_seconds,
                tls=destination.tls,
            )
        except AssociationError as exc:
            done = {str(r.path): r for r in exc.report.results}
            config = (
                config_problem(name, destination, our_ae=self.settings.node.ae_title, error=exc)
                if exc.permanent
                else None
            )
            return [
                _from_result(item, done[item.path])
                if item.path in done
                else Attempt(
                    item,
                    stored=False,
                    status=None,
                    error=f"{name}: {exc}",
                    transient=True,
                    config_error=config,
                )
                for item in items
            ]
        by_path = {str(result.path): result for result in report.results}
        return [_from_result(item, by_path[item.path]) for item in items]

    def _send_stow(
        self, destination: DicomWebDestination, items: list[OutboxItem]
    ) -> list[Attempt]:
        if not items:
            return []
        outcomes = {
            o.sop_instance_uid: o
            for o in stow(destination, [(i.sop_instance_uid, Path(i.path)) for i in items])
        }
        return [
            Attempt(
                item,
                stored=outcomes[item.sop_instance_uid].stored,
                status=outcomes[item.sop_instance_uid].status,
                error=outcomes[item.sop_instance_uid].reason,
                transient=outcomes[item.sop_instance_uid].transient,
            )
            for item in items
        ]

    def _destination_outcome(
        self,
        name: str,
        tried: list[Attempt],
        problem: DestinationProblem | None,
        now: float,
    ) -> DestinationProblem | None:
        """Record whether ``name`` is misconfigured after this round; its problem, if so."""
        config = next((a.config_error for a in tried if a.config_error), None)
        if config is not None:
            delays = self.settings.delivery.config_error_retry_delays
            done = problem.attempts if problem is not None else 0
            wait = delays[min(done, len(delays) - 1)]
            if problem is None:
                logger.error(
                    "%s; jobs wait in DELIVERING, tried again every %s until it is fixed",
                    config,
                    " then ".join(f"{d:g} s" for d in delays),
                )
            return self.outbox.destination_misconfigured(
                name, config, next_attempt_at=now + wait, now=now
            )
        associated = any(a.stored or a.status is not None for a in tried)
        if problem is not None and associated and self.outbox.destination_works(name):
            logger.info("destination %r accepts our associations again", name)
            return None
        return problem

    def _explain(self, job_id: str, reason: str) -> None:
        """Say on a job waiting in DELIVERING why it waits (a note when it changes)."""
        try:
            self.ledger.explain_job(job_id, reason, state=JobState.DELIVERING)
        except UnknownJobError:
            logger.warning("outbox items of job %s, which the ledger does not hold", job_id)

    def _record(self, attempts: list[Attempt], problems: dict[str, DestinationProblem]) -> None:
        now = self._clock()
        sent = [a.item.item_id for a in attempts if a.stored]
        self.outbox.mark_sent(sent, status=int(Status.SUCCESS), now=now)
        delays = self.settings.delivery.retry_delays
        waiting: dict[str, str] = {}
        for attempt in attempts:
            if attempt.stored:
                continue
            item = attempt.item
            made = item.attempts + 1
            problem = problems.get(item.destination)
            if attempt.config_error is not None and problem is not None:
                # Its own schedule; the item keeps its retries for ordinary failures.
                self.outbox.mark_failed(
                    item.item_id,
                    state=DeliveryState.PENDING,
                    status=attempt.status,
                    error=attempt.error,
                    next_attempt_at=problem.next_attempt_at,
                    now=now,
                    count_attempt=False,
                )
                if item.job_id is not None:
                    waiting[item.job_id] = _config_reason(
                        problem, item.job_id, self.settings.delivery.config_error_retry_delays
                    )
                continue
            if not attempt.transient:
                state, next_at = DeliveryState.REJECTED, None
            elif made <= len(delays):
                state, next_at = DeliveryState.PENDING, now + delays[made - 1]
            else:
                state, next_at = DeliveryState.DEAD, None
            self.outbox.mark_failed(
                item.item_id,
                state=state,
                status=attempt.status,
                error=attempt.error,
                next_attempt_at=next_at,
                now=now,
            )
            logger.warning(
                "delivery of %s to %s failed (attempt %d): %s -> %s",
                item.sop_instance_uid,
                item.destination,
                made,
                attempt.error,
                state.value if next_at is None else f"retry in {next_at - now:.0f} s",
            )
            if next_at is not None and item.job_id is not None:
                waiting.setdefault(
                    item.job_id,
                    f"destination {item.destination!r} did not take the results yet: "
                    f"{attempt.error}; retry {made} of {len(delays)} at {_clock(next_at)} "
                    f"(`pacs-ai resend {item.job_id}` tries now)",
                )
        for job_id, reason in sorted(waiting.items()):
            self._explain(job_id, reason)

    def _settle_jobs(self, job_ids: set[str]) -> None:
        for job_id in sorted(job_ids):
            with log_context(job_id=job_id):
                try:
                    self._settle(job_id)
                except InvalidTransitionError:
                    # Settled meanwhile by another node sharing the ledger (each node
                    # settles the jobs it sees DELIVERING).
                    continue

    def _settle(self, job_id: str) -> None:
        job = self.ledger.get_job(job_id)
        if job.state != JobState.DELIVERING:
            return
        items = self.outbox.items(job_id=job_id)
        states = {item.state for item in items}
        if states == {DeliveryState.SENT}:
            seconds = max(i.sent_at or 0 for i in items) - min(i.created_at for i in items)
            flagged = job.result.get("flagged")
            self.ledger.transition(
                job_id,
                JobState.DONE,
                # A result delivered flagged (on_implausible: deliver_flagged) says so.
                reason=str(flagged) if flagged else None,
                detail={
                    "timings": {"deliver": seconds},
                    "destinations": sorted({i.destination for i in items}),
                },
                expected={JobState.DELIVERING},
            )
            logger.info("job done: %d objects delivered", len(items))
            return
        failed = [i for i in items if i.state in (DeliveryState.REJECTED, DeliveryState.DEAD)]
        if failed and not any(i.state == DeliveryState.PENDING for i in items):
            first = failed[0]
            verb = (
                "refused" if first.state == DeliveryState.REJECTED else "could not be reached for"
            )
            reason = (
                f"destination {first.destination!r} {verb} {first.sop_instance_uid} after "
                f"{first.attempts} attempt(s): {first.last_error}; `pacs-ai resend {job_id}` "
                "sends it again"
            )
            self.ledger.transition(
                job_id, JobState.FAILED, reason=reason, expected={JobState.DELIVERING}
            )
            folder = self.quarantine.put(
                QuarantineEntry(
                    stage="deliver",
                    error_type=first.state.value,
                    message=reason,
                    attempts=first.attempts,
                    uids={
                        "SeriesInstanceUID": job.series_instance_uid,
                        "StudyInstanceUID": job.study_instance_uid,
                    },
                    job_id=job_id,
                ),
                quarantine_id=f"deliver-{job_id}-{int(self._clock())}",
            )
            self.ledger.record_quarantine(
                stage="deliver",
                reason=reason,
                path=str(folder),
                series_uid=job.series_instance_uid,
                job_id=job_id,
            )
            logger.error("job failed: %s", reason)


def config_problem(
    name: str, destination: DestinationSettings, *, our_ae: str, error: AssociationError
) -> str:
    """What to fix when ``name`` rejects our association permanently (PS3.8 9.3.4)."""
    rejection = error.rejection
    assert rejection is not None
    if rejection == CALLED_AE_NOT_RECOGNIZED:
        return (
            f"destination {name!r} rejects the called AE title {destination.ae_title} "
            f"permanently (called AE title not recognised): fix destinations.{name}.ae_title "
            "(the PACS's own AE title) or the PACS's AE configuration"
        )
    if rejection == CALLING_AE_NOT_RECOGNIZED:
        return (
            f"destination {name!r} rejects our AE title {our_ae} permanently (calling AE "
            f"title not recognised): add {our_ae} at {destination.host}:{destination.port} "
            "to the PACS's known AE titles (or fix node.ae_title)"
        )
    return (
        f"destination {name!r} rejects our association permanently "
        f"({rejection.describe()}): check destinations.{name} and how the PACS is "
        f"configured for our AE title {our_ae}"
    )


def _config_reason(problem: DestinationProblem, job_id: str, delays: Sequence[float]) -> str:
    # No time in it: the reason stays the same from one attempt to the next (one note).
    return (
        f"{problem.problem}, then `pacs-ai resend {job_id}` (until then the node tries "
        f"again after {', '.join(f'{d:g}' for d in delays)} s, the last repeating)"
    )


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _from_result(item: OutboxItem, result: InstanceResult) -> Attempt:
    if result.refused:
        # The destination does not take this SOP class / transfer syntax at all.
        return Attempt(
            item,
            stored=False,
            status=int(Status.SOP_CLASS_NOT_SUPPORTED),
            error=result.reason,
            transient=False,
        )
    return Attempt(
        item,
        stored=result.ok,
        status=result.status,
        error=result.reason,
        transient=result.transient or result.status is None,
    )
