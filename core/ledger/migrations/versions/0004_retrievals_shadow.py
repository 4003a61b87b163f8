"""Issue 15: studies pulled from a PACS (retrievals, their studies), the origin of a
series, shadow jobs.

``series.origin`` and ``jobs.shadow`` are nullable: rows of older ledgers keep them empty,
which the code reads as "a sender stored it" and "not a shadow job".

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("series", sa.Column("origin", sa.String(16)))
    op.add_column("jobs", sa.Column("shadow", sa.Integer()))
    op.create_table(
        "retrievals",
        sa.Column("retrieval_id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("models", sa.Text(), nullable=False),
        sa.Column("destinations", sa.Text(), nullable=False),
        sa.Column("shadow", sa.Integer(), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("key", sa.String(64)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("studies_per_minute", sa.Float()),
        sa.Column("window", sa.String(16)),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("runner", sa.String(128)),
        sa.Column("heartbeat_at", sa.Float()),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float()),
    )
    op.create_index("ix_retrievals_key", "retrievals", ["key"])
    op.create_index("ix_retrievals_state", "retrievals", ["state"])
    op.create_table(
        "retrieval_studies",
        sa.Column("retrieval_id", sa.String(32), primary_key=True),
        sa.Column("study_uid", sa.String(64), primary_key=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("series_count", sa.Integer(), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float()),
        sa.Column("retrieved_at", sa.Float()),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_retrieval_studies_study_state", "retrieval_studies", ["study_uid", "state"])
    op.create_index("ix_retrieval_studies_state", "retrieval_studies", ["state"])


def downgrade() -> None:
    op.drop_table("retrieval_studies")
    op.drop_table("retrievals")
    # SQLite drops a column only by copying the table: batch mode does that there.
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("shadow")
    with op.batch_alter_table("series") as series:
        series.drop_column("origin")
