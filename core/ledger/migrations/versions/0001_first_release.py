"""The ledger of the first release (schema_info version 1).

Written out table by table from the first release's ``core/ledger_schema.py`` (commit
28e80c6), not from today's schema: a ledger this revision creates is the one that release
made. Its indexes carry the names SQLAlchemy gave them (``ix_<table>_<column>``).

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Every table of the first release, dropped in reverse order by :func:`downgrade`.
TABLES = (
    "schema_info",
    "series",
    "studies",
    "instances",
    "quarantine",
    "jobs",
    "job_events",
    "workers",
    "outbox",
    "worker_status",
    "counters",
    "audit_log",
    "job_discards",
)


def upgrade() -> None:
    schema_info = op.create_table(
        "schema_info",
        sa.Column("version", sa.Integer(), nullable=False),
    )
    op.create_table(
        "series",
        sa.Column("series_uid", sa.String(64), primary_key=True),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16)),
        sa.Column("calling_ae", sa.String(16), nullable=False),
        sa.Column("called_ae", sa.String(16), nullable=False),
        sa.Column("peer", sa.String(64), nullable=False),
        sa.Column("first_received_at", sa.Float(), nullable=False),
        sa.Column("last_received_at", sa.Float(), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("resent_count", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("completed_at", sa.Float()),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_series_study_uid", "series", ["study_uid"])
    op.create_index("ix_series_state_last", "series", ["state", "last_received_at"])
    op.create_table(
        "studies",
        sa.Column("study_uid", sa.String(64), primary_key=True),
        sa.Column("first_received_at", sa.Float(), nullable=False),
        sa.Column("last_received_at", sa.Float(), nullable=False),
        sa.Column("last_new_series_at", sa.Float(), nullable=False),
        sa.Column("series_count", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("completed_at", sa.Float()),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_studies_state", "studies", ["state"])
    op.create_table(
        "instances",
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("receive_count", sa.Integer(), nullable=False),
    )
    op.create_index("ix_instances_series_uid", "instances", ["series_uid"])
    op.create_table(
        "quarantine",
        sa.Column("quarantine_id", sa.String(32), primary_key=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64)),
        sa.Column("series_uid", sa.String(64)),
        sa.Column("job_id", sa.String(32)),
        sa.Column("calling_ae", sa.String(16)),
    )
    op.create_index("ix_quarantine_at", "quarantine", ["at"])
    op.create_index("ix_quarantine_series_uid", "quarantine", ["series_uid"])
    op.create_index("ix_quarantine_job_id", "quarantine", ["job_id"])
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("model_id", sa.String(64), nullable=False),
        sa.Column("destinations", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("result", sa.Text()),
        sa.Column("worker", sa.String(128)),
        sa.Column("rerun_pending", sa.Integer(), nullable=False),
        sa.Column("input_received_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("series_uid", "route", "model_id", name="uq_job_series_route_model"),
    )
    op.create_index("ix_jobs_series_uid", "jobs", ["series_uid"])
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_table(
        "job_events",
        sa.Column("event_id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("detail", sa.Text()),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"])
    op.create_index("ix_job_events_state_at", "job_events", ["state", "at"])
    op.create_table(
        "workers",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(128), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("models", sa.Text(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("item_id", sa.String(32), primary_key=True),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(32)),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.Integer()),
        sa.Column("last_error", sa.Text()),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("sent_at", sa.Float()),
        sa.UniqueConstraint(
            "destination", "sop_instance_uid", name="uq_outbox_destination_instance"
        ),
    )
    op.create_index("ix_outbox_job_id", "outbox", ["job_id"])
    op.create_index("ix_outbox_series_uid", "outbox", ["series_uid"])
    op.create_index("ix_outbox_due", "outbox", ["state", "next_attempt_at"])
    op.create_table(
        "worker_status",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("gpu_name", sa.String(128)),
        sa.Column("gpu_memory_used", sa.Float()),
        sa.Column("gpu_memory_total", sa.Float()),
        sa.Column("gpu_utilisation", sa.Float()),
        sa.Column("current_job", sa.String(32)),
        sa.Column("current_job_since", sa.Float()),
        sa.Column("jobs_done", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "counters",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("labels", sa.String(512), primary_key=True),
        sa.Column("value", sa.Float(), nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("audit_id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text()),
        sa.Column("remote", sa.String(64)),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_job_id", "audit_log", ["job_id"])
    op.create_table(
        "job_discards",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    # The first release recorded its schema number here, and so does a ledger it creates.
    op.bulk_insert(schema_info, [{"version": 1}])


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
