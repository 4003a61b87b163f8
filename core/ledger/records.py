"""What the ledger hands out: worker, stored and quarantined instance records; its errors."""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import PacsAiError


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    name: str
    host: str
    pid: int
    device: str
    models: tuple[str, ...]
    started_at: float
    heartbeat_at: float


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
