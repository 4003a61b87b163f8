"""The ledger's tables (SQLAlchemy Core), one place for the whole schema.

Times are float seconds since the epoch (UTC), portable across SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    text,
)
from sqlalchemy.engine import Connection

#: 2: ``series.receiving_since``, ``workers.stopped_at``, the ``nodes`` and
#: ``destination_status`` tables (issue 12).
SCHEMA_VERSION = 2

metadata = MetaData()

schema_info = Table(
    "schema_info",
    metadata,
    Column("version", Integer, nullable=False),
)

series_table = Table(
    "series",
    metadata,
    Column("series_uid", String(64), primary_key=True),
    Column("study_uid", String(64), nullable=False, index=True),
    Column("modality", String(16)),
    Column("calling_ae", String(16), nullable=False),
    Column("called_ae", String(16), nullable=False),
    Column("peer", String(64), nullable=False),
    Column("first_received_at", Float, nullable=False),
    Column("last_received_at", Float, nullable=False),
    Column("instance_count", Integer, nullable=False),
    Column("resent_count", Integer, nullable=False, default=0),
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    #: When the series last completed (quiet period, release or forced).
    Column("completed_at", Float),
    Column("updated_at", Float, nullable=False),
    #: The first arrival of the current sending run: the first instance received since
    #: the series last completed (empty in ledgers older than schema 2: first_received_at).
    Column("receiving_since", Float),
    Index("ix_series_state_last", "state", "last_received_at"),
)

studies_table = Table(
    "studies",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("first_received_at", Float, nullable=False),
    Column("last_received_at", Float, nullable=False),
    #: Arrival of the first instance of the study's newest series.
    Column("last_new_series_at", Float, nullable=False),
    Column("series_count", Integer, nullable=False),
    #: RECEIVING until its study-trigger routes have run, then ROUTED (or DISCARDED).
    Column("state", String(16), nullable=False, index=True),
    Column("reason", Text),
    Column("completed_at", Float),
    Column("updated_at", Float, nullable=False),
)

instances_table = Table(
    "instances",
    metadata,
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("series_uid", String(64), nullable=False, index=True),
    Column("study_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("path", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("receive_count", Integer, nullable=False),
)

quarantine_table = Table(
    "quarantine",
    metadata,
    Column("quarantine_id", String(32), primary_key=True),
    Column("at", Float, nullable=False, index=True),
    Column("stage", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("sop_instance_uid", String(64)),
    Column("series_uid", String(64), index=True),
    Column("job_id", String(32), index=True),
    Column("calling_ae", String(16)),
)

jobs_table = Table(
    "jobs",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("series_uid", String(64), nullable=False, index=True),
    Column("study_uid", String(64), nullable=False),
    Column("route", String(64), nullable=False),
    Column("model_id", String(64), nullable=False),
    Column("destinations", Text, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("reason", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("result", Text),
    #: The worker running (or last to run) the job, for the reconciler.
    Column("worker", String(128)),
    #: Instances arrived while the job was in flight: run it again when it ends.
    Column("rerun_pending", Integer, nullable=False, default=0),
    #: The series' last arrival when the job was (re)opened: what its results cover.
    Column("input_received_at", Float, nullable=False, default=0.0),
    UniqueConstraint("series_uid", "route", "model_id", name="uq_job_series_route_model"),
)

job_events_table = Table(
    "job_events",
    metadata,
    Column("event_id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), nullable=False, index=True),
    Column("state", String(16), nullable=False),
    #: ``transition`` (the job entered ``state``) or ``note`` (a fact recorded while in it).
    Column("kind", String(16), nullable=False, default="transition"),
    Column("at", Float, nullable=False),
    Column("reason", Text),
    Column("detail", Text),
)


workers_table = Table(
    "workers",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("host", String(128), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("device", String(64), nullable=False),
    Column("models", Text, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    #: When the worker process stopped cleanly (empty while it runs, or when it died).
    Column("stopped_at", Float),
)

#: ``pacs-ai serve`` processes: each records that it is alive, like the workers, so that
#: ``pacs-ai status`` and ``/readyz`` can tell whether the node itself is up.
nodes_table = Table(
    "nodes",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("host", String(128), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("ae_title", String(16), nullable=False),
    Column("port", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    #: When it stopped cleanly (empty while it runs, or when it died).
    Column("stopped_at", Float),
)

#: A destination the delivery service found misconfigured (it rejects our association
#: permanently: calling or called AE title not recognised). The row is removed when an
#: association with it succeeds again.
destination_status_table = Table(
    "destination_status",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("problem", Text, nullable=False),
    Column("since", Float, nullable=False),
    #: Associations tried since it was found misconfigured, and when the next one is.
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

outbox_table = Table(
    "outbox",
    metadata,
    Column("item_id", String(32), primary_key=True),
    Column("destination", String(64), nullable=False),
    #: ``result`` (an object a job produced) or ``original`` (a received instance forwarded).
    Column("kind", String(16), nullable=False),
    Column("job_id", String(32), index=True),
    Column("series_uid", String(64), nullable=False, index=True),
    Column("route", String(64), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("path", Text, nullable=False),
    #: PENDING (to send), SENT, REJECTED (permanent failure), DEAD (retries used up).
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    #: The last C-STORE status (or HTTP status for STOW-RS) the destination answered.
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("next_attempt_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("sent_at", Float),
    UniqueConstraint("destination", "sop_instance_uid", name="uq_outbox_destination_instance"),
    Index("ix_outbox_due", "state", "next_attempt_at"),
)

# -- monitoring (issue 7) ------------------------------------------------------------------

#: Finished transitions by time, for the dashboard's charts ("jobs done in the last hours").
Index("ix_job_events_state_at", job_events_table.c.state, job_events_table.c.at)

#: What each worker reports besides being alive: its GPU, what it runs, how much it ran.
#: One row per worker (the name of ``workers``); GPU columns are empty on CPU workers.
worker_status_table = Table(
    "worker_status",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("gpu_name", String(128)),
    Column("gpu_memory_used", Float),
    Column("gpu_memory_total", Float),
    #: 0..1, where the driver tells (NVML); empty otherwise.
    Column("gpu_utilisation", Float),
    Column("current_job", String(32)),
    Column("current_job_since", Float),
    #: Jobs this worker process has finished (any outcome) since it started.
    Column("jobs_done", Integer, nullable=False, default=0),
    Column("updated_at", Float, nullable=False),
)

#: Monotonic counters shared by every process (instances received per calling AE and SOP
#: class, delivery attempts per destination, ...), for Prometheus. ``labels`` is the
#: label set as sorted JSON, so that (name, labels) is one time series.
counters_table = Table(
    "counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("labels", String(512), primary_key=True),
    Column("value", Float, nullable=False),
)

#: Who did what, when, from the dashboard or its API (operator actions and sign-ins).
audit_table = Table(
    "audit_log",
    metadata,
    Column("audit_id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False, index=True),
    Column("actor", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    #: ``retry``, ``resend``, ``discard``, ``login``, ...
    Column("action", String(32), nullable=False),
    Column("job_id", String(32), index=True),
    #: ``ok``, ``refused`` (not possible in the job's state) or ``denied`` (role).
    Column("outcome", String(16), nullable=False),
    Column("detail", Text),
    Column("remote", String(64)),
)

#: Jobs an operator discarded: they stay FAILED in ``jobs`` and are shown as DISCARDED
#: while this row is newer than the job's last change (a later retry or re-run ends it).
job_discards_table = Table(
    "job_discards",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("at", Float, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("reason", Text, nullable=False),
)


#: Columns added after schema 1, all nullable: :func:`add_missing_columns` adds them to
#: an older ledger (new tables are created by ``metadata.create_all``).
ADDED_COLUMNS: tuple[tuple[Table, str], ...] = (
    (series_table, "receiving_since"),
    (workers_table, "stopped_at"),
)


def add_missing_columns(conn: Connection) -> list[str]:
    """Add :data:`ADDED_COLUMNS` a ledger made by an older release lacks; return them.

    Runs in the caller's transaction (SQLite: one writer at a time; PostgreSQL:
    ``IF NOT EXISTS``, so two processes starting together cannot both add a column).
    """
    inspector = inspect(conn)
    quote = conn.dialect.identifier_preparer.quote
    added = []
    for table, name in ADDED_COLUMNS:
        if name in {column["name"] for column in inspector.get_columns(table.name)}:
            continue
        kind = table.c[name].type.compile(dialect=conn.dialect)
        guard = "IF NOT EXISTS " if conn.dialect.name == "postgresql" else ""
        conn.execute(
            text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {guard}{quote(name)} {kind}")
        )
        added.append(f"{table.name}.{name}")
    return added
