"""Shared monotonic counters (Prometheus' source), added to inside the caller's transaction."""

from __future__ import annotations

import json

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from core.ledger.schema import counters_table, jobs_table, series_table

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


# -- gauges: what the read models would otherwise count over the whole history ----------

#: Jobs per (state, model) and series per state, kept in ``counters`` by the transactions
#: that change them, so that the dashboard and /metrics read a handful of rows instead of
#: counting every job and series ever received (``benchmarks/ledger.py``). Ledgers loaded
#: or upgraded by other means set them with :func:`recount_states`.
JOBS_IN_STATE = "jobs_in_state"
SERIES_IN_STATE = "series_in_state"


def job_moved(model_id: str, old: str | None, new: str | None) -> dict[CounterKey, float]:
    """The gauge deltas of a job of ``model_id`` going from ``old`` to ``new`` state
    (``None``: it did not exist, or no longer does)."""
    return _moved(JOBS_IN_STATE, old, new, model=model_id)


def series_moved(old: str | None, new: str | None) -> dict[CounterKey, float]:
    """The gauge deltas of a series going from ``old`` to ``new`` state."""
    return _moved(SERIES_IN_STATE, old, new)


def _moved(name: str, old: str | None, new: str | None, **labels: str) -> dict[CounterKey, float]:
    if old == new:
        return {}
    deltas: dict[CounterKey, float] = {}
    if old is not None:
        deltas[counter_key(name, **labels, state=str(old))] = -1.0
    if new is not None:
        deltas[counter_key(name, **labels, state=str(new))] = 1.0
    return deltas


def merge(*deltas: dict[CounterKey, float]) -> dict[CounterKey, float]:
    """Deltas added together: one :func:`add_to_counters` per transaction, so that its
    rows are locked in one sorted pass."""
    total: dict[CounterKey, float] = {}
    for each in deltas:
        for key, amount in each.items():
            total[key] = total.get(key, 0.0) + amount
    return {key: amount for key, amount in total.items() if amount}


def recount_states(conn: Connection) -> None:
    """Set the gauges from the ``jobs`` and ``series`` rows themselves, in the caller's
    transaction."""
    conn.execute(
        delete(counters_table).where(counters_table.c.name.in_([JOBS_IN_STATE, SERIES_IN_STATE]))
    )
    jobs = conn.execute(
        select(jobs_table.c.state, jobs_table.c.model_id, func.count()).group_by(
            jobs_table.c.state, jobs_table.c.model_id
        )
    ).all()
    series = conn.execute(
        select(series_table.c.state, func.count()).group_by(series_table.c.state)
    ).all()
    rows = [
        {"name": name, "labels": labels, "value": float(count)}
        for (name, labels), count in [
            *((counter_key(JOBS_IN_STATE, model=m, state=s), n) for s, m, n in jobs),
            *((counter_key(SERIES_IN_STATE, state=s), n) for s, n in series),
        ]
    ]
    if rows:
        conn.execute(insert(counters_table), rows)
