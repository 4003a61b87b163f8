"""The ledger's tables (SQLAlchemy Core), one place for the whole schema.

Times are float seconds since the epoch (UTC), portable across SQLite and PostgreSQL.

Every change here needs its Alembic revision in ``core/ledger/migrations/versions`` (next
number, ``down_revision`` the previous head; ``alembic revision --autogenerate -m ...``
drafts one): ledgers are created and upgraded only by the revisions, and
``tests/integration/test_ledger_schema.py`` fails while they and these tables differ.
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
    text,
)

metadata = MetaData()

#: The schema number of the releases before migrations (1, 2): revisions 0001 and 0002
#: keep it, later ones leave it at 2; ``alembic_version`` holds a ledger's revision.
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
    #: How the series came: empty when a sender stored it (C-STORE), ``retrieved`` when
    #: pacs-ai pulled it from a PACS (``pacs-ai run --from``, ``pacs-ai backfill``).
    Column("origin", String(16)),
    #: A node's claim to complete the series (several nodes share the ledger): the last
    #: arrival it is for, and when it was taken (see ``SeriesLedger.claim_completion``).
    Column("claimed_for", Float),
    Column("claimed_at", Float),
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
    #: The node (its ``node.name``) whose spool holds the bytes; empty in ledgers older
    #: than revision 0003: the only node.
    Column("node", String(64)),
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
    #: 1: a shadow job (a ``shadow: true`` route, or ``pacs-ai run --keep``): its results
    #: are kept in the node and never delivered unless an operator re-sends them.
    Column("shadow", Integer),
    UniqueConstraint("series_uid", "route", "model_id", name="uq_job_series_route_model"),
    #: The dashboard's newest jobs, all of them or in given states, without reading the
    #: whole history (``benchmarks/ledger.py``).
    Index("ix_jobs_updated_at", "updated_at"),
    Index("ix_jobs_state_updated_at", "state", "updated_at"),
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
    #: The node's ``node.name`` (what ``instances.node`` names) and where it serves its
    #: spool to workers (``node.dicomweb_url``; empty: workers use ``worker.fetch_from``).
    Column("node", String(64)),
    Column("dicomweb_url", Text),
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
    #: The node whose disk holds ``path``: only it delivers the item (empty: any node).
    Column("node", String(64)),
    UniqueConstraint("destination", "sop_instance_uid", name="uq_outbox_destination_instance"),
    Index("ix_outbox_due", "state", "next_attempt_at"),
    #: A destination's last success and its last error (dashboard, /metrics), read from
    #: the newest end of an index rather than from every item ever delivered.
    Index("ix_outbox_destination_state_sent", "destination", "state", "sent_at"),
    Index(
        "ix_outbox_destination_errors",
        "destination",
        "updated_at",
        postgresql_where=text("last_error IS NOT NULL"),
        sqlite_where=text("last_error IS NOT NULL"),
    ),
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


# -- pulling studies from a PACS (issue 15) ----------------------------------------------

#: A pull from a PACS: ``pacs-ai run --from``, a backfill, or a run started on the
#: dashboard. No patient data: the studies it found are in ``retrieval_studies`` by UID;
#: the query is kept only as far as it names no patient (a date range, modalities).
retrievals_table = Table(
    "retrievals",
    metadata,
    Column("retrieval_id", String(32), primary_key=True),
    #: ``run``, ``backfill`` or ``dashboard``.
    Column("kind", String(16), nullable=False),
    #: The destination (with a query/retrieve role) the studies come from.
    Column("source", String(64), nullable=False),
    #: JSON list of model ids; empty: the routing rules decide.
    Column("models", Text, nullable=False),
    #: JSON list of destinations for the results of ``models``.
    Column("destinations", Text, nullable=False),
    #: 1: results kept, never delivered (``--keep``), as a shadow route's.
    Column("shadow", Integer, nullable=False),
    #: JSON: series filter conditions, and a backfill's query (date range, modalities).
    Column("query", Text, nullable=False),
    #: Identifies a backfill by its parameters, so that running it again resumes it.
    Column("key", String(64), index=True),
    #: ``QUEUED`` (for the node to run), ``RUNNING``, ``STOPPED`` (resumable), ``DONE``,
    #: ``FAILED``.
    Column("state", String(16), nullable=False, index=True),
    Column("reason", Text),
    Column("studies_per_minute", Float),
    Column("window", String(16)),
    #: Who started it (``cli:<user>``, a dashboard user).
    Column("actor", String(128), nullable=False),
    #: The process running it now, and when it last said so.
    Column("runner", String(128)),
    Column("heartbeat_at", Float),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float),
)

#: Each study of a retrieval and how far it got: PENDING, RETRIEVING, RETRIEVED (in the
#: spool, not yet routed), ROUTED (its series' jobs exist), FAILED or EMPTY (no series
#: passed the filter).
retrieval_studies_table = Table(
    "retrieval_studies",
    metadata,
    Column("retrieval_id", String(32), primary_key=True),
    Column("study_uid", String(64), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    Column("series_count", Integer, nullable=False, default=0),
    Column("instance_count", Integer, nullable=False, default=0),
    #: How many times its pull has FAILED (a pull stopped or interrupted is no failure);
    #: a FAILED study is pulled again when its retrieval resumes, while this is below the
    #: bound (``node_services.retrieve.retriever.STUDY_ATTEMPTS``).
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
    Column("started_at", Float),
    Column("retrieved_at", Float),
    Column("updated_at", Float, nullable=False),
    Index("ix_retrieval_studies_study_state", "study_uid", "state"),
    Index("ix_retrieval_studies_state", "state"),
)
