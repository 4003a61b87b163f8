"""The outbox: every object owed to a destination, with its status, attempts and schedule.

Results a job produced and originals a route forwards are put in the outbox as one item
per (destination, SOP instance). The delivery service sends due items, records the status
each destination answered and schedules retries by ``delivery.retry_delays``; an item
whose retries are used up is dead-lettered (DEAD), one a destination refuses permanently
is REJECTED. ``pacs-ai resend JOB_ID`` puts a job's undelivered items back to PENDING.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.engine import Connection, Row

from core.ledger.base import LedgerBase
from core.ledger.counters import CounterKey, add_to_counters, counter_key
from core.ledger.schema import destination_status_table, outbox_table


class DeliveryState(StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    #: The destination refused it permanently (e.g. SOP class not supported).
    REJECTED = "REJECTED"
    #: Transient failures until ``delivery.retry_delays`` ran out: dead-lettered.
    DEAD = "DEAD"


class ItemKind(StrEnum):
    RESULT = "result"
    ORIGINAL = "original"


@dataclass(frozen=True, slots=True)
class NewItem:
    destination: str
    kind: ItemKind
    series_uid: str
    route: str
    sop_instance_uid: str
    sop_class_uid: str
    path: str
    job_id: str | None = None
    #: The node whose disk holds ``path`` (``node.name``), the only one to deliver it;
    #: None: any node (one node only).
    node: str | None = None


def result_items(
    *,
    job_id: str,
    series_uid: str,
    route: str,
    destinations: Sequence[str],
    files: Sequence[tuple[str, str, Path]],
    node: str | None = None,
) -> list[NewItem]:
    """Outbox items for a job's result files: (SOP Instance UID, SOP Class UID, path),
    on the disk of ``node``."""
    return [
        NewItem(
            destination=destination,
            kind=ItemKind.RESULT,
            job_id=job_id,
            series_uid=series_uid,
            route=route,
            sop_instance_uid=sop_uid,
            sop_class_uid=sop_class,
            path=str(path),
            node=node,
        )
        for destination in destinations
        for sop_uid, sop_class, path in files
    ]


@dataclass(frozen=True, slots=True)
class DestinationProblem:
    """A destination that rejects our association permanently (misconfigured)."""

    name: str
    #: What is wrong and what to fix, without a job id.
    problem: str
    since: float
    #: Associations tried since, and when the next one is due.
    attempts: int
    next_attempt_at: float


@dataclass(frozen=True, slots=True)
class OutboxItem:
    item_id: str
    destination: str
    kind: ItemKind
    job_id: str | None
    series_uid: str
    route: str
    sop_instance_uid: str
    sop_class_uid: str
    path: str
    state: DeliveryState
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: float
    created_at: float
    updated_at: float
    sent_at: float | None
    #: The node that delivers it (whose disk holds ``path``); None: any node.
    node: str | None = None


class Outbox:
    """Outbox items in the ledger database."""

    def __init__(self, ledger: LedgerBase) -> None:
        self._engine = ledger.engine

    def add(self, items: Iterable[NewItem], *, now: float | None = None) -> int:
        """Owe each item to its destination (again): PENDING, due now, attempts reset.

        An item for a (destination, SOP instance) already in the outbox is replaced, so a
        re-run or a re-sent series is delivered again without a duplicate entry.
        """
        at = time.time() if now is None else now
        count = 0
        with self._engine.begin() as conn:
            for item in items:
                values: dict[str, Any] = {
                    "kind": item.kind.value,
                    "job_id": item.job_id,
                    "series_uid": item.series_uid,
                    "route": item.route,
                    "sop_class_uid": item.sop_class_uid,
                    "path": item.path,
                    "state": DeliveryState.PENDING.value,
                    "attempts": 0,
                    "last_status": None,
                    "last_error": None,
                    "next_attempt_at": at,
                    "updated_at": at,
                    "sent_at": None,
                    "node": item.node,
                }
                existing = conn.execute(
                    select(outbox_table.c.item_id)
                    .where(outbox_table.c.destination == item.destination)
                    .where(outbox_table.c.sop_instance_uid == item.sop_instance_uid)
                ).first()
                if existing is None:
                    conn.execute(
                        insert(outbox_table).values(
                            item_id=uuid.uuid4().hex,
                            destination=item.destination,
                            sop_instance_uid=item.sop_instance_uid,
                            created_at=at,
                            **values,
                        )
                    )
                else:
                    conn.execute(
                        update(outbox_table)
                        .where(outbox_table.c.item_id == existing.item_id)
                        .values(**values)
                    )
                count += 1
        return count

    def due(
        self, *, now: float | None = None, limit: int = 1000, node: str | None = None
    ) -> list[OutboxItem]:
        """PENDING items whose next attempt is due, oldest schedule first. ``node``: only
        those this node delivers (its own, and those of no node in particular)."""
        at = time.time() if now is None else now
        query = (
            select(outbox_table)
            .where(outbox_table.c.state == DeliveryState.PENDING.value)
            .where(outbox_table.c.next_attempt_at <= at)
            .order_by(outbox_table.c.next_attempt_at, outbox_table.c.created_at)
            .limit(limit)
        )
        if node is not None:
            query = query.where(or_(outbox_table.c.node == node, outbox_table.c.node.is_(None)))
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_item(row) for row in rows]

    def next_due_at(self) -> float | None:
        with self._engine.connect() as conn:
            return conn.execute(
                select(outbox_table.c.next_attempt_at)
                .where(outbox_table.c.state == DeliveryState.PENDING.value)
                .order_by(outbox_table.c.next_attempt_at)
                .limit(1)
            ).scalar()

    def mark_sent(self, item_ids: Sequence[str], *, status: int, now: float | None = None) -> None:
        at = time.time() if now is None else now
        if not item_ids:
            return
        with self._engine.begin() as conn:
            _count_attempts(conn, list(item_ids), failed=False)
            conn.execute(
                update(outbox_table)
                .where(outbox_table.c.item_id.in_(list(item_ids)))
                .values(
                    state=DeliveryState.SENT.value,
                    attempts=outbox_table.c.attempts + 1,
                    last_status=status,
                    last_error=None,
                    updated_at=at,
                    sent_at=at,
                )
            )

    def mark_failed(
        self,
        item_id: str,
        *,
        state: DeliveryState,
        status: int | None,
        error: str,
        next_attempt_at: float | None = None,
        now: float | None = None,
        count_attempt: bool = True,
    ) -> None:
        """Record a failed attempt: PENDING again (with ``next_attempt_at``), DEAD or REJECTED.

        ``count_attempt`` false: the attempt does not use up the item's retries (its
        destination is misconfigured and has a schedule of its own).
        """
        at = time.time() if now is None else now
        values: dict[str, Any] = {
            "state": state.value,
            "attempts": outbox_table.c.attempts + (1 if count_attempt else 0),
            "last_status": status,
            "last_error": error,
            "updated_at": at,
        }
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        with self._engine.begin() as conn:
            _count_attempts(conn, [item_id], failed=True)
            conn.execute(
                update(outbox_table).where(outbox_table.c.item_id == item_id).values(**values)
            )

    def items(
        self,
        *,
        job_id: str | None = None,
        series_uid: str | None = None,
        destination: str | None = None,
        states: Iterable[DeliveryState] | None = None,
    ) -> list[OutboxItem]:
        query = select(outbox_table).order_by(outbox_table.c.created_at)
        if job_id is not None:
            query = query.where(outbox_table.c.job_id == job_id)
        if series_uid is not None:
            query = query.where(outbox_table.c.series_uid == series_uid)
        if destination is not None:
            query = query.where(outbox_table.c.destination == destination)
        if states is not None:
            query = query.where(outbox_table.c.state.in_([s.value for s in states]))
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_item(row) for row in rows]

    def postpone(self, item_ids: Sequence[str], *, until: float) -> None:
        """Make PENDING items due no earlier than ``until`` (their destination waits)."""
        if not item_ids:
            return
        with self._engine.begin() as conn:
            conn.execute(
                update(outbox_table)
                .where(outbox_table.c.item_id.in_(list(item_ids)))
                .where(outbox_table.c.state == DeliveryState.PENDING.value)
                .where(outbox_table.c.next_attempt_at < until)
                .values(next_attempt_at=until)
            )

    def retry_now(self, *, job_id: str, now: float | None = None) -> int:
        """Make the job's PENDING items due now, and their destinations' waits end now
        (a misconfigured destination is tried again at once); return how many items.

        For a job waiting in DELIVERING: its retry schedule, or a destination found
        misconfigured whose configuration an operator has just fixed.
        """
        at = time.time() if now is None else now
        with self._engine.begin() as conn:
            destinations = sorted(
                conn.execute(
                    select(outbox_table.c.destination)
                    .where(outbox_table.c.job_id == job_id)
                    .where(outbox_table.c.state == DeliveryState.PENDING.value)
                    .distinct()
                ).scalars()
            )
            result = conn.execute(
                update(outbox_table)
                .where(outbox_table.c.job_id == job_id)
                .where(outbox_table.c.state == DeliveryState.PENDING.value)
                .values(next_attempt_at=at)
            )
            if destinations:
                conn.execute(
                    update(destination_status_table)
                    .where(destination_status_table.c.name.in_(destinations))
                    .values(next_attempt_at=at, updated_at=at)
                )
        return int(result.rowcount)

    # -- destinations found misconfigured ---------------------------------------------

    def destination_problems(self) -> dict[str, DestinationProblem]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(destination_status_table)).all()
        return {
            row.name: DestinationProblem(
                name=row.name,
                problem=row.problem,
                since=row.since,
                attempts=row.attempts,
                next_attempt_at=row.next_attempt_at,
            )
            for row in rows
        }

    def destination_misconfigured(
        self, name: str, problem: str, *, next_attempt_at: float, now: float | None = None
    ) -> DestinationProblem:
        """Record that ``name`` rejected our association permanently (again)."""
        at = time.time() if now is None else now
        with self._engine.begin() as conn:
            row = conn.execute(
                select(destination_status_table).where(destination_status_table.c.name == name)
            ).first()
            if row is None:
                conn.execute(
                    insert(destination_status_table).values(
                        name=name,
                        problem=problem,
                        since=at,
                        attempts=1,
                        next_attempt_at=next_attempt_at,
                        updated_at=at,
                    )
                )
                return DestinationProblem(name, problem, at, 1, next_attempt_at)
            conn.execute(
                update(destination_status_table)
                .where(destination_status_table.c.name == name)
                .values(
                    problem=problem,
                    attempts=row.attempts + 1,
                    next_attempt_at=next_attempt_at,
                    updated_at=at,
                )
            )
            return DestinationProblem(name, problem, row.since, row.attempts + 1, next_attempt_at)

    def destination_works(self, name: str) -> bool:
        """``name`` accepted an association: it is no longer misconfigured. True when it was."""
        with self._engine.begin() as conn:
            removed = conn.execute(
                delete(destination_status_table).where(destination_status_table.c.name == name)
            ).rowcount
        return bool(removed)

    def summary(self, *, job_id: str) -> Counter[DeliveryState]:
        return Counter(item.state for item in self.items(job_id=job_id))

    def resend(self, *, job_id: str, now: float | None = None) -> int:
        """Put the job's DEAD and REJECTED items back to PENDING, due now; return how many."""
        at = time.time() if now is None else now
        with self._engine.begin() as conn:
            result = conn.execute(
                update(outbox_table)
                .where(outbox_table.c.job_id == job_id)
                .where(
                    outbox_table.c.state.in_(
                        [DeliveryState.DEAD.value, DeliveryState.REJECTED.value]
                    )
                )
                .values(
                    state=DeliveryState.PENDING.value,
                    attempts=0,
                    next_attempt_at=at,
                    updated_at=at,
                )
            )
        return int(result.rowcount)


def _count_attempts(conn: Connection, item_ids: list[str], *, failed: bool) -> None:
    """Count delivery attempts (and failed ones) per destination, for the metrics."""
    names = ("delivery_attempts", "delivery_failures") if failed else ("delivery_attempts",)
    deltas: dict[CounterKey, float] = {}
    for destination in conn.execute(
        select(outbox_table.c.destination).where(outbox_table.c.item_id.in_(item_ids))
    ).scalars():
        for name in names:
            key = counter_key(name, destination=destination)
            deltas[key] = deltas.get(key, 0.0) + 1.0
    add_to_counters(conn, deltas)


def _item(row: Row[Any]) -> OutboxItem:
    return OutboxItem(
        item_id=row.item_id,
        destination=row.destination,
        kind=ItemKind(row.kind),
        job_id=row.job_id,
        series_uid=row.series_uid,
        route=row.route,
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        path=row.path,
        state=DeliveryState(row.state),
        attempts=row.attempts,
        last_status=row.last_status,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        sent_at=row.sent_at,
        node=row.node,
    )
