"""Schema 2 (issue 12): when a series' sending run began, stopped workers, nodes and
misconfigured destinations.

``series.receiving_since`` and ``workers.stopped_at`` are nullable: rows of older ledgers
keep them empty, which the code reads as "first_received_at" and "still running or died".

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("series", sa.Column("receiving_since", sa.Float()))
    op.add_column("workers", sa.Column("stopped_at", sa.Float()))
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(128), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("ae_title", sa.String(16), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("stopped_at", sa.Float()),
    )
    op.create_table(
        "destination_status",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("problem", sa.Text(), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    # As the release of schema 2 did: an older release reading it sees what it is.
    op.execute(sa.text("UPDATE schema_info SET version = 2 WHERE version < 2"))


def downgrade() -> None:
    op.drop_table("destination_status")
    op.drop_table("nodes")
    # SQLite drops a column only by copying the table: batch mode does that there.
    with op.batch_alter_table("workers") as workers:
        workers.drop_column("stopped_at")
    with op.batch_alter_table("series") as series:
        series.drop_column("receiving_since")
    op.execute(sa.text("UPDATE schema_info SET version = 1"))
