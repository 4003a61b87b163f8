"""The job ledger: the durable record of every series, instance, job and state change.

The ledger is the source of truth (the broker only carries work): a job's state, its
history with timestamps and reasons, and every received or quarantined instance. SQLite
under the data directory by default; any SQLAlchemy URL (PostgreSQL in production).
"""

from core.ledger.counters import CounterKey, add_to_counters, counter_key
from core.ledger.jobs import JobLedger
from core.ledger.quarantine import QuarantineLedger
from core.ledger.records import (
    MIN_JOB_ID_PREFIX,
    AmbiguousJobIdError,
    InvalidTransitionError,
    QuarantineRecord,
    StoredInstance,
    UnknownJobError,
    WorkerRecord,
    WorkerStatus,
)
from core.ledger.series import SeriesLedger
from core.ledger.workers import WorkerLedger


class Ledger(SeriesLedger, QuarantineLedger, JobLedger, WorkerLedger):
    """Typed access to the ledger database. Safe to share between threads."""


__all__ = [
    "MIN_JOB_ID_PREFIX",
    "AmbiguousJobIdError",
    "CounterKey",
    "InvalidTransitionError",
    "Ledger",
    "QuarantineRecord",
    "StoredInstance",
    "UnknownJobError",
    "WorkerRecord",
    "WorkerStatus",
    "add_to_counters",
    "counter_key",
]
