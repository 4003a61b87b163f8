"""Issue 13: the dashboard and /metrics read a large ledger without reading its history.

Indexes for the newest jobs (all, or in given states) and for a destination's last
success and last error; and the gauges of jobs per (state, model) and series per state in
``counters`` (``jobs_in_state``, ``series_in_state``, see ``core/ledger/counters.py``),
counted here once from the rows of the ledger being upgraded and kept up to date by the
code from then on.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GAUGES = ("jobs_in_state", "series_in_state")
_ERRORS = "last_error IS NOT NULL"

counters = sa.table(
    "counters", sa.column("name", sa.String), sa.column("labels", sa.String), sa.column("value")
)
jobs = sa.table("jobs", sa.column("state", sa.String), sa.column("model_id", sa.String))
series = sa.table("series", sa.column("state", sa.String))


def upgrade() -> None:
    op.create_index("ix_jobs_updated_at", "jobs", ["updated_at"])
    op.create_index("ix_jobs_state_updated_at", "jobs", ["state", "updated_at"])
    op.create_index(
        "ix_outbox_destination_state_sent", "outbox", ["destination", "state", "sent_at"]
    )
    op.create_index(
        "ix_outbox_destination_errors",
        "outbox",
        ["destination", "updated_at"],
        postgresql_where=sa.text(_ERRORS),
        sqlite_where=sa.text(_ERRORS),
    )
    conn = op.get_bind()
    conn.execute(sa.delete(counters).where(counters.c.name.in_(GAUGES)))
    rows = [
        _gauge("jobs_in_state", count, model=model, state=state)
        for state, model, count in conn.execute(
            sa.select(jobs.c.state, jobs.c.model_id, sa.func.count()).group_by(
                jobs.c.state, jobs.c.model_id
            )
        )
    ]
    rows += [
        _gauge("series_in_state", count, state=state)
        for state, count in conn.execute(
            sa.select(series.c.state, sa.func.count()).group_by(series.c.state)
        )
    ]
    if rows:
        conn.execute(sa.insert(counters), rows)


def downgrade() -> None:
    op.get_bind().execute(sa.delete(counters).where(counters.c.name.in_(GAUGES)))
    op.drop_index("ix_outbox_destination_errors", "outbox")
    op.drop_index("ix_outbox_destination_state_sent", "outbox")
    op.drop_index("ix_jobs_state_updated_at", "jobs")
    op.drop_index("ix_jobs_updated_at", "jobs")


def _gauge(name: str, count: int, **labels: str) -> dict[str, object]:
    # The label set as core.ledger.counters.counter_key writes it (sorted JSON).
    return {"name": name, "labels": json.dumps(labels, sort_keys=True), "value": float(count)}
