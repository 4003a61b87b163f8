"""What the dashboard, ``pacs-ai status`` and the JSON API show, read from the ledger and
the broker.

The ledger is the source of truth shared by the node, its receiving processes and the
workers, so every process (and ``pacs-ai status`` on another machine) sees the same; its
read models (jobs as shown, workers, the outbox per destination, finished runs:
:mod:`core.ledger.read_models`, :mod:`core.ledger.activity`) are the ledger's own. Queue
depths come from the broker (:class:`core.queue.BrokerInspector`); what a destination is
and where it lies, from the settings; accession numbers, from the spool's files.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields

from pydicom import dcmread

from core.errors import TransientError
from core.ledger import (
    AuditEntry,
    CounterKey,
    DestinationActivity,
    DriftReading,
    Finished,
    JobDetail,
    JobView,
    Ledger,
    Outbox,
    WorkerView,
)
from core.messages import model_queue
from core.queue import BrokerInspector
from core.settings import DicomWebDestination, Settings

logger = logging.getLogger(__name__)

_QUEUE_PREFIX = model_queue("")


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
class DestinationView(DestinationActivity):
    """A destination's outbox (from the ledger), what it is and where (from the settings)."""

    #: ``dimse``, ``dicomweb``, or ``unknown`` (items for a destination no longer configured).
    kind: str = "unknown"
    address: str = ""
    #: It rejects our association permanently (a configuration error): what to fix, since
    #: when, and when it is tried again; ``None`` when it is not misconfigured.
    problem: str | None = None
    problem_since: float | None = None
    next_attempt_at: float | None = None

    @property
    def misconfigured(self) -> bool:
        return self.problem is not None


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
        self._clock = clock
        self._accessions = _Accessions()

    def now(self) -> float:
        return float(self._clock())

    # -- jobs --------------------------------------------------------------------------

    def jobs(self, *, limit: int = 50, states: Iterable[str] | None = None) -> list[JobView]:
        """The most recently changed jobs (newest first), optionally only in ``states``
        (display states: DISCARDED included)."""
        return self.ledger.job_views(limit=limit, states=states)

    def job(self, job_id: str) -> JobDetail | None:
        """One job with its events, outbox items and quarantine records; None if unknown."""
        return self.ledger.job_detail(job_id)

    def job_counts(self) -> dict[tuple[str, str], int]:
        """Jobs per (display state, model)."""
        return self.ledger.job_counts()

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
        paths = self.ledger.first_instance_paths(missing)
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
        waiting = self.ledger.waiting_jobs()
        routed = {m for route in self.settings.routes for m in route.models}
        if self.inspector is None:
            return QueuesReading([], {}, waiting, error="no broker configured for the monitor")
        try:
            depths = self.inspector.queue_depths()
            unacked = self.inspector.unacked_by_queue()
        except TransientError as exc:
            return QueuesReading([], {}, waiting, error=str(exc))
        oldest_ids = [d.oldest_job_id for d in depths if d.oldest_job_id]
        queued_at = self.ledger.jobs_updated_at(oldest_ids) if oldest_ids else {}
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
        return self.ledger.worker_views(
            now=self.now(), lost_after=self.settings.worker.lost_after_seconds
        )

    def live_models(self) -> set[str]:
        """Models served by at least one worker that is alive."""
        return {m for w in self.workers() if w.alive for m in w.models}

    def destinations(self) -> list[DestinationView]:
        """Outbox backlog, last success and last error per destination."""
        # Read before the outbox below: with SQLite every transaction takes the write lock
        # at BEGIN, so a second connection inside one would wait for the first.
        problems = Outbox(self.ledger).destination_problems()
        activity = {
            a.name: a
            for a in self.ledger.destination_activity(
                set(self.settings.destinations) | set(problems)
            )
        }
        views = []
        for name, seen in activity.items():
            configured = self.settings.destinations.get(name)
            if isinstance(configured, DicomWebDestination):
                kind, address = "dicomweb", configured.url
            elif configured is not None:
                kind = "dimse"
                address = f"{configured.ae_title}@{configured.host}:{configured.port}"
            else:
                kind, address = "unknown", "(no longer configured)"
            problem = problems.get(name)
            views.append(
                DestinationView(
                    **{f.name: getattr(seen, f.name) for f in fields(seen)},
                    kind=kind,
                    address=address,
                    problem=problem.problem if problem is not None else None,
                    problem_since=problem.since if problem is not None else None,
                    next_attempt_at=problem.next_attempt_at if problem is not None else None,
                )
            )
        return views

    # -- history -------------------------------------------------------------------------

    def finished_since(self, since: float) -> list[Finished]:
        """Runs that ended DONE or FAILED since ``since``, with their turnaround."""
        return self.ledger.finished_since(since)

    def model_drift(self, *, weeks: int) -> DriftReading:
        """Each model's results week by week, the last ``weeks`` ISO weeks
        (:mod:`core.ledger.drift`)."""
        return self.ledger.model_drift(now=self.now(), weeks=weeks)

    # -- counters, audit, disk -----------------------------------------------------------

    def counters(self, names: Iterable[str]) -> dict[CounterKey, float]:
        return self.ledger.counters(names)

    def audit(self, *, limit: int = 100, job_id: str | None = None) -> list[AuditEntry]:
        return self.ledger.audit_entries(limit=limit, job_id=job_id)

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
