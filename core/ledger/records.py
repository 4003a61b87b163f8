"""What the ledger hands out: worker, node, stored and quarantined instance and audit
records; its errors."""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import PacsAiError
from core.quarantine import DOOR_STAGES


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """What a worker reports with its heartbeat besides being alive (for the dashboard)."""

    gpu_name: str | None = None
    gpu_memory_used: float | None = None
    gpu_memory_total: float | None = None
    #: 0..1, where the driver tells.
    gpu_utilisation: float | None = None
    current_job: str | None = None
    current_job_since: float | None = None
    jobs_done: int = 0


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A worker process as it last reported itself with its heartbeat."""

    name: str
    host: str
    pid: int
    device: str
    models: tuple[str, ...]
    started_at: float
    heartbeat_at: float
    #: When the worker process stopped cleanly; ``None`` while it runs (or if it died).
    stopped_at: float | None = None
    status: WorkerStatus = WorkerStatus()


class UnknownJobError(PacsAiError):
    """No job with this id exists in the ledger."""


class AmbiguousJobIdError(UnknownJobError):
    """A short job id that more than one job's id starts with."""


#: The fewest characters of a job id that name it (``pacs-ai status`` shows 8).
MIN_JOB_ID_PREFIX = 4
_JOB_ID_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_JOB_ID_PREFIX},32}}")


class InvalidTransitionError(PacsAiError):
    """A job was asked to move to a state its current state does not lead to."""


@dataclass(frozen=True, slots=True)
class StoredInstance:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    receive_count: int
    #: The node whose spool holds the bytes (``node.name``); None in older ledgers.
    node: str | None = None


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    quarantine_id: str
    at: float
    stage: str
    reason: str
    path: str
    sop_instance_uid: str | None
    series_uid: str | None
    job_id: str | None
    calling_ae: str | None

    @property
    def at_the_door(self) -> bool:
        """Refused before the node answered (malformed, reusing another series' UIDs)."""
        return self.stage in DOOR_STAGES


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A ``pacs-ai serve`` process as it last reported itself with its heartbeat."""

    name: str
    host: str
    pid: int
    ae_title: str
    port: int
    started_at: float
    heartbeat_at: float
    #: When it stopped cleanly; ``None`` while it runs (or if it died).
    stopped_at: float | None
    #: Its ``node.name`` (what ``instances.node`` names), and where it serves its spool to
    #: workers (``node.dicomweb_url``); None in older ledgers, or not configured.
    node: str | None = None
    dicomweb_url: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Who did what, when, from the dashboard, its API or the command line."""

    at: float
    actor: str
    role: str
    #: ``retry``, ``resend``, ``discard``, ``release``, ``login``, ...
    action: str
    job_id: str | None
    #: ``ok``, ``refused`` (not possible in the job's state) or ``denied`` (role).
    outcome: str
    #: JSON object (why, reason, result) or ``None``.
    detail: str | None
    remote: str | None
