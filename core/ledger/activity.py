"""What ran and what runs, for the dashboard's charts and tables and for ``/metrics``: runs
finished in a time window with their stage times, workers with what they reported,
destinations with their outbox, and the shared counters.

Like :mod:`core.ledger.read_models`, every query reads a bounded part of the ledger (a time
window, the rows of given ids or names, the newest end of an index).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.engine import Row

from core.jobs import JobEvent, JobState
from core.ledger.base import LedgerBase
from core.ledger.counters import CounterKey
from core.ledger.read_models import _chunks, _deliveries_of, _events_of
from core.ledger.records import WorkerRecord
from core.ledger.rows import _worker_record
from core.ledger.schema import (
    counters_table,
    job_events_table,
    jobs_table,
    outbox_table,
    series_table,
    workers_table,
)
from core.ledger.timeline import Delivery, StageTimes, stage_times
from core.ledger.workers import workers_query

#: Workers silent longer than this are no longer listed ...
WORKERS_FORGOTTEN_AFTER = 3600.0
#: ... and those that stopped cleanly after this long.
STOPPED_WORKERS_FORGOTTEN_AFTER = 86_400.0


@dataclass(frozen=True, slots=True)
class WorkerView(WorkerRecord):
    """A worker as the dashboard shows it: its record, and whether its heartbeat is fresh."""

    alive: bool = False

    @property
    def state(self) -> str:
        """``alive``, ``stopped`` (cleanly) or ``silent`` (no heartbeat: died or hung)."""
        if self.stopped_at is not None:
            return "stopped"
        return "alive" if self.alive else "silent"


@dataclass(frozen=True, slots=True)
class DestinationActivity:
    """A destination's outbox: what waits, what was given up on, its last success and error."""

    name: str
    #: Items waiting to be sent (PENDING), and those given up on (DEAD, REJECTED).
    backlog: int = 0
    dead: int = 0
    rejected: int = 0
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_status: int | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """A run that ended in the chart window."""

    at: float
    state: str
    turnaround: float | None


@dataclass(frozen=True, slots=True)
class DoneRun:
    """A run that ended DONE: its job's model and route, and its stage times."""

    job_id: str
    at: float
    model_id: str
    route: str
    times: StageTimes


class Activity(LedgerBase):
    """Finished runs, workers, destinations and counters. Safe to share between threads."""

    # -- history -------------------------------------------------------------------------

    def finished_since(self, since: float) -> list[Finished]:
        """Runs that ended DONE or FAILED since ``since``, with their turnaround, oldest
        first."""
        with self._engine.connect() as conn:
            ended = conn.execute(
                select(job_events_table.c.job_id, job_events_table.c.state, job_events_table.c.at)
                .where(job_events_table.c.state.in_([JobState.DONE.value, JobState.FAILED.value]))
                .where(job_events_table.c.at >= since)
                .where(job_events_table.c.kind == "transition")
                .order_by(job_events_table.c.at)
            ).all()
            done_ids = list({row.job_id for row in ended if row.state == JobState.DONE.value})
            received: dict[str, float] = {}
            accepted: dict[str, float] = {}
            for chunk in _chunks(done_ids):
                received.update(
                    (str(job_id), float(at))
                    for job_id, at in conn.execute(
                        select(jobs_table.c.job_id, jobs_table.c.input_received_at).where(
                            jobs_table.c.job_id.in_(chunk)
                        )
                    )
                )
                for job_id, last_sent, unsent in conn.execute(
                    select(
                        outbox_table.c.job_id,
                        func.max(outbox_table.c.sent_at),
                        func.sum(case((outbox_table.c.state == "SENT", 0), else_=1)),
                    )
                    .where(outbox_table.c.job_id.in_(chunk))
                    .where(outbox_table.c.kind == "result")
                    .group_by(outbox_table.c.job_id)
                ):
                    if not unsent and last_sent is not None:
                        accepted[job_id] = float(last_sent)
        finished = []
        for row in ended:
            turnaround = None
            if row.state == JobState.DONE.value and row.job_id in accepted:
                span = accepted[row.job_id] - received.get(row.job_id, accepted[row.job_id])
                turnaround = span if span >= 0 else None
            finished.append(Finished(float(row.at), str(row.state), turnaround))
        return finished

    def done_transitions(self, *, after: float) -> list[tuple[str, float]]:
        """(job id, when) of every transition to DONE after ``after``, oldest first."""
        with self._engine.connect() as conn:
            return [
                (str(job_id), float(at))
                for job_id, at in conn.execute(
                    select(job_events_table.c.job_id, job_events_table.c.at)
                    .where(job_events_table.c.state == JobState.DONE.value)
                    .where(job_events_table.c.kind == "transition")
                    .where(job_events_table.c.at > after)
                    .order_by(job_events_table.c.at)
                )
            ]

    def done_runs(self, runs: Sequence[tuple[str, float]]) -> list[DoneRun]:
        """The runs that ended DONE at the given (job id, time): each one's stage times
        from the events up to then. Runs of jobs no longer in the ledger are left out."""
        job_ids = sorted({job_id for job_id, _at in runs})
        jobs: dict[str, Any] = {}
        deliveries: dict[str, list[Delivery]] = {}
        events: dict[str, list[JobEvent]] = {}
        with self._engine.connect() as conn:
            for chunk in _chunks(job_ids):
                jobs.update(
                    (row.job_id, row)
                    for row in conn.execute(
                        select(
                            jobs_table.c.job_id,
                            jobs_table.c.model_id,
                            jobs_table.c.route,
                            jobs_table.c.input_received_at,
                            series_table.c.first_received_at,
                        )
                        .select_from(
                            jobs_table.outerjoin(
                                series_table, series_table.c.series_uid == jobs_table.c.series_uid
                            )
                        )
                        .where(jobs_table.c.job_id.in_(chunk))
                    )
                )
                deliveries.update(_deliveries_of(conn, chunk))
            events = _events_of(conn, job_ids)
        done = []
        for job_id, at in runs:
            job = jobs.get(job_id)
            if job is None:
                continue
            times = stage_times(
                [e for e in events.get(job_id, []) if e.at <= at],
                first_received=job.first_received_at,
                last_received=job.input_received_at or None,
                deliveries=deliveries.get(job_id, []),
            )
            done.append(DoneRun(job_id, at, job.model_id, job.route, times))
        return done

    # -- workers, destinations -------------------------------------------------------------

    def worker_views(self, *, now: float, lost_after: float) -> list[WorkerView]:
        """Workers heard from in the last hour and those stopped cleanly in the last day,
        alive ones (a heartbeat within ``lost_after`` seconds, not stopped) first."""
        stopped_at = workers_table.c.stopped_at
        query = workers_query().where(
            or_(
                and_(
                    stopped_at.is_(None),
                    workers_table.c.heartbeat_at >= now - WORKERS_FORGOTTEN_AFTER,
                ),
                stopped_at >= now - STOPPED_WORKERS_FORGOTTEN_AFTER,
            )
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        views = [_worker_view(row, now=now, lost_after=lost_after) for row in rows]
        return sorted(views, key=lambda w: (not w.alive, w.name))

    def destination_activity(self, names: Iterable[str] = ()) -> list[DestinationActivity]:
        """The outbox of each of ``names`` and of every destination with items waiting or
        given up on, by name."""
        open_states = ("PENDING", "DEAD", "REJECTED")
        with self._engine.connect() as conn:
            counts: dict[tuple[str, str], int] = {
                (str(d), str(s)): int(n)
                for d, s, n in conn.execute(
                    select(outbox_table.c.destination, outbox_table.c.state, func.count())
                    .where(outbox_table.c.state.in_(open_states))
                    .group_by(outbox_table.c.destination, outbox_table.c.state)
                )
            }
            activity = []
            for name in sorted(set(names) | {d for d, _s in counts}):
                # One destination at a time: each is the newest end of an index
                # (ix_outbox_destination_state_sent, ix_outbox_destination_errors).
                last_success = conn.execute(
                    select(func.max(outbox_table.c.sent_at))
                    .where(outbox_table.c.destination == name)
                    .where(outbox_table.c.state == "SENT")
                ).scalar()
                error = conn.execute(
                    select(
                        outbox_table.c.last_error,
                        outbox_table.c.last_status,
                        outbox_table.c.updated_at,
                    )
                    .where(outbox_table.c.destination == name)
                    .where(outbox_table.c.last_error.is_not(None))
                    .order_by(outbox_table.c.updated_at.desc())
                    .limit(1)
                ).first()
                activity.append(
                    DestinationActivity(
                        name=name,
                        backlog=counts.get((name, "PENDING"), 0),
                        dead=counts.get((name, "DEAD"), 0),
                        rejected=counts.get((name, "REJECTED"), 0),
                        last_success_at=float(last_success) if last_success is not None else None,
                        last_error=error.last_error if error is not None else None,
                        last_error_at=error.updated_at if error is not None else None,
                        last_status=error.last_status if error is not None else None,
                    )
                )
        return activity

    def counters(self, names: Iterable[str]) -> dict[CounterKey, float]:
        """The shared counters (:mod:`core.ledger.counters`) of these names."""
        with self._engine.connect() as conn:
            return {
                (str(name), str(labels)): float(value)
                for name, labels, value in conn.execute(
                    select(counters_table).where(counters_table.c.name.in_(list(names)))
                )
            }


def _worker_view(row: Row[Any], *, now: float, lost_after: float) -> WorkerView:
    record = _worker_record(row)
    alive = record.heartbeat_at >= now - lost_after and record.stopped_at is None
    return WorkerView(**{f.name: getattr(record, f.name) for f in fields(record)}, alive=alive)
