"""Issue 14: several nodes share one ledger, each with its own spool.

``instances.node`` names the node that holds the instance's bytes (its ``node.name``);
``nodes.node`` and ``nodes.dicomweb_url`` say where a node process serves them to
workers (DICOMweb); ``outbox.node`` names the node whose disk holds an item's file, the
one that delivers it; ``series.claimed_for`` and ``series.claimed_at`` record a node's
claim to complete a series (so that it completes once). All nullable: rows of older
ledgers keep them empty, which the code reads as "the only node" (any node may deliver,
workers read the file where it lies).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("series", sa.Column("claimed_for", sa.Float()))
    op.add_column("series", sa.Column("claimed_at", sa.Float()))
    op.add_column("instances", sa.Column("node", sa.String(64)))
    op.add_column("nodes", sa.Column("node", sa.String(64)))
    op.add_column("nodes", sa.Column("dicomweb_url", sa.Text()))
    op.add_column("outbox", sa.Column("node", sa.String(64)))


def downgrade() -> None:
    # SQLite drops a column only by copying the table: batch mode does that there.
    with op.batch_alter_table("outbox") as outbox:
        outbox.drop_column("node")
    with op.batch_alter_table("nodes") as nodes:
        nodes.drop_column("dicomweb_url")
        nodes.drop_column("node")
    with op.batch_alter_table("instances") as instances:
        instances.drop_column("node")
    with op.batch_alter_table("series") as series:
        series.drop_column("claimed_at")
        series.drop_column("claimed_for")
