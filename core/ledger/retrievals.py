"""Studies pulled from a PACS: retrievals (``pacs-ai run --from``, backfills, runs started
on the dashboard), each study's progress, and what the completion watcher asks of them.

A retrieval finds studies (C-FIND or QIDO-RS) and records them here by Study Instance UID,
then pulls them one by one into the spool. Each study goes PENDING -> RETRIEVING ->
RETRIEVED (every instance in the spool and the ledger) -> ROUTED (the node's completion
watcher opened its series' jobs), or ends FAILED (with the reason) or EMPTY (no series
passed the filter). The watcher completes the series of a RETRIEVED study at once, holds
those of a RETRIEVING one (a partial series never runs), and opens jobs for the
retrieval's models instead of the routing rules when it names any (:meth:`claim`).

A retrieval is RUNNING only while its process (its ``runner``: :func:`runner_name`) renews
its lease (``heartbeat_at``). A process killed without a word leaves it RUNNING: whoever
looks next (a run or backfill starting, the node's retrieval service, the dashboard) finds
it stale, its lease older than ``stale_after`` or its process gone (:func:`runner_gone`),
and ends it with the reason (:meth:`RetrievalLedger.interrupt_stale_retrievals`): a
backfill or a dashboard run STOPPED, to be resumed; a ``pacs-ai run`` FAILED, as nothing
resumes it. A study's progress is written only while its retrieval's runner holds it
(:meth:`RetrievalLedger.set_retrieval_study` with ``runner``).

Writers lock a retrieval's row before its studies' rows (PostgreSQL), so that two of them
never wait on each other.

Nothing here names a patient: no Patient ID, name or accession number is stored. A
backfill's query is kept as far as it names none (a date range, modalities), so that it
can be resumed, and so is a key of its parameters, so that running it again resumes it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select, update
from sqlalchemy.engine import Row

from core.errors import PacsAiError
from core.jobs import JobState
from core.ledger.base import LedgerBase
from core.ledger.schema import (
    instances_table,
    jobs_table,
    retrieval_studies_table,
    retrievals_table,
    series_table,
)

#: The route name of the jobs a retrieval with models opens (``pacs-ai run``, the
#: dashboard's run), and of a backfill's: no configured route may take them
#: (:data:`core.routing_rules.PULL_ROUTE_NAMES`).
RUN_ROUTE = "run"
BACKFILL_ROUTE = "backfill"

#: A RUNNING retrieval whose runner has not renewed its lease this long is taken for
#: interrupted (the runner renews it every few seconds: ``node_services.retrieve``).
LEASE_SECONDS = 120.0

#: Job states in which a job has stopped running (for a retrieval's progress).
_SETTLED_JOBS = (
    JobState.DONE.value,
    JobState.FAILED.value,
    JobState.NEEDS_REVIEW.value,
    JobState.NOT_APPLICABLE.value,
)


class RetrievalState(StrEnum):
    #: Waiting for a process to run it (a dashboard run, for ``pacs-ai serve``).
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    #: Stopped before its end (Ctrl-C, SIGTERM, a lost process): running it again resumes.
    STOPPED = "STOPPED"
    #: Every study retrieved, found empty or failed.
    DONE = "DONE"
    #: It could not go on (the PACS refused the query, say): the reason says why.
    FAILED = "FAILED"


class StudyPull(StrEnum):
    """How far one study of a retrieval got."""

    PENDING = "PENDING"
    RETRIEVING = "RETRIEVING"
    RETRIEVED = "RETRIEVED"
    ROUTED = "ROUTED"
    FAILED = "FAILED"
    EMPTY = "EMPTY"


#: Study states a retrieval is finished with.
FINISHED_STUDIES = frozenset(
    {StudyPull.RETRIEVED, StudyPull.ROUTED, StudyPull.FAILED, StudyPull.EMPTY}
)


_PID_NAMESPACE = "pidns-"


def _pid_namespace() -> str | None:
    """This process's PID namespace (its inode), ``None`` where it cannot be known."""
    try:
        return f"{_PID_NAMESPACE}{Path('/proc/self/ns/pid').stat().st_ino}"
    except OSError:
        return None


def runner_name(pid: int | None = None) -> str:
    """This process (or process ``pid`` of its PID namespace), as a retrieval's runner:
    ``host:pidns-INODE:pid``, or ``host:pid`` where the PID namespace cannot be known.

    Containers with host networking share the host name, not the process ids: the PID
    namespace tells whether a pid can be looked up here (:func:`runner_gone`).
    """
    namespace = _pid_namespace()
    where = f"{socket.gethostname()}:{namespace}" if namespace else socket.gethostname()
    return f"{where}:{os.getpid() if pid is None else pid}"


def runner_gone(runner: str | None) -> bool:
    """Whether ``runner`` names a process of this host and PID namespace that no longer
    exists.

    Only such processes can be looked at. One of another host, or of another PID
    namespace (a container with host networking has the host's name), is never "gone"
    here: its lease tells. Nor is one whose namespace is not known (``host:pid``, from
    before runners named it, or from a system without ``/proc``): the lease tells,
    within :data:`LEASE_SECONDS`. A pid taken again by another process reads as alive:
    the lease then decides, later.
    """
    where, _, pid = (runner or "").rpartition(":")
    host, _, namespace = where.rpartition(":")
    here = _pid_namespace()
    if here is None or (host, namespace) != (socket.gethostname(), here) or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # another user's process
    return False


def _lost_runner(
    runner: str | None, heartbeat_at: float | None, *, now: float, stale_after: float
) -> str | None:
    """Why the process of a RUNNING retrieval no longer runs it; ``None``: it may."""
    if runner_gone(runner):
        return f"its process {runner} ended without finishing it"
    silent = now - (heartbeat_at or 0.0)
    if silent > stale_after:
        return (
            f"its process {runner or '(unknown)'} stopped renewing its lease "
            f"{silent:.0f} s ago (at most {stale_after:.0f} s allowed)"
        )
    return None


class UnknownRetrievalError(PacsAiError):
    """No retrieval with this id (or start of an id) exists in the ledger."""


class RetrievalBusyError(PacsAiError):
    """Another process is running this retrieval now."""


@dataclass(frozen=True, slots=True)
class RetrievalRecord:
    retrieval_id: str
    kind: str
    source: str
    models: tuple[str, ...]
    destinations: tuple[str, ...]
    shadow: bool
    query: dict[str, Any]
    key: str | None
    state: RetrievalState
    reason: str | None
    studies_per_minute: float | None
    window: str | None
    actor: str
    runner: str | None
    heartbeat_at: float | None
    created_at: float
    updated_at: float
    finished_at: float | None

    @property
    def route_name(self) -> str:
        """The route of the jobs its models get (``run`` or ``backfill``)."""
        return BACKFILL_ROUTE if self.kind == "backfill" else RUN_ROUTE


@dataclass(frozen=True, slots=True)
class RetrievalStudy:
    retrieval_id: str
    study_uid: str
    position: int
    state: StudyPull
    reason: str | None
    series_count: int
    instance_count: int
    started_at: float | None
    retrieved_at: float | None
    updated_at: float
    #: How many times its pull has FAILED (stopped or interrupted pulls do not count).
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class RetrievalProgress:
    """Where a retrieval stands: its studies by state, and how many are processed."""

    total: int
    by_state: dict[StudyPull, int] = field(default_factory=dict)
    #: ROUTED studies whose every job has stopped running (DONE, FAILED, held, not
    #: applicable), or that got no job: nothing more will happen to them.
    processed: int = 0
    #: Jobs of its studies that ended FAILED.
    failed_jobs: int = 0

    @property
    def retrieved(self) -> int:
        """Studies in the spool (routed or not yet), failed or empty: the pulling is done."""
        return sum(self.by_state.get(s, 0) for s in FINISHED_STUDIES)

    @property
    def pending(self) -> int:
        return self.total - self.retrieved


class RetrievalLedger(LedgerBase):
    """Retrievals and their studies."""

    def create_retrieval(
        self,
        *,
        kind: str,
        source: str,
        models: Sequence[str],
        destinations: Sequence[str],
        shadow: bool,
        query: dict[str, Any],
        actor: str,
        key: str | None = None,
        studies_per_minute: float | None = None,
        window: str | None = None,
        state: RetrievalState = RetrievalState.QUEUED,
        runner: str | None = None,
    ) -> RetrievalRecord:
        now = time.time()
        retrieval_id = uuid.uuid4().hex
        with self._engine.begin() as conn:
            conn.execute(
                insert(retrievals_table).values(
                    retrieval_id=retrieval_id,
                    kind=kind,
                    source=source,
                    models=json.dumps(list(models)),
                    destinations=json.dumps(list(destinations)),
                    shadow=int(shadow),
                    query=json.dumps(query, sort_keys=True),
                    key=key,
                    state=state.value,
                    studies_per_minute=studies_per_minute,
                    window=window,
                    actor=actor,
                    runner=runner,
                    heartbeat_at=now if runner else None,
                    created_at=now,
                    updated_at=now,
                )
            )
        return self.get_retrieval(retrieval_id)

    def add_retrieval_studies(self, retrieval_id: str, study_uids: Sequence[str]) -> int:
        """Add studies (PENDING) after those it has, in order; known ones are skipped."""
        now = time.time()
        with self._engine.begin() as conn:
            known = set(
                conn.execute(
                    select(retrieval_studies_table.c.study_uid).where(
                        retrieval_studies_table.c.retrieval_id == retrieval_id
                    )
                ).scalars()
            )
            start = len(known)
            rows = [
                {
                    "retrieval_id": retrieval_id,
                    "study_uid": uid,
                    "position": start + index,
                    "state": StudyPull.PENDING.value,
                    "series_count": 0,
                    "instance_count": 0,
                    "updated_at": now,
                }
                for index, uid in enumerate(dict.fromkeys(u for u in study_uids if u not in known))
            ]
            if rows:
                conn.execute(insert(retrieval_studies_table), rows)
        return len(rows)

    def get_retrieval(self, retrieval_id: str) -> RetrievalRecord:
        """Raises :class:`UnknownRetrievalError` when there is none."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(retrievals_table).where(retrievals_table.c.retrieval_id == retrieval_id)
            ).first()
        if row is None:
            raise UnknownRetrievalError(f"no retrieval {retrieval_id} in the ledger")
        return _retrieval(row)

    def resolve_retrieval_id(self, text: str) -> str:
        """The full id of the retrieval ``text`` names (its id, or a unique start of it).

        Raises:
            UnknownRetrievalError: none, or several, start with it.
        """
        wanted = text.strip().lower()
        with self._engine.connect() as conn:
            found = list(
                conn.execute(
                    select(retrievals_table.c.retrieval_id)
                    .where(retrievals_table.c.retrieval_id.startswith(wanted, autoescape=True))
                    .limit(3)
                ).scalars()
            )
        if wanted in found:
            return wanted
        if len(found) != 1 or not wanted:
            what = "several retrievals" if found else "no retrieval"
            raise UnknownRetrievalError(f"{what} with an id starting {wanted!r}")
        return str(found[0])

    def retrievals(
        self,
        *,
        kinds: Iterable[str] | None = None,
        states: Iterable[RetrievalState] | None = None,
        key: str | None = None,
        limit: int = 50,
    ) -> list[RetrievalRecord]:
        """Retrievals, the most recently changed first."""
        query = select(retrievals_table).order_by(retrievals_table.c.updated_at.desc())
        if kinds is not None:
            query = query.where(retrievals_table.c.kind.in_(list(kinds)))
        if states is not None:
            query = query.where(retrievals_table.c.state.in_([s.value for s in states]))
        if key is not None:
            query = query.where(retrievals_table.c.key == key)
        with self._engine.connect() as conn:
            rows = conn.execute(query.limit(limit)).all()
        return [_retrieval(row) for row in rows]

    def claim_retrieval(
        self,
        retrieval_id: str,
        runner: str,
        *,
        stale_after: float,
        max_attempts: int = 1,
    ) -> RetrievalRecord:
        """Make ``runner`` the process running the retrieval (RUNNING), in one transaction:
        one QUEUED, STOPPED or FAILED, or RUNNING with a runner that is gone (silent for
        ``stale_after`` seconds, or :func:`runner_gone`). A DONE one runs again (studies
        left PENDING only).

        Its FAILED studies that failed fewer than ``max_attempts`` times are PENDING
        again (their reason kept until the next attempt ends); the others stay FAILED.

        Raises:
            UnknownRetrievalError: no such retrieval.
            RetrievalBusyError: another live process runs it.
        """
        now = time.time()
        with self._engine.begin() as conn:
            # Locked (PostgreSQL; SQLite's BEGIN IMMEDIATE already is): two processes
            # claiming together cannot both see it free.
            row = conn.execute(
                select(retrievals_table)
                .where(retrievals_table.c.retrieval_id == retrieval_id)
                .with_for_update()
            ).first()
            if row is None:
                raise UnknownRetrievalError(f"no retrieval {retrieval_id} in the ledger")
            lost = _lost_runner(row.runner, row.heartbeat_at, now=now, stale_after=stale_after)
            if row.state == RetrievalState.RUNNING.value and row.runner != runner and not lost:
                raise RetrievalBusyError(
                    f"retrieval {retrieval_id[:8]} is being run by {row.runner} (seen "
                    f"{now - (row.heartbeat_at or now):.0f} s ago)"
                )
            conn.execute(
                update(retrievals_table)
                .where(retrievals_table.c.retrieval_id == retrieval_id)
                .values(
                    state=RetrievalState.RUNNING.value,
                    reason=None,
                    runner=runner,
                    heartbeat_at=now,
                    updated_at=now,
                    finished_at=None,
                )
            )
            # What a process that died was pulling starts again from its beginning.
            conn.execute(
                update(retrieval_studies_table)
                .where(retrieval_studies_table.c.retrieval_id == retrieval_id)
                .where(retrieval_studies_table.c.state == StudyPull.RETRIEVING.value)
                .values(state=StudyPull.PENDING.value, updated_at=now)
            )
            # Failed studies get another attempt, up to the bound.
            conn.execute(
                update(retrieval_studies_table)
                .where(retrieval_studies_table.c.retrieval_id == retrieval_id)
                .where(retrieval_studies_table.c.state == StudyPull.FAILED.value)
                .where(retrieval_studies_table.c.attempts < max_attempts)
                .values(state=StudyPull.PENDING.value, updated_at=now)
            )
        return self.get_retrieval(retrieval_id)

    def interrupt_stale_retrievals(
        self, *, stale_after: float, now: float | None = None
    ) -> list[RetrievalRecord]:
        """End the RUNNING retrievals whose process is gone (see :meth:`claim_retrieval`),
        with the reason: a ``run`` FAILED (nothing resumes it), a backfill or a dashboard
        run STOPPED (running it again resumes it). What they were pulling is PENDING again.
        Returns them as they ended.

        Nothing is locked to look (the dashboard and ``pacs-ai status`` call this on each
        refresh); each stale one is then ended in a transaction of its own, retrieval
        row first, only if its runner is still the one seen and has not renewed its
        lease since.
        """
        now = time.time() if now is None else now
        ended: list[str] = []
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(
                    retrievals_table.c.retrieval_id,
                    retrievals_table.c.kind,
                    retrievals_table.c.runner,
                    retrievals_table.c.heartbeat_at,
                )
                .where(retrievals_table.c.state == RetrievalState.RUNNING.value)
                .order_by(retrievals_table.c.retrieval_id)
            ).all()
        for row in rows:
            why = _lost_runner(row.runner, row.heartbeat_at, now=now, stale_after=stale_after)
            if why is None:
                continue
            resumable = row.kind != RUN_ROUTE
            state = RetrievalState.STOPPED if resumable else RetrievalState.FAILED
            then = "; run again to resume" if resumable else "; a new run pulls it again"
            seen = retrievals_table.c
            with self._engine.begin() as conn:
                taken = conn.execute(
                    update(retrievals_table)
                    .where(seen.retrieval_id == row.retrieval_id)
                    .where(seen.state == RetrievalState.RUNNING.value)
                    .where(
                        seen.runner.is_(None) if row.runner is None else seen.runner == row.runner
                    )
                    .where(
                        seen.heartbeat_at.is_(None)
                        if row.heartbeat_at is None
                        else seen.heartbeat_at <= row.heartbeat_at
                    )
                    .values(
                        state=state.value,
                        reason=f"interrupted: {why}{then}",
                        runner=None,
                        updated_at=now,
                        finished_at=None if resumable else now,
                    )
                ).rowcount
                if not taken:
                    continue  # renewed, ended or taken meanwhile
                conn.execute(
                    update(retrieval_studies_table)
                    .where(retrieval_studies_table.c.retrieval_id == row.retrieval_id)
                    .where(retrieval_studies_table.c.state == StudyPull.RETRIEVING.value)
                    .values(
                        state=StudyPull.PENDING.value,
                        reason="interrupted while being pulled",
                        updated_at=now,
                    )
                )
            ended.append(row.retrieval_id)
        return [self.get_retrieval(retrieval_id) for retrieval_id in ended]

    def retrieval_heartbeat(self, retrieval_id: str, runner: str) -> bool:
        """Renew ``runner``'s lease on the retrieval; False when it no longer holds it
        (another process found it stale and ended or took it)."""
        now = time.time()
        with self._engine.begin() as conn:
            renewed = conn.execute(
                update(retrievals_table)
                .where(retrievals_table.c.retrieval_id == retrieval_id)
                .where(retrievals_table.c.runner == runner)
                .where(retrievals_table.c.state == RetrievalState.RUNNING.value)
                .values(heartbeat_at=now)
            ).rowcount
        return bool(renewed)

    def finish_retrieval(
        self,
        retrieval_id: str,
        state: RetrievalState,
        reason: str | None = None,
        *,
        runner: str | None = None,
    ) -> bool:
        """End a run of the retrieval: DONE, STOPPED (resumable) or FAILED. With
        ``runner``, only while that process holds it; False when it did not."""
        now = time.time()
        with self._engine.begin() as conn:
            held = update(retrievals_table).where(retrievals_table.c.retrieval_id == retrieval_id)
            if runner is not None:
                held = held.where(retrievals_table.c.runner == runner)
            ended = conn.execute(
                held.values(
                    state=state.value,
                    reason=reason,
                    runner=None,
                    updated_at=now,
                    finished_at=now if state != RetrievalState.STOPPED else None,
                )
            ).rowcount
            if not ended:
                return False
            if state != RetrievalState.DONE:
                # A study stopped mid-pull is pulled again from its beginning on resume.
                conn.execute(
                    update(retrieval_studies_table)
                    .where(retrieval_studies_table.c.retrieval_id == retrieval_id)
                    .where(retrieval_studies_table.c.state == StudyPull.RETRIEVING.value)
                    .values(state=StudyPull.PENDING.value, updated_at=now)
                )
        return True

    def retrieval_studies(
        self, retrieval_id: str, *, states: Iterable[StudyPull] | None = None
    ) -> list[RetrievalStudy]:
        query = (
            select(retrieval_studies_table)
            .where(retrieval_studies_table.c.retrieval_id == retrieval_id)
            .order_by(retrieval_studies_table.c.position)
        )
        if states is not None:
            query = query.where(retrieval_studies_table.c.state.in_([s.value for s in states]))
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_study(row) for row in rows]

    def set_retrieval_study(
        self,
        retrieval_id: str,
        study_uid: str,
        state: StudyPull,
        *,
        reason: str | None = None,
        series_count: int | None = None,
        instance_count: int | None = None,
        runner: str | None = None,
    ) -> bool:
        """Record how far a study got. FAILED counts a failure more (``attempts``); a
        study starting again (RETRIEVING) keeps the reason of its last failure until
        this pull ends.

        With ``runner``, only while that process runs the retrieval (RUNNING): False,
        and nothing written, when it no longer does (another process took it over).
        """
        now = time.time()
        values: dict[str, Any] = {"state": state.value, "updated_at": now}
        if state == StudyPull.RETRIEVING:
            values["started_at"] = now
        else:
            values["reason"] = reason
        if state == StudyPull.FAILED:
            values["attempts"] = retrieval_studies_table.c.attempts + 1
        if state == StudyPull.RETRIEVED:
            values["retrieved_at"] = now
        if series_count is not None:
            values["series_count"] = series_count
        if instance_count is not None:
            values["instance_count"] = instance_count
        with self._engine.begin() as conn:
            # The retrieval's row first (locked until the end), as every writer does.
            touched = update(retrievals_table).where(
                retrievals_table.c.retrieval_id == retrieval_id
            )
            if runner is not None:
                touched = touched.where(retrievals_table.c.runner == runner).where(
                    retrievals_table.c.state == RetrievalState.RUNNING.value
                )
            if not conn.execute(touched.values(updated_at=now)).rowcount and runner is not None:
                return False
            conn.execute(
                update(retrieval_studies_table)
                .where(retrieval_studies_table.c.retrieval_id == retrieval_id)
                .where(retrieval_studies_table.c.study_uid == study_uid)
                .values(**values)
            )
        return True

    # -- for the completion watcher ---------------------------------------------------

    def studies_in_retrieval(self) -> tuple[frozenset[str], frozenset[str]]:
        """(studies being pulled now, studies pulled whose series are to complete now)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(retrieval_studies_table.c.study_uid, retrieval_studies_table.c.state)
                .where(
                    retrieval_studies_table.c.state.in_(
                        [StudyPull.RETRIEVING.value, StudyPull.RETRIEVED.value]
                    )
                )
                .distinct()
            ).all()
        retrieving = frozenset(r.study_uid for r in rows if r.state == StudyPull.RETRIEVING.value)
        retrieved = frozenset(r.study_uid for r in rows if r.state == StudyPull.RETRIEVED.value)
        return retrieving, retrieved

    def retrieval_claim(self, study_uid: str) -> RetrievalRecord | None:
        """The retrieval that pulled (or is pulling) ``study_uid`` and has not yet had it
        routed: its models decide the study's jobs. ``None``: a sender's study."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(retrievals_table)
                .join(
                    retrieval_studies_table,
                    retrieval_studies_table.c.retrieval_id == retrievals_table.c.retrieval_id,
                )
                .where(retrieval_studies_table.c.study_uid == study_uid)
                .where(
                    retrieval_studies_table.c.state.in_(
                        [StudyPull.RETRIEVING.value, StudyPull.RETRIEVED.value]
                    )
                )
                .order_by(retrieval_studies_table.c.updated_at.desc())
                .limit(1)
            ).first()
        return None if row is None else _retrieval(row)

    def retrieval_study_routed(self, study_uid: str) -> None:
        """Every series of the pulled study has been routed (its jobs exist)."""
        now = time.time()
        with self._engine.begin() as conn:
            conn.execute(
                update(retrieval_studies_table)
                .where(retrieval_studies_table.c.study_uid == study_uid)
                .where(retrieval_studies_table.c.state == StudyPull.RETRIEVED.value)
                .values(state=StudyPull.ROUTED.value, updated_at=now)
            )

    def instances_received_since(self, series_uid: str, since: float) -> int:
        """Instances of the series recorded as received at or after ``since`` (what a
        C-MOVE has brought to the node so far)."""
        with self._engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(instances_table)
                    .where(instances_table.c.series_uid == series_uid)
                    .where(instances_table.c.received_at >= since)
                ).scalar_one()
            )

    # -- progress --------------------------------------------------------------------

    def retrieval_progress(self, retrieval_id: str) -> RetrievalProgress:
        """Studies by state, and how many ROUTED ones are processed (see the record)."""
        studies = retrieval_studies_table
        with self._engine.connect() as conn:
            by_state = {
                StudyPull(state): int(count)
                for state, count in conn.execute(
                    select(studies.c.state, func.count())
                    .where(studies.c.retrieval_id == retrieval_id)
                    .group_by(studies.c.state)
                )
            }
            # Jobs of each routed study (through its series) changed since it was pulled.
            settled = case((jobs_table.c.state.in_(_SETTLED_JOBS), 1), else_=0)
            failed = case((jobs_table.c.state == JobState.FAILED.value, 1), else_=0)
            per_study = conn.execute(
                select(
                    studies.c.study_uid,
                    func.count(jobs_table.c.job_id),
                    func.coalesce(func.sum(settled), 0),
                    func.coalesce(func.sum(failed), 0),
                )
                .select_from(
                    studies.outerjoin(
                        series_table, series_table.c.study_uid == studies.c.study_uid
                    ).outerjoin(
                        jobs_table,
                        and_(
                            jobs_table.c.series_uid == series_table.c.series_uid,
                            or_(
                                studies.c.retrieved_at.is_(None),
                                jobs_table.c.updated_at >= studies.c.retrieved_at,
                            ),
                        ),
                    )
                )
                .where(studies.c.retrieval_id == retrieval_id)
                .where(studies.c.state == StudyPull.ROUTED.value)
                .group_by(studies.c.study_uid)
            ).all()
        processed = sum(1 for _uid, jobs, done, _failed in per_study if done == jobs)
        return RetrievalProgress(
            total=sum(by_state.values()),
            by_state=by_state,
            processed=processed,
            failed_jobs=sum(int(row[3]) for row in per_study),
        )


def _retrieval(row: Row[Any]) -> RetrievalRecord:
    return RetrievalRecord(
        retrieval_id=row.retrieval_id,
        kind=row.kind,
        source=row.source,
        models=tuple(json.loads(row.models)),
        destinations=tuple(json.loads(row.destinations)),
        shadow=bool(row.shadow),
        query=json.loads(row.query),
        key=row.key,
        state=RetrievalState(row.state),
        reason=row.reason,
        studies_per_minute=row.studies_per_minute,
        window=row.window,
        actor=row.actor,
        runner=row.runner,
        heartbeat_at=row.heartbeat_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


def _study(row: Row[Any]) -> RetrievalStudy:
    return RetrievalStudy(
        retrieval_id=row.retrieval_id,
        study_uid=row.study_uid,
        position=row.position,
        state=StudyPull(row.state),
        reason=row.reason,
        series_count=row.series_count,
        instance_count=row.instance_count,
        started_at=row.started_at,
        retrieved_at=row.retrieved_at,
        updated_at=row.updated_at,
        attempts=row.attempts,
    )
