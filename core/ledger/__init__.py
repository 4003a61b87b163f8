"""The job ledger: the durable record of every series, instance, job and state change.

The ledger is the source of truth (the broker only carries work): a job's state, its
history with timestamps and reasons, and every received or quarantined instance. SQLite
under the data directory by default; any SQLAlchemy URL (PostgreSQL in production).
"""

from core.ledger.activity import (
    Activity,
    DestinationActivity,
    DoneRun,
    Finished,
    WorkerView,
)
from core.ledger.agreement import Agreement
from core.ledger.audit import AuditLedger
from core.ledger.counters import CounterKey, add_to_counters, counter_key
from core.ledger.drift import Distribution, Drift, DriftReading, ModelDrift, WeekDrift
from core.ledger.jobs import JobLedger
from core.ledger.outbox import (
    DeliveryState,
    DestinationProblem,
    ItemKind,
    NewItem,
    Outbox,
    OutboxItem,
    result_items,
)
from core.ledger.presence import Presence
from core.ledger.quarantine import QuarantineLedger
from core.ledger.read_models import (
    DISCARDED,
    DISPLAY_STATES,
    NOT_ROUTED_STATES,
    Discard,
    JobDetail,
    JobView,
    ReadModels,
    SetAside,
)
from core.ledger.records import (
    MIN_JOB_ID_PREFIX,
    AmbiguousJobIdError,
    AuditEntry,
    InvalidTransitionError,
    NodeRecord,
    QuarantineRecord,
    StoredInstance,
    UnknownJobError,
    WorkerRecord,
    WorkerStatus,
)
from core.ledger.retrievals import (
    RetrievalBusyError,
    RetrievalLedger,
    RetrievalProgress,
    RetrievalRecord,
    RetrievalState,
    RetrievalStudy,
    StudyPull,
    UnknownRetrievalError,
)
from core.ledger.series import SeriesLedger
from core.ledger.timeline import STAGES, Delivery, StageTimes, stage_times
from core.ledger.workers import WorkerLedger


class Ledger(
    SeriesLedger,
    QuarantineLedger,
    JobLedger,
    WorkerLedger,
    RetrievalLedger,
    AuditLedger,
    ReadModels,
    Activity,
    Drift,
    Agreement,
):
    """Typed access to the ledger database. Safe to share between threads.

    Its parts: instances, series and studies (:mod:`core.ledger.series`), jobs
    (:mod:`~core.ledger.jobs`), quarantine, workers, retrievals, the audit log, and the
    read models of the monitor (:mod:`~core.ledger.read_models`,
    :mod:`~core.ledger.activity`); the outbox and the processes' presence are reached
    through :class:`Outbox` and :class:`Presence` made from a ledger.
    """


__all__ = [
    "DISCARDED",
    "DISPLAY_STATES",
    "MIN_JOB_ID_PREFIX",
    "NOT_ROUTED_STATES",
    "STAGES",
    "AmbiguousJobIdError",
    "AuditEntry",
    "CounterKey",
    "Delivery",
    "DeliveryState",
    "DestinationActivity",
    "DestinationProblem",
    "Discard",
    "Distribution",
    "DoneRun",
    "DriftReading",
    "Finished",
    "InvalidTransitionError",
    "ItemKind",
    "JobDetail",
    "JobView",
    "Ledger",
    "ModelDrift",
    "NewItem",
    "NodeRecord",
    "Outbox",
    "OutboxItem",
    "Presence",
    "QuarantineRecord",
    "RetrievalBusyError",
    "RetrievalProgress",
    "RetrievalRecord",
    "RetrievalState",
    "RetrievalStudy",
    "SetAside",
    "StageTimes",
    "StoredInstance",
    "StudyPull",
    "UnknownJobError",
    "UnknownRetrievalError",
    "WeekDrift",
    "WorkerRecord",
    "WorkerStatus",
    "WorkerView",
    "add_to_counters",
    "counter_key",
    "result_items",
    "stage_times",
]
