"""What the dashboard, ``pacs-ai status``, the JSON API and ``/metrics`` read of jobs and
series: views of the ledger computed by the ledger itself, from the same row mapping as its
writers (:mod:`core.ledger.rows`). Finished runs, workers and destinations are in
:mod:`core.ledger.activity`.

A job is shown as **DISCARDED** when an operator discarded it (``job_discards``): it is
FAILED in the ledger, and stays discarded until it changes again (a retry or a re-run).
Stage times come from :mod:`core.ledger.timeline`.

Every query here reads a bounded part of the ledger (the newest rows, a time window, or
the rows of given ids) through an index, or is a count; ``benchmarks/ledger.py`` times them
on a ledger of a million instances.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection, Row

from core.jobs import JobEvent, JobRecord, JobState, SeriesRecord, SeriesState
from core.ledger.base import LedgerBase
from core.ledger.counters import JOBS_IN_STATE, SERIES_IN_STATE, recount_states
from core.ledger.outbox import Outbox, OutboxItem
from core.ledger.records import QuarantineRecord
from core.ledger.rows import (
    _job_event,
    _job_record,
    _quarantine_record,
    _series_record,
)
from core.ledger.schema import (
    counters_table,
    instances_table,
    job_discards_table,
    job_events_table,
    jobs_table,
    outbox_table,
    quarantine_table,
    series_table,
)
from core.ledger.timeline import Delivery, StageTimes, stage_times
from core.quarantine import DOOR_STAGES

DISCARDED = "DISCARDED"
#: Every state a job is shown in, in the order of its life.
DISPLAY_STATES: tuple[str, ...] = (*(s.value for s in JobState), DISCARDED)
#: Series states that mean "received, completed, and nothing was run on it".
NOT_ROUTED_STATES: tuple[str, ...] = (
    SeriesState.UNROUTED.value,
    SeriesState.FAILED.value,
    SeriesState.DISCARDED.value,
)
#: Ids per IN (...) query: well below SQLite's bound-parameter limit.
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Discard:
    at: float
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class JobView:
    """One job as the dashboard lists it."""

    job_id: str
    #: A :class:`~core.jobs.JobState` value, or :data:`DISCARDED`.
    state: str
    route: str
    model_id: str
    priority: int
    attempts: int
    reason: str | None
    worker: str | None
    destinations: tuple[str, ...]
    created_at: float
    updated_at: float
    study_uid: str
    series_uid: str
    modality: str | None
    calling_ae: str | None
    instance_count: int
    times: StageTimes
    discard: Discard | None = None
    #: A shadow job: results kept in the node, not delivered (unless re-sent).
    shadow: bool = False
    #: How its series came: ``None`` (a sender stored it) or ``retrieved`` (pulled).
    origin: str | None = None

    @property
    def failed(self) -> bool:
        return self.state in (JobState.FAILED.value, DISCARDED)


@dataclass(frozen=True, slots=True)
class JobDetail:
    job: JobView
    events: list[JobEvent]
    outbox: list[OutboxItem]
    quarantine: list[QuarantineRecord]


@dataclass(frozen=True, slots=True)
class SetAside:
    """What was received but did not become a result: the newest of each kind (``limit``
    each) and the counts of all (see :mod:`monitor.set_aside`)."""

    series_counts: dict[str, int]
    #: UNROUTED, FAILED or DISCARDED series, newest change first.
    not_routed: list[SeriesRecord]
    not_applicable: list[JobView]
    quarantine_counts: dict[str, int]
    #: Refused at the door (:data:`core.quarantine.DOOR_STAGES`), and the rest.
    refused: list[QuarantineRecord]
    quarantined: list[QuarantineRecord]

    @property
    def refused_count(self) -> int:
        return sum(n for stage, n in self.quarantine_counts.items() if stage in DOOR_STAGES)

    @property
    def quarantined_count(self) -> int:
        return sum(n for stage, n in self.quarantine_counts.items() if stage not in DOOR_STAGES)


class ReadModels(LedgerBase):
    """The read models of the monitor. Safe to share between threads."""

    # -- jobs --------------------------------------------------------------------------

    def job_views(self, *, limit: int = 50, states: Iterable[str] | None = None) -> list[JobView]:
        """The most recently changed jobs (newest first), optionally only in ``states``
        (display states: DISCARDED included)."""
        wanted = set(states) if states is not None else None
        query = select(jobs_table).order_by(jobs_table.c.updated_at.desc())
        if wanted is not None:
            ledger_states = {s for s in wanted if s != DISCARDED}
            if DISCARDED in wanted:
                ledger_states.add(JobState.FAILED.value)
            query = query.where(jobs_table.c.state.in_(sorted(ledger_states)))
        # Discarded jobs are FAILED in the ledger: read a little more and filter after.
        query = query.limit(limit if wanted is None else limit * 4 + 50)
        with self._engine.connect() as conn:
            views = _job_views(conn, conn.execute(query).all())
        if wanted is not None:
            views = [v for v in views if v.state in wanted]
        return views[:limit]

    def job_detail(self, job_id: str) -> JobDetail | None:
        """One job with its events, outbox items and quarantine records; None if unknown."""
        with self._engine.connect() as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.job_id == job_id)).first()
            if row is None:
                return None
            [view] = _job_views(conn, [row])
            events = _events_of(conn, [job_id]).get(job_id, [])
            quarantine = [
                _quarantine_record(q)
                for q in conn.execute(
                    select(quarantine_table)
                    .where(quarantine_table.c.series_uid == view.series_uid)
                    .where(quarantine_table.c.job_id == job_id)
                    .order_by(quarantine_table.c.at)
                )
            ]
        return JobDetail(view, events, Outbox(self).items(job_id=job_id), quarantine)

    def job_counts(self) -> dict[tuple[str, str], int]:
        """Jobs per (display state, model), from the gauges (:mod:`core.ledger.counters`);
        the FAILED that are shown DISCARDED counted from the (few) discards."""
        counts: dict[tuple[str, str], int] = {}
        discarded = and_(
            jobs_table.c.state == JobState.FAILED.value,
            job_discards_table.c.at >= jobs_table.c.updated_at,
        )
        with self._engine.connect() as conn:
            for labels, value in _gauges(conn, JOBS_IN_STATE):
                counts[(labels["state"], labels["model"])] = int(value)
            for model, count in conn.execute(
                select(jobs_table.c.model_id, func.count())
                .select_from(
                    job_discards_table.join(
                        jobs_table, jobs_table.c.job_id == job_discards_table.c.job_id
                    )
                )
                .where(discarded)
                .group_by(jobs_table.c.model_id)
            ):
                failed = (JobState.FAILED.value, str(model))
                counts[failed] = counts.get(failed, 0) - int(count)
                counts[(DISCARDED, str(model))] = int(count)
        return {key: count for key, count in counts.items() if count}

    def waiting_jobs(self) -> dict[str, int]:
        """Jobs QUEUED or RETRYING per model (the broker should hold them)."""
        with self._engine.connect() as conn:
            return {
                str(model): int(count)
                for model, count in conn.execute(
                    select(jobs_table.c.model_id, func.count())
                    .where(jobs_table.c.state.in_([JobState.QUEUED.value, JobState.RETRYING.value]))
                    .group_by(jobs_table.c.model_id)
                )
            }

    def jobs_updated_at(self, job_ids: Sequence[str]) -> dict[str, float]:
        """When each of these jobs last changed (a queued job: when it was queued)."""
        found: dict[str, float] = {}
        with self._engine.connect() as conn:
            for chunk in _chunks(list(job_ids)):
                found.update(
                    (str(job_id), float(at))
                    for job_id, at in conn.execute(
                        select(jobs_table.c.job_id, jobs_table.c.updated_at).where(
                            jobs_table.c.job_id.in_(chunk)
                        )
                    )
                )
        return found

    def first_instance_paths(self, series_uids: Iterable[str]) -> dict[str, str]:
        """A stored file of each series (the first by path), where it has any."""
        paths: dict[str, str] = {}
        with self._engine.connect() as conn:
            for chunk in _chunks(list(series_uids)):
                paths.update(
                    (str(uid), str(path))
                    for uid, path in conn.execute(
                        select(instances_table.c.series_uid, func.min(instances_table.c.path))
                        .where(instances_table.c.series_uid.in_(chunk))
                        .group_by(instances_table.c.series_uid)
                    )
                )
        return paths

    # -- counts, set aside -----------------------------------------------------------------

    def series_counts(self) -> dict[str, int]:
        """Series per state, from the gauges (:mod:`core.ledger.counters`)."""
        with self._engine.connect() as conn:
            return {
                labels["state"]: int(value)
                for labels, value in _gauges(conn, SERIES_IN_STATE)
                if int(value)
            }

    def recount_states(self) -> None:
        """Set the gauges of jobs and series per state from the rows themselves (after a
        bulk load; an upgrade does it in its revision)."""
        with self._engine.begin() as conn:
            recount_states(conn)

    def quarantine_counts(self) -> dict[str, int]:
        """Quarantine records per stage."""
        with self._engine.connect() as conn:
            return {
                str(stage): int(count)
                for stage, count in conn.execute(
                    select(quarantine_table.c.stage, func.count()).group_by(
                        quarantine_table.c.stage
                    )
                )
            }

    def set_aside(self, *, limit: int = 10) -> SetAside:
        """What was received but did not become a result (see :class:`SetAside`)."""
        door = quarantine_table.c.stage.in_(sorted(DOOR_STAGES))
        with self._engine.connect() as conn:
            not_routed = [
                _series_record(row)
                for row in conn.execute(
                    select(series_table)
                    .where(series_table.c.state.in_(NOT_ROUTED_STATES))
                    .order_by(series_table.c.updated_at.desc())
                    .limit(limit)
                )
            ]
            refused, quarantined = (
                [
                    _quarantine_record(row)
                    for row in conn.execute(
                        select(quarantine_table)
                        .where(where)
                        .order_by(quarantine_table.c.at.desc())
                        .limit(limit)
                    )
                ]
                for where in (door, ~door)
            )
        return SetAside(
            series_counts=self.series_counts(),
            not_routed=not_routed,
            not_applicable=self.job_views(limit=limit, states=[JobState.NOT_APPLICABLE.value]),
            quarantine_counts=self.quarantine_counts(),
            refused=refused,
            quarantined=quarantined,
        )


def _job_views(conn: Connection, rows: Sequence[Row[Any]]) -> list[JobView]:
    if not rows:
        return []
    jobs = [_job_record(row) for row in rows]
    job_ids = [job.job_id for job in jobs]
    events = _events_of(conn, job_ids)
    series: dict[str, SeriesRecord] = {}
    deliveries: dict[str, list[Delivery]] = {}
    discards: dict[str, Discard] = {}
    for chunk in _chunks(sorted({job.series_instance_uid for job in jobs})):
        for row in conn.execute(select(series_table).where(series_table.c.series_uid.in_(chunk))):
            series[row.series_uid] = _series_record(row)
    for chunk in _chunks(job_ids):
        deliveries.update(_deliveries_of(conn, chunk))
        discards.update(
            (row.job_id, Discard(row.at, row.actor, row.reason))
            for row in conn.execute(
                select(job_discards_table).where(job_discards_table.c.job_id.in_(chunk))
            )
        )
    return [
        _job_view(
            job,
            series.get(job.series_instance_uid),
            events=events.get(job.job_id, []),
            deliveries=deliveries.get(job.job_id, []),
            discard=discards.get(job.job_id),
        )
        for job in jobs
    ]


def _job_view(
    job: JobRecord,
    series: SeriesRecord | None,
    *,
    events: list[JobEvent],
    deliveries: list[Delivery],
    discard: Discard | None,
) -> JobView:
    state = job.state.value
    # Discarded while FAILED, and not changed since (a retry or a re-run ends it).
    if discard is not None and job.state is JobState.FAILED and discard.at >= job.updated_at:
        state = DISCARDED
    else:
        discard = None
    return JobView(
        job_id=job.job_id,
        state=state,
        route=job.route,
        model_id=job.model_id,
        priority=job.priority,
        attempts=job.attempts,
        reason=job.reason,
        worker=job.worker,
        destinations=job.destinations,
        created_at=job.created_at,
        updated_at=job.updated_at,
        study_uid=job.study_instance_uid,
        series_uid=job.series_instance_uid,
        modality=series.modality if series is not None else None,
        calling_ae=series.calling_ae if series is not None else None,
        instance_count=series.instance_count if series is not None else 0,
        times=stage_times(
            events,
            first_received=series.first_received_at if series is not None else None,
            last_received=job.input_received_at or None,
            deliveries=deliveries,
        ),
        discard=discard,
        shadow=job.shadow,
        origin=series.origin if series is not None else None,
    )


def _deliveries_of(conn: Connection, job_ids: Sequence[str]) -> dict[str, list[Delivery]]:
    """The result items of these jobs in the outbox, as far as timing goes."""
    deliveries: dict[str, list[Delivery]] = {}
    for item in conn.execute(
        select(outbox_table.c.job_id, outbox_table.c.state, outbox_table.c.sent_at)
        .where(outbox_table.c.job_id.in_(job_ids))
        .where(outbox_table.c.kind == "result")
    ):
        deliveries.setdefault(item.job_id, []).append(Delivery(item.state, item.sent_at))
    return deliveries


def _events_of(conn: Connection, job_ids: Sequence[str]) -> dict[str, list[JobEvent]]:
    """The events of many jobs, in ledger order, one query per :data:`_CHUNK` ids."""
    events: dict[str, list[JobEvent]] = {}
    for chunk in _chunks(list(job_ids)):
        for row in conn.execute(
            select(job_events_table)
            .where(job_events_table.c.job_id.in_(chunk))
            .order_by(job_events_table.c.at, job_events_table.c.event_id)
        ):
            events.setdefault(row.job_id, []).append(_job_event(row))
    return events


def _gauges(conn: Connection, name: str) -> list[tuple[dict[str, str], float]]:
    """The labels and values of gauge ``name``."""
    return [
        (json.loads(labels), float(value))
        for labels, value in conn.execute(
            select(counters_table.c.labels, counters_table.c.value).where(
                counters_table.c.name == name
            )
        )
    ]


def _chunks(items: list[str]) -> list[list[str]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
