"""What the dashboard, ``pacs-ai status`` and the JSON API show, read from the ledger and
the broker.

The ledger is the source of truth shared by the node, its receiving processes and the
workers, so every process (and ``pacs-ai status`` on another machine) sees the same.
Queue depths come from the broker (:class:`core.queue.BrokerInspector`).

A job is shown as **DISCARDED** when an operator discarded it (``job_discards``): it is
FAILED in the ledger, and stays discarded until it changes again (a retry or a re-run).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread
from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.engine import Connection

from core.errors import TransientError
from core.jobs import JobEvent, JobState
from core.ledger import CounterKey, Ledger, QuarantineRecord
from core.ledger.outbox import Outbox, OutboxItem
from core.ledger.schema import (
    audit_table,
    counters_table,
    instances_table,
    job_discards_table,
    job_events_table,
    jobs_table,
    outbox_table,
    series_table,
    worker_status_table,
    workers_table,
)
from core.messages import model_queue
from core.queue import BrokerInspector
from core.settings import DicomWebDestination, Settings
from monitor.timeline import Delivery, StageTimes, stage_times

logger = logging.getLogger(__name__)

DISCARDED = "DISCARDED"
#: Every state a job is shown in, in the order of its life.
DISPLAY_STATES: tuple[str, ...] = (*(s.value for s in JobState), DISCARDED)
#: Workers silent longer than this are no longer listed ...
WORKERS_FORGOTTEN_AFTER = 3600.0
#: ... and those that stopped cleanly after this long.
STOPPED_WORKERS_FORGOTTEN_AFTER = 86_400.0

_QUEUE_PREFIX = model_queue("")


@dataclass(frozen=True, slots=True)
class Discard:
    at: float
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class JobView:
    """One job as the dashboard lists it."""

    job_id: str
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
class QueueView:
    queue: str
    model_id: str
    priority: int
    depth: int
    oldest_job_id: str | None
    #: Seconds since the longest-waiting job was queued (from the ledger), if known.
    oldest_age: float | None


@dataclass(frozen=True, slots=True)
class QueuesReading:
    queues: list[QueueView]
    #: Messages taken by a worker and not yet acknowledged, per queue.
    unacked: dict[str, int]
    #: Jobs the ledger holds QUEUED or RETRYING, per model (the broker should hold them).
    waiting_in_ledger: dict[str, int]
    #: Why the broker could not be read, if it could not.
    error: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerView:
    name: str
    host: str
    pid: int
    device: str
    models: tuple[str, ...]
    started_at: float
    heartbeat_at: float
    alive: bool
    gpu_name: str | None = None
    gpu_memory_used: float | None = None
    gpu_memory_total: float | None = None
    gpu_utilisation: float | None = None
    current_job: str | None = None
    current_job_since: float | None = None
    jobs_done: int = 0
    #: When the worker process stopped cleanly; ``None`` while it runs (or if it died).
    stopped_at: float | None = None

    @property
    def state(self) -> str:
        """``alive``, ``stopped`` (cleanly) or ``silent`` (no heartbeat: died or hung)."""
        if self.stopped_at is not None:
            return "stopped"
        return "alive" if self.alive else "silent"


@dataclass(frozen=True, slots=True)
class DestinationView:
    name: str
    kind: str
    address: str
    #: Items waiting to be sent (PENDING), and those given up on (DEAD, REJECTED).
    backlog: int
    dead: int
    rejected: int
    last_success_at: float | None
    last_error: str | None
    last_error_at: float | None
    last_status: int | None
    #: It rejects our association permanently (a configuration error): what to fix, since
    #: when, and when it is tried again; ``None`` when it is not misconfigured.
    problem: str | None = None
    problem_since: float | None = None
    next_attempt_at: float | None = None

    @property
    def misconfigured(self) -> bool:
        return self.problem is not None


@dataclass(frozen=True, slots=True)
class Finished:
    """A run that ended in the chart window."""

    at: float
    state: str
    turnaround: float | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    actor: str
    role: str
    action: str
    job_id: str | None
    outcome: str
    detail: str | None
    remote: str | None


@dataclass(frozen=True, slots=True)
class DiskReading:
    path: str
    total: int
    used: int
    free: int
    reserve: int


@dataclass
class _Accessions:
    """Accession numbers read from the spool (the ledger does not keep them), cached."""

    limit: int = 10_000
    values: dict[str, str | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Readings:
    """Read-only queries for the monitor. Safe to share between threads."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        *,
        inspector: BrokerInspector | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.inspector = inspector
        self._engine = ledger.engine
        self._clock = clock
        self._accessions = _Accessions()

    def now(self) -> float:
        return float(self._clock())

    # -- jobs --------------------------------------------------------------------------

    def jobs(self, *, limit: int = 50, states: Iterable[str] | None = None) -> list[JobView]:
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
            rows = conn.execute(query).all()
            views = self._views(conn, rows)
        if wanted is not None:
            views = [v for v in views if v.state in wanted]
        return views[:limit]

    def job(self, job_id: str) -> JobDetail | None:
        """One job with its events, outbox items and quarantine records; None if unknown."""
        with self._engine.connect() as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.job_id == job_id)).first()
            if row is None:
                return None
            view = self._views(conn, [row])[0]
        outbox = Outbox(self.ledger).items(job_id=job_id)
        quarantine = [
            q for q in self.ledger.quarantined(series_uid=view.series_uid) if q.job_id == job_id
        ]
        return JobDetail(view, self.ledger.events(job_id), outbox, quarantine)

    def _views(self, conn: Connection, rows: Sequence[Any]) -> list[JobView]:
        if not rows:
            return []
        job_ids = [row.job_id for row in rows]
        events = _events_of(conn, job_ids)
        series = {
            s.series_uid: s
            for s in conn.execute(
                select(series_table).where(
                    series_table.c.series_uid.in_({row.series_uid for row in rows})
                )
            )
        }
        deliveries: dict[str, list[Delivery]] = {}
        for item in conn.execute(
            select(outbox_table.c.job_id, outbox_table.c.state, outbox_table.c.sent_at)
            .where(outbox_table.c.job_id.in_(job_ids))
            .where(outbox_table.c.kind == "result")
        ):
            deliveries.setdefault(item.job_id, []).append(Delivery(item.state, item.sent_at))
        discards = {
            d.job_id: d
            for d in conn.execute(
                select(job_discards_table).where(job_discards_table.c.job_id.in_(job_ids))
            )
        }
        views = []
        for row in rows:
            s = series.get(row.series_uid)
            discard_row = discards.get(row.job_id)
            discard = None
            state = str(row.state)
            if (
                discard_row is not None
                and state == JobState.FAILED.value
                and discard_row.at >= row.updated_at
            ):
                discard = Discard(discard_row.at, discard_row.actor, discard_row.reason)
                state = DISCARDED
            times = stage_times(
                events.get(row.job_id, []),
                first_received=s.first_received_at if s is not None else None,
                last_received=row.input_received_at or None,
                deliveries=deliveries.get(row.job_id, []),
            )
            views.append(
                JobView(
                    job_id=row.job_id,
                    state=state,
                    route=row.route,
                    model_id=row.model_id,
                    priority=row.priority,
                    attempts=row.attempts,
                    reason=row.reason,
                    worker=row.worker,
                    destinations=tuple(json.loads(row.destinations)),
                    created_at=row.created_at,
                    updated_at=row.updated_at,
                    study_uid=row.study_uid,
                    series_uid=row.series_uid,
                    modality=s.modality if s is not None else None,
                    calling_ae=s.calling_ae if s is not None else None,
                    instance_count=s.instance_count if s is not None else 0,
                    times=times,
                    discard=discard,
                )
            )
        return views

    def job_counts(self) -> dict[tuple[str, str], int]:
        """Jobs per (display state, model)."""
        discarded = and_(
            jobs_table.c.state == JobState.FAILED.value,
            job_discards_table.c.at >= jobs_table.c.updated_at,
        )
        shown = case((discarded, DISCARDED), else_=jobs_table.c.state)
        query = (
            select(shown.label("shown"), jobs_table.c.model_id, func.count())
            .select_from(
                jobs_table.outerjoin(
                    job_discards_table, job_discards_table.c.job_id == jobs_table.c.job_id
                )
            )
            .group_by(shown, jobs_table.c.model_id)
        )
        with self._engine.connect() as conn:
            return {(str(r[0]), str(r[1])): int(r[2]) for r in conn.execute(query)}

    def accession_numbers(self, series_uids: Iterable[str]) -> dict[str, str | None]:
        """Accession numbers of the series' studies, read from their first spool file
        (cached). ``None`` where the data is gone or has none. Show them only to
        authenticated users."""
        cache = self._accessions
        found: dict[str, str | None] = {}
        missing = []
        with cache.lock:
            for uid in series_uids:
                if uid in cache.values:
                    found[uid] = cache.values[uid]
                else:
                    missing.append(uid)
        if not missing:
            return found
        with self._engine.connect() as conn:
            paths = {
                row.series_uid: row.path
                for row in conn.execute(
                    select(
                        instances_table.c.series_uid,
                        func.min(instances_table.c.path).label("path"),
                    )
                    .where(instances_table.c.series_uid.in_(missing))
                    .group_by(instances_table.c.series_uid)
                )
            }
        for uid in missing:
            found[uid] = _accession_in(paths.get(uid))
        with cache.lock:
            if len(cache.values) > cache.limit:
                cache.values.clear()
            cache.values.update(found)
        return found

    # -- queues, workers, destinations ---------------------------------------------------

    def queues(self) -> QueuesReading:
        """Depth and oldest job per model queue and priority; routed models' queues are
        listed even when empty."""
        now = self.now()
        with self._engine.connect() as conn:
            waiting = {
                str(model): int(count)
                for model, count in conn.execute(
                    select(jobs_table.c.model_id, func.count())
                    .where(jobs_table.c.state.in_([JobState.QUEUED.value, JobState.RETRYING.value]))
                    .group_by(jobs_table.c.model_id)
                )
            }
        routed = {m for route in self.settings.routes for m in route.models}
        if self.inspector is None:
            return QueuesReading([], {}, waiting, error="no broker configured for the monitor")
        try:
            depths = self.inspector.queue_depths()
            unacked = self.inspector.unacked_by_queue()
        except TransientError as exc:
            return QueuesReading([], {}, waiting, error=str(exc))
        oldest_ids = [d.oldest_job_id for d in depths if d.oldest_job_id]
        queued_at: dict[str, float] = {}
        if oldest_ids:
            with self._engine.connect() as conn:
                queued_at = {
                    row.job_id: row.updated_at
                    for row in conn.execute(
                        select(jobs_table.c.job_id, jobs_table.c.updated_at).where(
                            jobs_table.c.job_id.in_(oldest_ids)
                        )
                    )
                }
        views = [
            QueueView(
                queue=d.queue,
                model_id=d.queue.removeprefix(_QUEUE_PREFIX),
                priority=d.priority,
                depth=d.depth,
                oldest_job_id=d.oldest_job_id,
                oldest_age=(
                    max(0.0, now - queued_at[d.oldest_job_id])
                    if d.oldest_job_id in queued_at
                    else None
                ),
            )
            for d in depths
        ]
        present = {v.model_id for v in views}
        for model_id in sorted(routed - present):
            views.append(QueueView(model_queue(model_id), model_id, 0, 0, None, None))
        views.sort(key=lambda v: (v.model_id, v.priority))
        return QueuesReading(views, unacked, waiting)

    def workers(self) -> list[WorkerView]:
        """Workers heard from in the last hour and those stopped cleanly in the last day,
        alive ones first."""
        now = self.now()
        lost_after = self.settings.worker.lost_after_seconds
        stopped_at = workers_table.c.stopped_at
        query = (
            select(workers_table, worker_status_table)
            .select_from(
                workers_table.outerjoin(
                    worker_status_table, worker_status_table.c.name == workers_table.c.name
                )
            )
            .where(
                or_(
                    and_(
                        stopped_at.is_(None),
                        workers_table.c.heartbeat_at >= now - WORKERS_FORGOTTEN_AFTER,
                    ),
                    stopped_at >= now - STOPPED_WORKERS_FORGOTTEN_AFTER,
                )
            )
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        views = [
            WorkerView(
                name=row[workers_table.c.name],
                host=row[workers_table.c.host],
                pid=row[workers_table.c.pid],
                device=row[workers_table.c.device],
                models=tuple(json.loads(row[workers_table.c.models])),
                started_at=row[workers_table.c.started_at],
                heartbeat_at=row[workers_table.c.heartbeat_at],
                alive=row[workers_table.c.heartbeat_at] >= now - lost_after
                and row[stopped_at] is None,
                gpu_name=row[worker_status_table.c.gpu_name],
                gpu_memory_used=row[worker_status_table.c.gpu_memory_used],
                gpu_memory_total=row[worker_status_table.c.gpu_memory_total],
                gpu_utilisation=row[worker_status_table.c.gpu_utilisation],
                current_job=row[worker_status_table.c.current_job],
                current_job_since=row[worker_status_table.c.current_job_since],
                jobs_done=row[worker_status_table.c.jobs_done] or 0,
                stopped_at=row[stopped_at],
            )
            for row in rows
        ]
        return sorted(views, key=lambda w: (not w.alive, w.name))

    def live_models(self) -> set[str]:
        """Models served by at least one worker that is alive."""
        return {m for w in self.workers() if w.alive for m in w.models}

    def destinations(self) -> list[DestinationView]:
        """Outbox backlog, last success and last error per destination."""
        open_states = ("PENDING", "DEAD", "REJECTED")
        # Read before the connection below: with SQLite every transaction takes the write
        # lock at BEGIN, so a second connection inside it would wait for the first.
        problems = Outbox(self.ledger).destination_problems()
        with self._engine.connect() as conn:
            counts: dict[tuple[str, str], int] = {
                (str(d), str(s)): int(n)
                for d, s, n in conn.execute(
                    select(outbox_table.c.destination, outbox_table.c.state, func.count())
                    .where(outbox_table.c.state.in_(open_states))
                    .group_by(outbox_table.c.destination, outbox_table.c.state)
                )
            }
            last_success = {
                str(d): float(at)
                for d, at in conn.execute(
                    select(outbox_table.c.destination, func.max(outbox_table.c.sent_at))
                    .where(outbox_table.c.state == "SENT")
                    .group_by(outbox_table.c.destination)
                )
                if at is not None
            }
            names = sorted(
                set(self.settings.destinations) | {d for d, _s in counts} | set(problems)
            )
            errors = {}
            for name in names:
                errors[name] = conn.execute(
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
        views = []
        for name in names:
            configured = self.settings.destinations.get(name)
            if isinstance(configured, DicomWebDestination):
                kind, address = "dicomweb", configured.url
            elif configured is not None:
                kind = "dimse"
                address = f"{configured.ae_title}@{configured.host}:{configured.port}"
            else:
                kind, address = "unknown", "(no longer configured)"
            error = errors.get(name)
            problem = problems.get(name)
            views.append(
                DestinationView(
                    name=name,
                    kind=kind,
                    address=address,
                    backlog=counts.get((name, "PENDING"), 0),
                    dead=counts.get((name, "DEAD"), 0),
                    rejected=counts.get((name, "REJECTED"), 0),
                    last_success_at=last_success.get(name),
                    last_error=error.last_error if error is not None else None,
                    last_error_at=error.updated_at if error is not None else None,
                    last_status=error.last_status if error is not None else None,
                    problem=problem.problem if problem is not None else None,
                    problem_since=problem.since if problem is not None else None,
                    next_attempt_at=problem.next_attempt_at if problem is not None else None,
                )
            )
        return views

    # -- history -------------------------------------------------------------------------

    def finished_since(self, since: float) -> list[Finished]:
        """Runs that ended DONE or FAILED since ``since``, with their turnaround."""
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
            for chunk in _chunks(done_ids, 500):
                received.update(
                    conn.execute(
                        select(jobs_table.c.job_id, jobs_table.c.input_received_at).where(
                            jobs_table.c.job_id.in_(chunk)
                        )
                    )
                    .tuples()
                    .all()
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

    # -- counters, audit, disk -----------------------------------------------------------

    def counters(self, names: Iterable[str]) -> dict[CounterKey, float]:
        with self._engine.connect() as conn:
            return {
                (str(name), str(labels)): float(value)
                for name, labels, value in conn.execute(
                    select(counters_table).where(counters_table.c.name.in_(list(names)))
                )
            }

    def audit(self, *, limit: int = 100, job_id: str | None = None) -> list[AuditEntry]:
        query = select(audit_table).order_by(audit_table.c.audit_id.desc()).limit(limit)
        if job_id is not None:
            query = query.where(audit_table.c.job_id == job_id)
        with self._engine.connect() as conn:
            return [
                AuditEntry(
                    at=row.at,
                    actor=row.actor,
                    role=row.role,
                    action=row.action,
                    job_id=row.job_id,
                    outcome=row.outcome,
                    detail=row.detail,
                    remote=row.remote,
                )
                for row in conn.execute(query)
            ]

    def disk(self) -> DiskReading:
        """The file system of the spool (or of the data directory, before the first
        instance), with the reserve below which the node refuses instances."""
        path = self.settings.spool_dir
        while not path.exists() and path != path.parent:
            path = path.parent
        usage = shutil.disk_usage(path)
        return DiskReading(
            path=str(path),
            total=usage.total,
            used=usage.used,
            free=usage.free,
            reserve=self.settings.node.min_free_disk_mb * 1024 * 1024,
        )


def _events_of(conn: Connection, job_ids: Sequence[str]) -> dict[str, list[JobEvent]]:
    events: dict[str, list[JobEvent]] = {}
    for chunk in _chunks(list(job_ids), 500):
        for row in conn.execute(
            select(job_events_table)
            .where(job_events_table.c.job_id.in_(chunk))
            .order_by(job_events_table.c.at, job_events_table.c.event_id)
        ):
            events.setdefault(row.job_id, []).append(
                JobEvent(
                    job_id=row.job_id,
                    state=JobState(row.state),
                    at=row.at,
                    reason=row.reason,
                    detail=json.loads(row.detail) if row.detail else {},
                    kind=row.kind,
                )
            )
    return events


def events_of(ledger: Ledger, job_ids: Sequence[str]) -> dict[str, list[JobEvent]]:
    """The events of many jobs in one query per 500 (ledger order)."""
    with ledger.engine.connect() as conn:
        return _events_of(conn, job_ids)


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _accession_in(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        dataset = dcmread(path, stop_before_pixels=True, specific_tags=["AccessionNumber"])
    except (OSError, ValueError, EOFError) as exc:
        # Removed by retention, or unreadable: the dashboard shows a dash.
        logger.debug("no accession number from %s: %s", path, exc)
        return None
    value = str(dataset.get("AccessionNumber", "") or "").strip()
    return value or None
