"""Job states, their allowed transitions, and the records the ledger returns.

A job is one model run on one series for one route. Its life (DESIGN.md):
RECEIVING -> READY -> QUEUED -> RUNNING -> DELIVERING -> DONE, or FAILED with a reason,
or RETRYING after a transient failure, or NEEDS_REVIEW when its result is outside what the
model declares plausible and its route holds such results. A routed model that cannot
accept the series (decided from its headers when it completes, see
:mod:`models.acceptance`) gets a job in NOT_APPLICABLE with the reason, never queued.
Every transition is a ledger row with its time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    RECEIVING = "RECEIVING"
    READY = "READY"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DELIVERING = "DELIVERING"
    DONE = "DONE"
    FAILED = "FAILED"
    RETRYING = "RETRYING"
    #: The result is outside what its model declares plausible and is held (route
    #: ``on_implausible: hold``): not delivered until an operator releases it.
    NEEDS_REVIEW = "NEEDS_REVIEW"
    #: The routed model cannot accept the series (modality, attributes, extent ...),
    #: decided from its headers when it completed: never queued; the reason says why.
    NOT_APPLICABLE = "NOT_APPLICABLE"


_S = JobState
#: state -> states it may move to. QUEUED -> READY: the broker refused the message, so the
#: job waits to be queued again; RUNNING -> RUNNING is a redelivery after a worker died
#: mid-job (acks_late); RUNNING -> QUEUED: the reconciler queued it again because its
#: worker stopped answering; DONE/FAILED -> READY is a re-run (late or re-sent instances,
#: or an operator's retry), which replaces the results because their UIDs are
#: deterministic; DONE/FAILED -> DELIVERING is ``pacs-ai resend``. NEEDS_REVIEW (a result
#: held for review) -> DELIVERING is an operator's release, -> FAILED a discard, -> READY
#: a re-run. -> NOT_APPLICABLE: the series, completed (again), is one the model cannot
#: accept; NOT_APPLICABLE -> READY: received again, it now is.
ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _S.RECEIVING: frozenset({_S.READY, _S.FAILED}),
    _S.READY: frozenset({_S.QUEUED, _S.FAILED, _S.NOT_APPLICABLE}),
    _S.QUEUED: frozenset({_S.READY, _S.QUEUED, _S.RUNNING, _S.FAILED}),
    _S.RUNNING: frozenset(
        {_S.QUEUED, _S.RUNNING, _S.DELIVERING, _S.RETRYING, _S.FAILED, _S.NEEDS_REVIEW}
    ),
    _S.RETRYING: frozenset({_S.QUEUED, _S.RUNNING, _S.FAILED}),
    _S.DELIVERING: frozenset({_S.DONE, _S.RETRYING, _S.FAILED}),
    _S.DONE: frozenset({_S.READY, _S.DELIVERING, _S.NOT_APPLICABLE}),
    _S.FAILED: frozenset({_S.READY, _S.DELIVERING, _S.NOT_APPLICABLE}),
    _S.NEEDS_REVIEW: frozenset({_S.READY, _S.DELIVERING, _S.FAILED, _S.NOT_APPLICABLE}),
    _S.NOT_APPLICABLE: frozenset({_S.READY}),
}

TERMINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.NOT_APPLICABLE})


class SeriesState(StrEnum):
    """Where a received series stands before its jobs take over."""

    RECEIVING = "RECEIVING"
    #: Complete, and only ``trigger: study`` routes match: waiting for the whole study.
    WAITING_STUDY = "WAITING_STUDY"
    #: Complete and routed: its jobs (and forwards) exist.
    ROUTED = "ROUTED"
    #: Quiet period over and no route matched: kept and visible, not silently dropped.
    UNROUTED = "UNROUTED"
    #: Completed, but nothing could be done with it (reason recorded).
    FAILED = "FAILED"
    #: Forced complete with the ``discard`` policy: no jobs; data kept until retention.
    DISCARDED = "DISCARDED"
    #: Its spool data was removed by the retention policy.
    PURGED = "PURGED"


class StudyState(StrEnum):
    RECEIVING = "RECEIVING"
    ROUTED = "ROUTED"
    DISCARDED = "DISCARDED"


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One instance stored in the spool, as the SCP reports it to the ledger."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    received_at: float
    calling_ae: str
    called_ae: str
    peer: str
    modality: str | None = None


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    series_instance_uid: str
    study_instance_uid: str
    modality: str | None
    calling_ae: str
    called_ae: str
    peer: str
    first_received_at: float
    last_received_at: float
    instance_count: int
    resent_count: int
    state: SeriesState
    reason: str | None
    completed_at: float | None = None
    #: The first arrival of the current sending run (see :attr:`run_started_at`).
    receiving_since: float | None = None
    #: ``None``: a sender stored it; ``retrieved``: pulled from a PACS by pacs-ai.
    origin: str | None = None

    @property
    def run_started_at(self) -> float:
        """When the sending run that completes the series began: its first instance
        received since the series last completed (a re-sent series starts a new run)."""
        return self.first_received_at if self.receiving_since is None else self.receiving_since


@dataclass(frozen=True, slots=True)
class StudyRecord:
    study_instance_uid: str
    first_received_at: float
    last_received_at: float
    last_new_series_at: float
    series_count: int
    state: StudyState
    reason: str | None
    completed_at: float | None


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    series_instance_uid: str
    study_instance_uid: str
    route: str
    model_id: str
    destinations: tuple[str, ...]
    priority: int
    state: JobState
    reason: str | None
    attempts: int
    created_at: float
    updated_at: float
    result: dict[str, Any] = field(default_factory=dict)
    worker: str | None = None
    rerun_pending: bool = False
    #: Results kept in the node, never delivered unless re-sent (a shadow route's job).
    shadow: bool = False
    #: The series' last arrival when the job was (re)opened: what its results cover.
    input_received_at: float = 0.0


@dataclass(frozen=True, slots=True)
class JobEvent:
    job_id: str
    state: JobState
    at: float
    reason: str | None
    detail: dict[str, Any] = field(default_factory=dict)
    #: ``transition`` (the job entered ``state``) or ``note`` (a fact recorded while in it).
    kind: str = "transition"

    @property
    def is_transition(self) -> bool:
        return self.kind == "transition"
