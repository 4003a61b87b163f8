"""Jobs: opening them for a completed series, the state machine, notes and history."""

from __future__ import annotations

import copy
import functools
import json
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from core.jobs import (
    ALLOWED_TRANSITIONS,
    JobEvent,
    JobRecord,
    JobState,
    SeriesRecord,
)
from core.ledger.base import LedgerBase
from core.ledger.counters import add_to_counters, job_moved
from core.ledger.records import (
    _JOB_ID_PREFIX,
    MIN_JOB_ID_PREFIX,
    AmbiguousJobIdError,
    InvalidTransitionError,
    UnknownJobError,
)
from core.ledger.rows import _job_event, _job_record
from core.ledger.schema import (
    job_events_table,
    jobs_table,
    series_table,
)

#: States in which a job has stopped running: instances arriving later re-run it now (a
#: result held for review, NEEDS_REVIEW, included: it was made without them).
_SETTLED = frozenset(
    {JobState.DONE, JobState.FAILED, JobState.NEEDS_REVIEW, JobState.NOT_APPLICABLE}
)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _again_on_race(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``method`` once more when its insert meets the job another node inserted
    between its look and its insert (two nodes routing the same series): the unique
    (series, route, model) constraint refuses the second job, and the second look finds
    the first."""

    @functools.wraps(method)
    def again(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except IntegrityError:
            return method(*args, **kwargs)

    return again


class JobLedger(LedgerBase):
    """Jobs and their events."""

    @_again_on_race
    def open_job(
        self,
        series: SeriesRecord,
        *,
        route: str,
        model_id: str,
        destinations: Sequence[str],
        priority: int,
        reason: str | None = None,
        shadow: bool = False,
    ) -> JobRecord:
        """Create the job for (series, route, model) in READY, or make the existing one READY.

        A new job gets a RECEIVING event at the series' first arrival and a READY event now.
        An existing job whose series received instances since it was opened is re-run
        (the late-instance policy): a finished job goes back to READY now; a job in flight
        is marked to run again as soon as it ends. Because result UIDs are derived from the
        job's inputs, the new results replace the old ones in the PACS. A finished job whose
        series has nothing new is left alone. ``shadow``: its results are kept, never
        delivered (a shadow route); a re-run takes the route's current setting.
        """
        now = time.time()
        with self._engine.begin() as conn:
            # Locked until commit (PostgreSQL), as in transition(): the state it changes
            # is the one it read (and so are the gauges, core.ledger.counters).
            row = conn.execute(
                select(jobs_table)
                .where(jobs_table.c.series_uid == series.series_instance_uid)
                .where(jobs_table.c.route == route)
                .where(jobs_table.c.model_id == model_id)
                .with_for_update()
            ).first()
            if row is None:
                job_id = uuid.uuid4().hex
                conn.execute(
                    insert(jobs_table).values(
                        job_id=job_id,
                        series_uid=series.series_instance_uid,
                        study_uid=series.study_instance_uid,
                        route=route,
                        model_id=model_id,
                        destinations=json.dumps(list(destinations)),
                        priority=priority,
                        state=JobState.READY.value,
                        attempts=0,
                        created_at=now,
                        updated_at=now,
                        rerun_pending=0,
                        input_received_at=series.last_received_at,
                        shadow=int(shadow),
                    )
                )
                _add_event(conn, job_id, JobState.RECEIVING, at=series.run_started_at)
                _add_event(conn, job_id, JobState.READY, at=now, reason=reason)
                add_to_counters(conn, job_moved(model_id, None, JobState.READY))
            else:
                job_id = row.job_id
                current = JobState(row.state)
                nothing_new = series.last_received_at <= row.input_received_at
                if nothing_new:
                    # Completed again without new data (a study re-checked, say): the job
                    # already covers every instance, whatever its state. A FAILED job is
                    # retried by an operator, not by a loop.
                    pass
                elif current == JobState.READY:
                    conn.execute(
                        update(jobs_table)
                        .where(jobs_table.c.job_id == job_id)
                        .values(
                            input_received_at=series.last_received_at,
                            updated_at=now,
                            shadow=int(shadow),
                        )
                    )
                elif current not in _SETTLED:
                    # In flight: it may have read the series before the late instances came,
                    # so it runs again when it ends (see transition()).
                    conn.execute(
                        update(jobs_table)
                        .where(jobs_table.c.job_id == job_id)
                        .values(rerun_pending=1, updated_at=now)
                    )
                    _add_event(
                        conn,
                        job_id,
                        current,
                        at=now,
                        reason="instances arrived while the job was in flight; it will run again",
                        kind="note",
                    )
                else:
                    conn.execute(
                        update(jobs_table)
                        .where(jobs_table.c.job_id == job_id)
                        .values(
                            state=JobState.READY.value,
                            reason=None,
                            attempts=0,
                            destinations=json.dumps(list(destinations)),
                            priority=priority,
                            updated_at=now,
                            rerun_pending=0,
                            input_received_at=series.last_received_at,
                            shadow=int(shadow),
                        )
                    )
                    # The new run's receive stage starts with its own first instance (when
                    # a new sending run began after what the last run covered).
                    if series.run_started_at > row.input_received_at:
                        _add_event(conn, job_id, JobState.RECEIVING, at=series.run_started_at)
                    _add_event(
                        conn,
                        job_id,
                        JobState.READY,
                        at=now,
                        reason=reason or "series received again",
                    )
                    add_to_counters(conn, job_moved(model_id, current, JobState.READY))
        return self.get_job(job_id)

    @_again_on_race
    def record_not_applicable(
        self,
        series: SeriesRecord,
        *,
        route: str,
        model_id: str,
        destinations: Sequence[str],
        priority: int,
        reason: str,
        shadow: bool = False,
    ) -> JobRecord:
        """Record that the route's model cannot accept the series (decided from its
        headers): the job for (series, route, model) in NOT_APPLICABLE with ``reason``.
        It is never queued; it is listed, counted and shown like any job.

        A new job gets a RECEIVING event at the series' first arrival and a
        NOT_APPLICABLE event now. An existing job is left alone when nothing new arrived
        since it was opened; one in flight runs again when it ends (its worker then
        refuses the series for the same reason); any other becomes NOT_APPLICABLE now.
        """
        now = time.time()
        with self._engine.begin() as conn:
            # Locked until commit (PostgreSQL), as in transition(): the state it changes
            # is the one it read (and so are the gauges, core.ledger.counters).
            row = conn.execute(
                select(jobs_table)
                .where(jobs_table.c.series_uid == series.series_instance_uid)
                .where(jobs_table.c.route == route)
                .where(jobs_table.c.model_id == model_id)
                .with_for_update()
            ).first()
            if row is None:
                job_id = uuid.uuid4().hex
                conn.execute(
                    insert(jobs_table).values(
                        job_id=job_id,
                        series_uid=series.series_instance_uid,
                        study_uid=series.study_instance_uid,
                        route=route,
                        model_id=model_id,
                        destinations=json.dumps(list(destinations)),
                        priority=priority,
                        state=JobState.NOT_APPLICABLE.value,
                        reason=reason,
                        attempts=0,
                        created_at=now,
                        updated_at=now,
                        rerun_pending=0,
                        input_received_at=series.last_received_at,
                        shadow=int(shadow),
                    )
                )
                _add_event(conn, job_id, JobState.RECEIVING, at=series.run_started_at)
                _add_event(conn, job_id, JobState.NOT_APPLICABLE, at=now, reason=reason)
                add_to_counters(conn, job_moved(model_id, None, JobState.NOT_APPLICABLE))
                return self._job_in(conn, job_id)
            job_id = row.job_id
            current = JobState(row.state)
            if series.last_received_at <= row.input_received_at:
                pass
            elif current not in _SETTLED and current != JobState.READY:
                conn.execute(
                    update(jobs_table)
                    .where(jobs_table.c.job_id == job_id)
                    .values(rerun_pending=1, updated_at=now)
                )
                _add_event(
                    conn,
                    job_id,
                    current,
                    at=now,
                    reason="instances arrived while the job was in flight; it will run again",
                    kind="note",
                )
            else:
                conn.execute(
                    update(jobs_table)
                    .where(jobs_table.c.job_id == job_id)
                    .values(
                        state=JobState.NOT_APPLICABLE.value,
                        reason=reason,
                        attempts=0,
                        destinations=json.dumps(list(destinations)),
                        priority=priority,
                        updated_at=now,
                        rerun_pending=0,
                        input_received_at=series.last_received_at,
                        shadow=int(shadow),
                    )
                )
                # Already NOT_APPLICABLE: the new instances did not change that (a note).
                kind = "note" if current == JobState.NOT_APPLICABLE else "transition"
                _add_event(conn, job_id, JobState.NOT_APPLICABLE, at=now, reason=reason, kind=kind)
                add_to_counters(conn, job_moved(model_id, current, JobState.NOT_APPLICABLE))
            return self._job_in(conn, job_id)

    @staticmethod
    def _job_in(conn: Connection, job_id: str) -> JobRecord:
        row = conn.execute(select(jobs_table).where(jobs_table.c.job_id == job_id)).one()
        return _job_record(row)

    def transition(
        self,
        job_id: str,
        state: JobState,
        *,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
        count_attempt: bool = False,
        reset_attempts: bool = False,
        refund_attempt: bool = False,
        expected: Collection[JobState] | None = None,
        event_reason: str | None = None,
    ) -> JobRecord:
        """Move a job to ``state`` and record the event.

        ``expected``: the states the caller believes the job is in (checked in the same
        transaction, so an operator's action cannot race a worker). ``reset_attempts``
        starts the attempt count again (an operator's retry). ``event_reason`` is recorded
        with the event instead of ``reason``, which stays the job's own (why it is FAILED,
        say): "retried by ops" explains the event, not the job's state. ``refund_attempt``
        gives back the attempt counted when the job started running: it waited for
        something outside it (a node that holds its instances) and is not to fail for that.

        Raises:
            UnknownJobError: no such job.
            InvalidTransitionError: the current state does not lead to ``state``, or is not
                one of ``expected``.
        """
        now = time.time()
        with self._engine.begin() as conn:
            # Locked until commit (PostgreSQL): two nodes moving the same job (queueing a
            # READY job, say) take turns, and the second sees the first's state.
            row = conn.execute(
                select(jobs_table).where(jobs_table.c.job_id == job_id).with_for_update()
            ).first()
            if row is None:
                raise UnknownJobError(f"no job {job_id} in the ledger")
            current = JobState(row.state)
            if expected is not None and current not in expected:
                raise InvalidTransitionError(
                    f"job {job_id} is {current}, not {' or '.join(sorted(expected))}"
                )
            if state not in ALLOWED_TRANSITIONS[current]:
                raise InvalidTransitionError(f"job {job_id} cannot go from {current} to {state}")
            values: dict[str, Any] = {"state": state.value, "reason": reason, "updated_at": now}
            if result is not None:
                values["result"] = json.dumps(result, sort_keys=True)
            if count_attempt:
                values["attempts"] = jobs_table.c.attempts + 1
            if reset_attempts:
                values["attempts"] = 0
                values["rerun_pending"] = 0
            if refund_attempt:
                values["attempts"] = case(
                    (jobs_table.c.attempts > 0, jobs_table.c.attempts - 1), else_=0
                )
            if state == JobState.RUNNING and detail and "worker" in detail:
                values["worker"] = str(detail["worker"])
            conn.execute(update(jobs_table).where(jobs_table.c.job_id == job_id).values(**values))
            _add_event(conn, job_id, state, at=now, reason=event_reason or reason, detail=detail)
            now_in = state
            if state in _SETTLED and row.rerun_pending:
                _rerun(conn, row, now)
                now_in = JobState.READY
            add_to_counters(conn, job_moved(row.model_id, current, now_in))
        return self.get_job(job_id)

    def set_result_paths(self, job_id: str, paths: dict[str, str], *, node: str | None) -> None:
        """Point the job's result record at other copies of its objects, by SOP Instance
        UID (``deliveries`` and ``files``), held by ``node``: the node's copies of what a
        remote worker made.

        Raises:
            UnknownJobError: no such job.
        """
        with self._engine.begin() as conn:
            row = conn.execute(
                select(jobs_table.c.result).where(jobs_table.c.job_id == job_id).with_for_update()
            ).first()
            if row is None:
                raise UnknownJobError(f"no job {job_id} in the ledger")
            result: dict[str, Any] = json.loads(row.result) if row.result else {}
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.job_id == job_id)
                .values(result=json.dumps(moved_result(result, paths, node=node), sort_keys=True))
            )

    def note(self, job_id: str, reason: str, detail: dict[str, Any] | None = None) -> None:
        """Record a fact about a job without changing its state (a backend fallback, say)."""
        with self._engine.begin() as conn:
            row = conn.execute(
                select(jobs_table.c.state).where(jobs_table.c.job_id == job_id)
            ).first()
            if row is None:
                raise UnknownJobError(f"no job {job_id} in the ledger")
            _add_event(
                conn,
                job_id,
                JobState(row.state),
                at=time.time(),
                reason=reason,
                detail=detail,
                kind="note",
            )

    def resolve_job_id(self, text: str) -> str:
        """The full id of the job ``text`` names: its whole id, or a prefix of it that
        only one job has (``pacs-ai status`` and the dashboard show the first 8).

        Raises:
            UnknownJobError: ``text`` is not (the start of) a job id, or no job has it.
            AmbiguousJobIdError: more than one job starts with it (they are listed).
        """
        wanted = text.strip().lower()
        if not _JOB_ID_PREFIX.fullmatch(wanted):
            raise UnknownJobError(
                f"{text!r} is not a job id: give the id `pacs-ai status` shows (at least "
                f"{MIN_JOB_ID_PREFIX} of its hexadecimal characters)"
            )
        with self._engine.connect() as conn:
            found = [
                (str(row.job_id), str(row.state))
                for row in conn.execute(
                    select(jobs_table.c.job_id, jobs_table.c.state)
                    .where(jobs_table.c.job_id.startswith(wanted, autoescape=True))
                    .order_by(jobs_table.c.job_id)
                    .limit(6)
                )
            ]
        exact = [job_id for job_id, _state in found if job_id == wanted]
        if exact:
            return exact[0]
        if not found:
            raise UnknownJobError(f"no job {wanted} in the ledger")
        if len(found) > 1:
            shown = ", ".join(f"{job_id} ({state})" for job_id, state in found[:5])
            more = " and more" if len(found) > 5 else ""
            raise AmbiguousJobIdError(
                f"{wanted} is the start of several job ids: {shown}{more}; give more of it"
            )
        return found[0][0]

    def explain_job(self, job_id: str, reason: str, *, state: JobState) -> bool:
        """Set the reason of a job that stays in ``state`` (why it is still DELIVERING,
        say), with a note event; nothing when its reason is already that or it has moved
        on. True when the reason changed."""
        with self._engine.begin() as conn:
            row = conn.execute(
                select(jobs_table.c.state, jobs_table.c.reason).where(jobs_table.c.job_id == job_id)
            ).first()
            if row is None:
                raise UnknownJobError(f"no job {job_id} in the ledger")
            if row.state != state.value or row.reason == reason:
                return False
            conn.execute(
                update(jobs_table).where(jobs_table.c.job_id == job_id).values(reason=reason)
            )
            _add_event(conn, job_id, state, at=time.time(), reason=reason, kind="note")
        return True

    def get_job(self, job_id: str) -> JobRecord:
        with self._engine.connect() as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.job_id == job_id)).first()
        if row is None:
            raise UnknownJobError(f"no job {job_id} in the ledger")
        return _job_record(row)

    def jobs(
        self,
        *,
        series_uid: str | None = None,
        states: Iterable[JobState] | None = None,
        updated_after: float | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        query = select(jobs_table).order_by(jobs_table.c.created_at.desc()).limit(limit)
        if updated_after is not None:
            query = query.where(jobs_table.c.updated_at > updated_after)
        if series_uid is not None:
            query = query.where(jobs_table.c.series_uid == series_uid)
        if states is not None:
            query = query.where(jobs_table.c.state.in_([s.value for s in states]))
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_job_record(row) for row in rows]

    def events(self, job_id: str) -> list[JobEvent]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(job_events_table)
                .where(job_events_table.c.job_id == job_id)
                .order_by(job_events_table.c.at, job_events_table.c.event_id)
            ).all()
        return [_job_event(row) for row in rows]


def _rerun(conn: Connection, row: Row[Any], now: float) -> None:
    """Put a job that just ended back to READY because late instances arrived meanwhile."""
    last, run_started = conn.execute(
        select(
            series_table.c.last_received_at,
            func.coalesce(series_table.c.receiving_since, series_table.c.first_received_at),
        ).where(series_table.c.series_uid == row.series_uid)
    ).one()
    conn.execute(
        update(jobs_table)
        .where(jobs_table.c.job_id == row.job_id)
        .values(
            state=JobState.READY.value,
            reason=None,
            attempts=0,
            rerun_pending=0,
            input_received_at=last,
            updated_at=now,
        )
    )
    if run_started > row.input_received_at:
        _add_event(conn, row.job_id, JobState.RECEIVING, at=run_started)
    _add_event(
        conn,
        row.job_id,
        JobState.READY,
        at=now,
        reason="instances arrived while the job was in flight: running it again",
    )


def _add_event(
    conn: Connection,
    job_id: str,
    state: JobState,
    *,
    at: float,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
    kind: str = "transition",
) -> None:
    conn.execute(
        insert(job_events_table).values(
            job_id=job_id,
            state=state.value,
            kind=kind,
            at=at,
            reason=reason,
            detail=json.dumps(detail, sort_keys=True) if detail else None,
        )
    )


def moved_result(
    result: dict[str, Any], paths: dict[str, str], *, node: str | None
) -> dict[str, Any]:
    """``result`` (a job's result record) pointing at the copies ``paths`` names by SOP
    Instance UID, on the disk of ``node`` (``result["node"]``, the node that delivers or
    releases them; None: any node)."""
    moved: dict[str, str] = {}
    deliveries = copy.deepcopy(result.get("deliveries", {}))
    for entries in deliveries.values():
        for entry in entries:
            uid, old = entry[1], entry[3]
            if uid in paths:
                moved[old] = paths[uid]
                entry[3] = paths[uid]
    return {
        **result,
        "deliveries": deliveries,
        "files": [moved.get(path, path) for path in result.get("files", [])],
        "node": node,
    }
