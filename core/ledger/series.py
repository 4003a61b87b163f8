"""Received instances, their series and studies: recording arrivals, completion state."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from core.jobs import (
    InstanceRecord,
    SeriesRecord,
    SeriesState,
    StudyRecord,
    StudyState,
)
from core.ledger.base import LedgerBase
from core.ledger.counters import (
    CounterKey,
    add_to_counters,
    counter_key,
    merge,
    series_moved,
)
from core.ledger.records import (
    StoredInstance,
)
from core.ledger.rows import _series_record, _stored_instance, _study_record
from core.ledger.schema import (
    instances_table,
    quarantine_table,
    series_table,
    studies_table,
)

logger = logging.getLogger(__name__)

#: UIDs per IN (...) query: well below SQLite's bound-parameter limit.
_IN_CHUNK = 500
#: Times a write is tried again after another node inserted the same row first.
_RACE_RETRIES = 3
#: A node that claimed a series' completion and has not routed it this long after (it
#: died meanwhile) leaves it to be claimed again.
CLAIM_EXPIRES_SECONDS = 300.0


class SeriesLedger(LedgerBase):
    """Instances, series and studies."""

    def record_instances(
        self,
        records: Sequence[InstanceRecord],
        *,
        origin: str | None = None,
        node: str | None = None,
    ) -> None:
        """Record stored instances and update their series, in one transaction.

        A re-sent instance (same SOP Instance UID) increments its receive count instead of
        adding a row; any arrival puts its series back into RECEIVING so that the series
        completes again after its quiet period. ``origin`` (``retrieved``: pulled from a
        PACS) is recorded on their series. ``node``: the node whose spool holds them (its
        ``node.name``); a re-sent instance is then held by the node that received it last.
        """
        if not records:
            return
        for attempt in range(_RACE_RETRIES):
            try:
                self._record_instances(records, origin=origin, node=node)
            except IntegrityError:
                # Another node recorded the first instance of the same series or study
                # (or the same instance) between our look and our insert: look again.
                if attempt == _RACE_RETRIES - 1:
                    raise
                logger.debug("instances recorded by another node meanwhile; recording again")
            else:
                return

    def _record_instances(
        self, records: Sequence[InstanceRecord], *, origin: str | None, node: str | None
    ) -> None:
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
                            "node": node,
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
                        node=node,
                    )
                )
            add_to_counters(conn, _receipt_counts(records))
            per_study: dict[str, _StudyDelta] = {}
            moved: list[dict[CounterKey, float]] = []
            # In UID order: two nodes recording series of one study lock their rows in
            # the same order (PostgreSQL), never each waiting for the other.
            for series_uid, delta in sorted(per_series.items()):
                is_new = self._apply_series_delta(conn, series_uid, delta, now, moved=moved)
                if origin is not None:
                    conn.execute(
                        update(series_table)
                        .where(series_table.c.series_uid == series_uid)
                        .values(origin=origin)
                    )
                study = per_study.setdefault(delta.first.study_instance_uid, _StudyDelta())
                study.add(delta, new_series=is_new)
            for study_uid, study_delta in sorted(per_study.items()):
                _apply_study_delta(conn, study_uid, study_delta, now)
            # Last, after the series rows: every transaction locks gauges after the rows
            # they count, so none waits for a gauge while holding one another needs.
            add_to_counters(conn, merge(*moved))

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
        self,
        conn: Connection,
        series_uid: str,
        delta: _SeriesDelta,
        now: float,
        *,
        moved: list[dict[CounterKey, float]],
    ) -> bool:
        """Update (or create) the series row; True when the series is new. Its change of
        state goes to ``moved`` (gauge deltas, core.ledger.counters)."""
        # Locked (PostgreSQL) until commit: another node recording instances of the same
        # series waits, so neither overwrites the other's last arrival with an older one.
        current = conn.execute(
            select(series_table).where(series_table.c.series_uid == series_uid).with_for_update()
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
            moved.append(series_moved(None, SeriesState.RECEIVING))
            return True
        moved.append(series_moved(current.state, SeriesState.RECEIVING))
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

    def claim_completion(self, series: SeriesRecord, *, now: float) -> bool:
        """Take the completion of ``series`` (as read by :meth:`quiet_series`) for this
        process; False when another node took it, or an instance arrived since.

        Several nodes sharing the ledger watch the same series: only the one whose claim
        succeeds routes it, so a series completes once. The claim is one conditional
        update of the series row (for its last arrival, while it is still RECEIVING and
        nothing arrived since), atomic on SQLite and PostgreSQL alike and independent of
        the nodes' clocks. A claim whose node has not routed the series
        :data:`CLAIM_EXPIRES_SECONDS` later (it died meanwhile) may be taken again.
        """
        table = series_table
        seen = series.last_received_at
        with self._engine.begin() as conn:
            taken = conn.execute(
                update(table)
                .where(table.c.series_uid == series.series_instance_uid)
                .where(table.c.state == SeriesState.RECEIVING.value)
                .where(table.c.last_received_at == seen)
                .where(
                    or_(
                        table.c.claimed_for.is_(None),
                        table.c.claimed_for != seen,
                        table.c.claimed_at < now - CLAIM_EXPIRES_SECONDS,
                    )
                )
                .values(claimed_for=seen, claimed_at=now)
            ).rowcount
        return bool(taken)

    def release_claim(self, series: SeriesRecord) -> None:
        """Give up a claim taken by :meth:`claim_completion` (routing it failed): the
        series may be claimed again at once, by this node or another."""
        with self._engine.begin() as conn:
            conn.execute(
                update(series_table)
                .where(series_table.c.series_uid == series.series_instance_uid)
                .where(series_table.c.claimed_for == series.last_received_at)
                .values(claimed_for=None, claimed_at=None)
            )

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
        expected: SeriesState | None = None,
    ) -> bool:
        """Move the series to ``state``; with ``expected``, only from that state (a claim
        among nodes sharing the ledger: one conditional update, atomic on SQLite and
        PostgreSQL alike, so of several processes exactly one moves it). Whether it moved."""
        values: dict[str, Any] = {"state": state.value, "reason": reason, "updated_at": time.time()}
        if completed_at is not None:
            values["completed_at"] = completed_at
        if expected is not None:
            with self._engine.begin() as conn:
                moved = conn.execute(
                    update(series_table)
                    .where(series_table.c.series_uid == series_uid)
                    .where(series_table.c.state == expected.value)
                    .values(**values)
                ).rowcount
                if moved:
                    add_to_counters(conn, series_moved(expected.value, state))
            return bool(moved)
        with self._engine.begin() as conn:
            # Locked until commit (PostgreSQL): the gauge moves from the state replaced.
            old = conn.execute(
                select(series_table.c.state)
                .where(series_table.c.series_uid == series_uid)
                .with_for_update()
            ).scalar()
            conn.execute(
                update(series_table).where(series_table.c.series_uid == series_uid).values(**values)
            )
            if old is not None:
                add_to_counters(conn, series_moved(old, state))
        return old is not None

    def waiting_series_of_routed_studies(
        self, *, node: str | None = None, limit: int = 100
    ) -> list[SeriesRecord]:
        """Series still WAITING_STUDY whose study has been decided (ROUTED): their study
        routes are yet to be applied. Oldest first, at most ``limit``; with ``node``, only
        series of which that node holds some instance (or an instance of no node's)."""
        query = (
            select(series_table)
            .join(studies_table, studies_table.c.study_uid == series_table.c.study_uid)
            .where(series_table.c.state == SeriesState.WAITING_STUDY.value)
            .where(studies_table.c.state == StudyState.ROUTED.value)
            .order_by(series_table.c.last_received_at, series_table.c.series_uid)
            .limit(limit)
        )
        if node is not None:
            query = query.where(
                select(instances_table.c.sop_instance_uid)
                .where(instances_table.c.series_uid == series_table.c.series_uid)
                .where(or_(instances_table.c.node.is_(None), instances_table.c.node == node))
                .exists()
            )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_series_record(row) for row in rows]

    def claim_study_routes(self, series_uid: str, *, now: float) -> bool:
        """Take, for this process, the applying of its study's routes to a WAITING_STUDY
        series; False when it is not waiting or another node holds the claim.

        The claim is a lease (``claimed_at`` with no ``claimed_for``, which a completion
        claim always sets): a node that dies while applying the routes leaves the series
        WAITING_STUDY, to be claimed again :data:`CLAIM_EXPIRES_SECONDS` later. One
        conditional update, atomic on SQLite and PostgreSQL alike. Release it with
        :meth:`release_study_routes` once the series is ROUTED or applying failed.
        """
        table = series_table
        with self._engine.begin() as conn:
            taken = conn.execute(
                update(table)
                .where(table.c.series_uid == series_uid)
                .where(table.c.state == SeriesState.WAITING_STUDY.value)
                .where(
                    or_(
                        table.c.claimed_for.is_not(None),
                        table.c.claimed_at.is_(None),
                        table.c.claimed_at < now - CLAIM_EXPIRES_SECONDS,
                    )
                )
                .values(claimed_for=None, claimed_at=now)
            ).rowcount
        return bool(taken)

    def release_study_routes(self, series_uid: str) -> None:
        """Give up a claim taken by :meth:`claim_study_routes` (a completion claim, which
        a late instance may have brought meanwhile, is left alone)."""
        with self._engine.begin() as conn:
            conn.execute(
                update(series_table)
                .where(series_table.c.series_uid == series_uid)
                .where(series_table.c.claimed_for.is_(None))
                .values(claimed_at=None)
            )

    def set_series_origin(self, series_uid: str, origin: str) -> None:
        """Record how a series came (``retrieved``: a PACS sent it on our C-MOVE)."""
        with self._engine.begin() as conn:
            conn.execute(
                update(series_table)
                .where(series_table.c.series_uid == series_uid)
                .values(origin=origin)
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
        self,
        study_uid: str,
        state: StudyState,
        reason: str | None = None,
        *,
        completed_at: float,
        expected: StudyState | None = None,
    ) -> bool:
        """Move the study to ``state``; with ``expected``, only from that state: of nodes
        sharing the ledger, the one whose update succeeds decides the study, once. Whether
        it moved."""
        query = update(studies_table).where(studies_table.c.study_uid == study_uid)
        if expected is not None:
            query = query.where(studies_table.c.state == expected.value)
        with self._engine.begin() as conn:
            moved = conn.execute(
                query.values(
                    state=state.value,
                    reason=reason,
                    completed_at=completed_at,
                    updated_at=time.time(),
                )
            ).rowcount
        return bool(moved)

    def series_instances(self, series_uid: str) -> list[StoredInstance]:
        """The stored instances of a series, in arrival order."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(instances_table)
                .where(instances_table.c.series_uid == series_uid)
                .order_by(instances_table.c.received_at)
            ).all()
        return [_stored_instance(row) for row in rows]

    def count_instances(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(instances_table)).scalar_one())


def _receipt_counts(records: Sequence[InstanceRecord]) -> dict[CounterKey, float]:
    """Instances and bytes received per calling AE and SOP class (re-sent ones too)."""
    counts: dict[CounterKey, float] = {}
    for record in records:
        labels = {"calling_ae": record.calling_ae, "sop_class_uid": record.sop_class_uid}
        for name, amount in (("instances_received", 1.0), ("bytes_received", float(record.size))):
            key = counter_key(name, **labels)
            counts[key] = counts.get(key, 0.0) + amount
    return counts


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
        select(studies_table).where(studies_table.c.study_uid == study_uid).with_for_update()
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
