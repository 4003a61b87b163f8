"""The job ledger: the durable record of every series, instance, job and state change.

The ledger is the source of truth (the broker only carries work): a job's state, its
history with timestamps and reasons, and every received or quarantined instance. SQLite
under the data directory by default; any SQLAlchemy URL (PostgreSQL in production).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.pool import ConnectionPoolEntry

from core.errors import PacsAiError
from core.jobs import (
    ALLOWED_TRANSITIONS,
    InstanceRecord,
    JobEvent,
    JobRecord,
    JobState,
    SeriesRecord,
    SeriesState,
    StudyRecord,
    StudyState,
)
from core.ledger_schema import (
    SCHEMA_VERSION,
    add_missing_columns,
    counters_table,
    instances_table,
    job_events_table,
    jobs_table,
    metadata,
    quarantine_table,
    schema_info,
    series_table,
    studies_table,
    worker_status_table,
    workers_table,
)

logger = logging.getLogger(__name__)

#: UIDs per IN (...) query: well below SQLite's bound-parameter limit.
_IN_CHUNK = 500
#: States in which a job has stopped running: instances arriving later re-run it now (a
#: result held for review, NEEDS_REVIEW, included: it was made without them).
_SETTLED = frozenset(
    {JobState.DONE, JobState.FAILED, JobState.NEEDS_REVIEW, JobState.NOT_APPLICABLE}
)


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    name: str
    host: str
    pid: int
    device: str
    models: tuple[str, ...]
    started_at: float
    heartbeat_at: float


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """What a worker reports with its heartbeat besides being alive (for the dashboard)."""

    gpu_name: str | None = None
    gpu_memory_used: float | None = None
    gpu_memory_total: float | None = None
    #: 0..1, where the driver tells.
    gpu_utilisation: float | None = None
    current_job: str | None = None
    current_job_since: float | None = None
    jobs_done: int = 0


#: A counter's name and its label set (sorted JSON), as stored in ``counters``.
CounterKey = tuple[str, str]


def counter_key(name: str, **labels: str) -> CounterKey:
    return name, json.dumps(labels, sort_keys=True)


def add_to_counters(conn: Connection, deltas: dict[CounterKey, float]) -> None:
    """Add to shared monotonic counters inside the caller's transaction (an upsert).

    Rows are updated in sorted order, so that concurrent transactions on PostgreSQL take
    their row locks in the same order and cannot deadlock.
    """
    for (name, labels), amount in sorted(deltas.items()):
        if conn.dialect.name == "sqlite":
            lite = sqlite_insert(counters_table).values(name=name, labels=labels, value=amount)
            conn.execute(
                lite.on_conflict_do_update(
                    index_elements=["name", "labels"],
                    set_={"value": counters_table.c.value + lite.excluded.value},
                )
            )
        elif conn.dialect.name == "postgresql":
            pg = postgresql_insert(counters_table).values(name=name, labels=labels, value=amount)
            conn.execute(
                pg.on_conflict_do_update(
                    index_elements=["name", "labels"],
                    set_={"value": counters_table.c.value + pg.excluded.value},
                )
            )
        else:
            changed = conn.execute(
                update(counters_table)
                .where(counters_table.c.name == name)
                .where(counters_table.c.labels == labels)
                .values(value=counters_table.c.value + amount)
            ).rowcount
            if not changed:
                conn.execute(insert(counters_table).values(name=name, labels=labels, value=amount))


class UnknownJobError(PacsAiError):
    """No job with this id exists in the ledger."""


class AmbiguousJobIdError(UnknownJobError):
    """A short job id that more than one job's id starts with."""


#: The fewest characters of a job id that name it (``pacs-ai status`` shows 8).
MIN_JOB_ID_PREFIX = 4
_JOB_ID_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_JOB_ID_PREFIX},32}}")


class InvalidTransitionError(PacsAiError):
    """A job was asked to move to a state its current state does not lead to."""


@dataclass(frozen=True, slots=True)
class StoredInstance:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    receive_count: int


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    quarantine_id: str
    at: float
    stage: str
    reason: str
    path: str
    sop_instance_uid: str | None
    series_uid: str | None
    job_id: str | None
    calling_ae: str | None


class Ledger:
    """Typed access to the ledger database. Safe to share between threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = _make_engine(url)
        self._schema_lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return self._engine

    def create_schema(self) -> None:
        """Create missing tables and columns (idempotent) and record the schema version.

        A ledger made by an older release gets the tables and the (nullable) columns
        added since (:func:`core.ledger_schema.add_missing_columns`).
        """
        with self._schema_lock, self._engine.begin() as conn:
            metadata.create_all(conn)
            added = add_missing_columns(conn)
            if added:
                logger.info("ledger upgraded: added %s", ", ".join(added))
            if conn.execute(select(func.count()).select_from(schema_info)).scalar_one() == 0:
                conn.execute(insert(schema_info).values(version=SCHEMA_VERSION))
            else:
                conn.execute(
                    update(schema_info)
                    .where(schema_info.c.version < SCHEMA_VERSION)
                    .values(version=SCHEMA_VERSION)
                )

    def close(self) -> None:
        self._engine.dispose()

    # -- received instances and series -------------------------------------------------

    def record_instances(self, records: Sequence[InstanceRecord]) -> None:
        """Record stored instances and update their series, in one transaction.

        A re-sent instance (same SOP Instance UID) increments its receive count instead of
        adding a row; any arrival puts its series back into RECEIVING so that the series
        completes again after its quiet period.
        """
        if not records:
            return
        now = time.time()
        with self._engine.begin() as conn:
            records = self._set_aside_identity_conflicts(conn, records, now)
            per_series: dict[str, _SeriesDelta] = {}
            new_rows: list[dict[str, Any]] = []
            resent_records: list[InstanceRecord] = []
            existing: set[str] = set(self._known_instances(conn, records))
            for record in records:
                resent = record.sop_instance_uid in existing
                existing.add(record.sop_instance_uid)
                if resent:
                    resent_records.append(record)
                else:
                    new_rows.append(
                        {
                            "sop_instance_uid": record.sop_instance_uid,
                            "series_uid": record.series_instance_uid,
                            "study_uid": record.study_instance_uid,
                            "sop_class_uid": record.sop_class_uid,
                            "transfer_syntax_uid": record.transfer_syntax_uid,
                            "path": record.path,
                            "size": record.size,
                            "received_at": record.received_at,
                            "receive_count": 1,
                        }
                    )
                delta = per_series.setdefault(record.series_instance_uid, _SeriesDelta(record))
                delta.add(record, resent=resent)
            if new_rows:
                # One executemany for the batch: the node's ledger writer is on the path of
                # every received instance (after its Success, but it must keep up).
                conn.execute(insert(instances_table), new_rows)
            for record in resent_records:
                conn.execute(
                    update(instances_table)
                    .where(
                        instances_table.c.sop_instance_uid == record.sop_instance_uid,
                        instances_table.c.series_uid == record.series_instance_uid,
                    )
                    .values(
                        path=record.path,
                        size=record.size,
                        received_at=record.received_at,
                        transfer_syntax_uid=record.transfer_syntax_uid,
                        receive_count=instances_table.c.receive_count + 1,
                    )
                )
            add_to_counters(conn, _receipt_counts(records))
            per_study: dict[str, _StudyDelta] = {}
            for series_uid, delta in per_series.items():
                is_new = self._apply_series_delta(conn, series_uid, delta, now)
                study = per_study.setdefault(delta.first.study_instance_uid, _StudyDelta())
                study.add(delta, new_series=is_new)
            for study_uid, study_delta in per_study.items():
                _apply_study_delta(conn, study_uid, study_delta, now)

    @staticmethod
    def _known_instances(
        conn: Connection, records: Sequence[InstanceRecord]
    ) -> dict[str, tuple[str, str]]:
        """(study UID, series UID) of each of ``records``' SOP instances already recorded."""
        uids = sorted({r.sop_instance_uid for r in records})
        known: dict[str, tuple[str, str]] = {}
        for start in range(0, len(uids), _IN_CHUNK):
            rows = conn.execute(
                select(
                    instances_table.c.sop_instance_uid,
                    instances_table.c.study_uid,
                    instances_table.c.series_uid,
                ).where(instances_table.c.sop_instance_uid.in_(uids[start : start + _IN_CHUNK]))
            ).all()
            known.update((row[0], (row[1], row[2])) for row in rows)
        return known

    def _set_aside_identity_conflicts(
        self, conn: Connection, records: Sequence[InstanceRecord], now: float
    ) -> list[InstanceRecord]:
        """``records`` less those whose UIDs would mix two studies or series; those are
        quarantined, with the reason, where their files lie in the spool.

        A SOP Instance UID already recorded in another series, or a Series Instance UID
        already recorded in another study, is a sender reusing UIDs: the instance must
        never join the other series, whose job would read it as its own (another
        patient's image, perhaps). The node's receivers refuse most of these before
        answering (:meth:`dicom_node.spool.Spool.claim`); this is the backstop for
        those that arrive at the same moment or at another receiving process.
        """
        known = self._known_instances(conn, records)
        series_uids = sorted({r.series_instance_uid for r in records})
        study_of_series: dict[str, str] = {}
        for start in range(0, len(series_uids), _IN_CHUNK):
            rows = conn.execute(
                select(series_table.c.series_uid, series_table.c.study_uid).where(
                    series_table.c.series_uid.in_(series_uids[start : start + _IN_CHUNK])
                )
            ).all()
            study_of_series.update((row[0], row[1]) for row in rows)
        kept: list[InstanceRecord] = []
        for record in records:
            place = (record.study_instance_uid, record.series_instance_uid)
            earlier = known.setdefault(record.sop_instance_uid, place)
            owner = study_of_series.setdefault(record.series_instance_uid, place[0])
            if earlier == place and owner == place[0]:
                kept.append(record)
                continue
            if earlier != place:
                reason = (
                    f"SOP Instance UID {record.sop_instance_uid} was already received in "
                    f"study {earlier[0]}, series {earlier[1]}; this instance of study "
                    f"{place[0]}, series {place[1]} reuses it and is kept apart. Have the "
                    "sender give every instance its own UID, then send it again"
                )
            else:
                reason = (
                    f"Series Instance UID {record.series_instance_uid} already belongs to "
                    f"study {owner}; this instance of study {place[0]} reuses it and is "
                    "kept apart. Have the sender give every series its own UID"
                )
            already = conn.execute(
                select(quarantine_table.c.quarantine_id).where(
                    quarantine_table.c.stage == "identity",
                    quarantine_table.c.path == record.path,
                )
            ).first()
            if already is not None:
                continue  # recorded again at start-up (register_unrecorded): one record
            logger.warning("identity conflict: %s", reason)
            conn.execute(
                insert(quarantine_table).values(
                    quarantine_id=uuid.uuid4().hex,
                    at=now,
                    stage="identity",
                    reason=reason,
                    path=record.path,
                    sop_instance_uid=record.sop_instance_uid,
                    series_uid=record.series_instance_uid,
                    calling_ae=record.calling_ae,
                )
            )
        return kept

    def _apply_series_delta(
        self, conn: Connection, series_uid: str, delta: _SeriesDelta, now: float
    ) -> bool:
        """Update (or create) the series row; True when the series is new."""
        current = conn.execute(
            select(series_table).where(series_table.c.series_uid == series_uid)
        ).first()
        if current is None:
            first = delta.first
            conn.execute(
                insert(series_table).values(
                    series_uid=series_uid,
                    study_uid=first.study_instance_uid,
                    modality=first.modality,
                    calling_ae=first.calling_ae,
                    called_ae=first.called_ae,
                    peer=first.peer,
                    first_received_at=delta.earliest,
                    last_received_at=delta.latest,
                    instance_count=delta.new,
                    resent_count=delta.resent,
                    state=SeriesState.RECEIVING.value,
                    updated_at=now,
                    receiving_since=delta.earliest,
                )
            )
            return True
        values: dict[str, Any] = {}
        if current.state != SeriesState.RECEIVING.value:
            # Completed before: these instances begin a new sending run (a re-send, late
            # images), whose receive stage and forced completion count from here.
            values["receiving_since"] = delta.earliest
        conn.execute(
            update(series_table)
            .where(series_table.c.series_uid == series_uid)
            .values(
                last_received_at=max(current.last_received_at, delta.latest),
                instance_count=series_table.c.instance_count + delta.new,
                resent_count=series_table.c.resent_count + delta.resent,
                state=SeriesState.RECEIVING.value,
                reason=None,
                updated_at=now,
                **values,
            )
        )
        return False

    def quiet_series(self, *, last_received_before: float) -> list[SeriesRecord]:
        """Series still RECEIVING whose newest instance arrived before the given time."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(series_table)
                .where(series_table.c.state == SeriesState.RECEIVING.value)
                .where(series_table.c.last_received_at <= last_received_before)
                .order_by(series_table.c.last_received_at)
            ).all()
        return [_series_record(row) for row in rows]

    def get_series(self, series_uid: str) -> SeriesRecord:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(series_table).where(series_table.c.series_uid == series_uid)
            ).first()
        if row is None:
            raise KeyError(f"no series {series_uid} in the ledger")
        return _series_record(row)

    def list_series(
        self,
        *,
        states: Iterable[SeriesState] | None = None,
        updated_before: float | None = None,
        limit: int = 100,
    ) -> list[SeriesRecord]:
        query = select(series_table).order_by(series_table.c.last_received_at.desc()).limit(limit)
        if states is not None:
            query = query.where(series_table.c.state.in_([s.value for s in states]))
        if updated_before is not None:
            query = query.where(series_table.c.updated_at < updated_before)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_series_record(row) for row in rows]

    def set_series_state(
        self,
        series_uid: str,
        state: SeriesState,
        reason: str | None = None,
        *,
        completed_at: float | None = None,
    ) -> None:
        values: dict[str, Any] = {"state": state.value, "reason": reason, "updated_at": time.time()}
        if completed_at is not None:
            values["completed_at"] = completed_at
        with self._engine.begin() as conn:
            conn.execute(
                update(series_table).where(series_table.c.series_uid == series_uid).values(**values)
            )

    # -- studies -------------------------------------------------------------------------

    def studies(self, *, state: StudyState | None = None) -> list[StudyRecord]:
        query = select(studies_table).order_by(studies_table.c.last_received_at)
        if state is not None:
            query = query.where(studies_table.c.state == state.value)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_study_record(row) for row in rows]

    def get_study(self, study_uid: str) -> StudyRecord:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(studies_table).where(studies_table.c.study_uid == study_uid)
            ).first()
        if row is None:
            raise KeyError(f"no study {study_uid} in the ledger")
        return _study_record(row)

    def series_of_study(self, study_uid: str) -> list[SeriesRecord]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(series_table)
                .where(series_table.c.study_uid == study_uid)
                .order_by(series_table.c.first_received_at)
            ).all()
        return [_series_record(row) for row in rows]

    def set_study_state(
        self, study_uid: str, state: StudyState, reason: str | None = None, *, completed_at: float
    ) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                update(studies_table)
                .where(studies_table.c.study_uid == study_uid)
                .values(
                    state=state.value,
                    reason=reason,
                    completed_at=completed_at,
                    updated_at=time.time(),
                )
            )

    def series_instances(self, series_uid: str) -> list[StoredInstance]:
        """The stored instances of a series, in arrival order."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(instances_table)
                .where(instances_table.c.series_uid == series_uid)
                .order_by(instances_table.c.received_at)
            ).all()
        return [
            StoredInstance(
                sop_instance_uid=row.sop_instance_uid,
                sop_class_uid=row.sop_class_uid,
                transfer_syntax_uid=row.transfer_syntax_uid,
                path=row.path,
                size=row.size,
                receive_count=row.receive_count,
            )
            for row in rows
        ]

    def count_instances(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(instances_table)).scalar_one())

    # -- quarantine ----------------------------------------------------------------------

    def record_quarantine(
        self,
        *,
        stage: str,
        reason: str,
        path: str,
        sop_instance_uid: str | None = None,
        series_uid: str | None = None,
        job_id: str | None = None,
        calling_ae: str | None = None,
        quarantine_id: str | None = None,
        at: float | None = None,
    ) -> str:
        qid = quarantine_id or uuid.uuid4().hex
        with self._engine.begin() as conn:
            conn.execute(
                insert(quarantine_table).values(
                    quarantine_id=qid,
                    at=time.time() if at is None else at,
                    stage=stage,
                    reason=reason,
                    path=path,
                    sop_instance_uid=sop_instance_uid,
                    series_uid=series_uid,
                    job_id=job_id,
                    calling_ae=calling_ae,
                )
            )
        return qid

    def quarantined(self, *, series_uid: str | None = None) -> list[QuarantineRecord]:
        query = select(quarantine_table).order_by(quarantine_table.c.at)
        if series_uid is not None:
            query = query.where(quarantine_table.c.series_uid == series_uid)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            QuarantineRecord(
                quarantine_id=row.quarantine_id,
                at=row.at,
                stage=row.stage,
                reason=row.reason,
                path=row.path,
                sop_instance_uid=row.sop_instance_uid,
                series_uid=row.series_uid,
                job_id=row.job_id,
                calling_ae=row.calling_ae,
            )
            for row in rows
        ]

    # -- jobs ----------------------------------------------------------------------------

    def open_job(
        self,
        series: SeriesRecord,
        *,
        route: str,
        model_id: str,
        destinations: Sequence[str],
        priority: int,
        reason: str | None = None,
    ) -> JobRecord:
        """Create the job for (series, route, model) in READY, or make the existing one READY.

        A new job gets a RECEIVING event at the series' first arrival and a READY event now.
        An existing job whose series received instances since it was opened is re-run
        (the late-instance policy): a finished job goes back to READY now; a job in flight
        is marked to run again as soon as it ends. Because result UIDs are derived from the
        job's inputs, the new results replace the old ones in the PACS. A finished job whose
        series has nothing new is left alone.
        """
        now = time.time()
        with self._engine.begin() as conn:
            row = conn.execute(
                select(jobs_table)
                .where(jobs_table.c.series_uid == series.series_instance_uid)
                .where(jobs_table.c.route == route)
                .where(jobs_table.c.model_id == model_id)
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
                    )
                )
                _add_event(conn, job_id, JobState.RECEIVING, at=series.run_started_at)
                _add_event(conn, job_id, JobState.READY, at=now, reason=reason)
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
                        .values(input_received_at=series.last_received_at, updated_at=now)
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
        return self.get_job(job_id)

    def record_not_applicable(
        self,
        series: SeriesRecord,
        *,
        route: str,
        model_id: str,
        destinations: Sequence[str],
        priority: int,
        reason: str,
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
            row = conn.execute(
                select(jobs_table)
                .where(jobs_table.c.series_uid == series.series_instance_uid)
                .where(jobs_table.c.route == route)
                .where(jobs_table.c.model_id == model_id)
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
                    )
                )
                _add_event(conn, job_id, JobState.RECEIVING, at=series.run_started_at)
                _add_event(conn, job_id, JobState.NOT_APPLICABLE, at=now, reason=reason)
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
                    )
                )
                # Already NOT_APPLICABLE: the new instances did not change that (a note).
                kind = "note" if current == JobState.NOT_APPLICABLE else "transition"
                _add_event(conn, job_id, JobState.NOT_APPLICABLE, at=now, reason=reason, kind=kind)
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
        expected: Collection[JobState] | None = None,
        event_reason: str | None = None,
    ) -> JobRecord:
        """Move a job to ``state`` and record the event.

        ``expected``: the states the caller believes the job is in (checked in the same
        transaction, so an operator's action cannot race a worker). ``reset_attempts``
        starts the attempt count again (an operator's retry). ``event_reason`` is recorded
        with the event instead of ``reason``, which stays the job's own (why it is FAILED,
        say): "retried by ops" explains the event, not the job's state.

        Raises:
            UnknownJobError: no such job.
            InvalidTransitionError: the current state does not lead to ``state``, or is not
                one of ``expected``.
        """
        now = time.time()
        with self._engine.begin() as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.job_id == job_id)).first()
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
            if state == JobState.RUNNING and detail and "worker" in detail:
                values["worker"] = str(detail["worker"])
            conn.execute(update(jobs_table).where(jobs_table.c.job_id == job_id).values(**values))
            _add_event(conn, job_id, state, at=now, reason=event_reason or reason, detail=detail)
            if state in _SETTLED and row.rerun_pending:
                _rerun(conn, row, now)
        return self.get_job(job_id)

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
        return [
            JobEvent(
                job_id=row.job_id,
                state=JobState(row.state),
                at=row.at,
                reason=row.reason,
                detail=json.loads(row.detail) if row.detail else {},
                kind=row.kind,
            )
            for row in rows
        ]

    # -- workers -------------------------------------------------------------------------

    def worker_heartbeat(
        self,
        name: str,
        *,
        host: str,
        pid: int,
        device: str,
        models: Sequence[str],
        status: WorkerStatus | None = None,
    ) -> None:
        """Record that worker ``name`` is alive with ``models`` warm (and its ``status``)."""
        now = time.time()
        with self._engine.begin() as conn:
            if status is not None:
                _put_worker_status(conn, name, status, now)
            exists = conn.execute(
                select(workers_table.c.name).where(workers_table.c.name == name)
            ).first()
            values = {
                "host": host,
                "pid": pid,
                "device": device,
                "models": json.dumps(list(models)),
                "heartbeat_at": now,
            }
            if exists is None:
                conn.execute(insert(workers_table).values(name=name, started_at=now, **values))
            else:
                conn.execute(
                    update(workers_table).where(workers_table.c.name == name).values(**values)
                )

    def workers(self, *, seen_since: float = 0.0) -> list[WorkerRecord]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(workers_table).where(workers_table.c.heartbeat_at >= seen_since)
            ).all()
        return [
            WorkerRecord(
                name=row.name,
                host=row.host,
                pid=row.pid,
                device=row.device,
                models=tuple(json.loads(row.models)),
                started_at=row.started_at,
                heartbeat_at=row.heartbeat_at,
            )
            for row in rows
        ]


def _receipt_counts(records: Sequence[InstanceRecord]) -> dict[CounterKey, float]:
    """Instances and bytes received per calling AE and SOP class (re-sent ones too)."""
    counts: dict[CounterKey, float] = {}
    for record in records:
        labels = {"calling_ae": record.calling_ae, "sop_class_uid": record.sop_class_uid}
        for name, amount in (("instances_received", 1.0), ("bytes_received", float(record.size))):
            key = counter_key(name, **labels)
            counts[key] = counts.get(key, 0.0) + amount
    return counts


def _put_worker_status(conn: Connection, name: str, status: WorkerStatus, now: float) -> None:
    values = {
        "gpu_name": status.gpu_name,
        "gpu_memory_used": status.gpu_memory_used,
        "gpu_memory_total": status.gpu_memory_total,
        "gpu_utilisation": status.gpu_utilisation,
        "current_job": status.current_job,
        "current_job_since": status.current_job_since,
        "jobs_done": status.jobs_done,
        "updated_at": now,
    }
    changed = conn.execute(
        update(worker_status_table).where(worker_status_table.c.name == name).values(**values)
    ).rowcount
    if not changed:
        conn.execute(insert(worker_status_table).values(name=name, **values))


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


class _StudyDelta:
    __slots__ = ("earliest", "latest", "new_series", "newest_series_at")

    def __init__(self) -> None:
        self.earliest = float("inf")
        self.latest = float("-inf")
        self.new_series = 0
        self.newest_series_at = float("-inf")

    def add(self, series: _SeriesDelta, *, new_series: bool) -> None:
        self.earliest = min(self.earliest, series.earliest)
        self.latest = max(self.latest, series.latest)
        if new_series:
            self.new_series += 1
            self.newest_series_at = max(self.newest_series_at, series.earliest)


def _apply_study_delta(conn: Connection, study_uid: str, delta: _StudyDelta, now: float) -> None:
    current = conn.execute(
        select(studies_table).where(studies_table.c.study_uid == study_uid)
    ).first()
    if current is None:
        conn.execute(
            insert(studies_table).values(
                study_uid=study_uid,
                first_received_at=delta.earliest,
                last_received_at=delta.latest,
                last_new_series_at=delta.newest_series_at if delta.new_series else delta.earliest,
                series_count=delta.new_series,
                state=StudyState.RECEIVING.value,
                updated_at=now,
            )
        )
        return
    conn.execute(
        update(studies_table)
        .where(studies_table.c.study_uid == study_uid)
        .values(
            last_received_at=max(current.last_received_at, delta.latest),
            last_new_series_at=max(current.last_new_series_at, delta.newest_series_at),
            series_count=studies_table.c.series_count + delta.new_series,
            state=StudyState.RECEIVING.value,
            reason=None,
            updated_at=now,
        )
    )


class _SeriesDelta:
    __slots__ = ("earliest", "first", "latest", "new", "resent")

    def __init__(self, first: InstanceRecord) -> None:
        self.first = first
        self.earliest = first.received_at
        self.latest = first.received_at
        self.new = 0
        self.resent = 0

    def add(self, record: InstanceRecord, *, resent: bool) -> None:
        self.earliest = min(self.earliest, record.received_at)
        self.latest = max(self.latest, record.received_at)
        if resent:
            self.resent += 1
        else:
            self.new += 1


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


def _series_record(row: Row[Any]) -> SeriesRecord:
    return SeriesRecord(
        series_instance_uid=row.series_uid,
        study_instance_uid=row.study_uid,
        modality=row.modality,
        calling_ae=row.calling_ae,
        called_ae=row.called_ae,
        peer=row.peer,
        first_received_at=row.first_received_at,
        last_received_at=row.last_received_at,
        instance_count=row.instance_count,
        resent_count=row.resent_count,
        state=SeriesState(row.state),
        reason=row.reason,
        completed_at=row.completed_at,
        receiving_since=row.receiving_since,
    )


def _study_record(row: Row[Any]) -> StudyRecord:
    return StudyRecord(
        study_instance_uid=row.study_uid,
        first_received_at=row.first_received_at,
        last_received_at=row.last_received_at,
        last_new_series_at=row.last_new_series_at,
        series_count=row.series_count,
        state=StudyState(row.state),
        reason=row.reason,
        completed_at=row.completed_at,
    )


def _job_record(row: Row[Any]) -> JobRecord:
    return JobRecord(
        job_id=row.job_id,
        series_instance_uid=row.series_uid,
        study_instance_uid=row.study_uid,
        route=row.route,
        model_id=row.model_id,
        destinations=tuple(json.loads(row.destinations)),
        priority=row.priority,
        state=JobState(row.state),
        reason=row.reason,
        attempts=row.attempts,
        created_at=row.created_at,
        updated_at=row.updated_at,
        result=json.loads(row.result) if row.result else {},
        worker=row.worker,
        rerun_pending=bool(row.rerun_pending),
    )


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    database = url.split("///", 1)[-1]
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's BEGIN below be the only transaction control.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets the node, workers and dashboard read while one of them writes;
        # synchronous=FULL keeps committed rows through a power cut.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Connection) -> None:
        # A deferred transaction that later writes can fail at once with "database is
        # locked" when another process writes; taking the write lock at BEGIN waits instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
