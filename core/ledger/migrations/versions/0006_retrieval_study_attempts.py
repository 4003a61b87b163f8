"""Issue 15: how many times each study of a retrieval has FAILED, so that a resumed
retrieval pulls a FAILED study again, a bounded number of times (a pull stopped or
interrupted is no failure: only FAILED counts).

Rows of older ledgers count 0 failures: a study that failed before the upgrade gets its
retries on the next resume.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "retrieval_studies",
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    with op.batch_alter_table("retrieval_studies") as batch:
        batch.drop_column("attempts")
