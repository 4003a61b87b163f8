"""Shared monotonic counters (Prometheus' source), added to inside the caller's transaction."""

from __future__ import annotations

import json

from sqlalchemy import insert, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from core.ledger.schema import (
    counters_table,
)

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
