"""Stage times and turnaround of a job: one definition for the dashboard, ``pacs-ai
status`` and ``/metrics``.

A job's *run* starts at its READY transition (the series completed and was routed) and
ends DONE or FAILED; a re-run (late instances, an operator's retry) starts a new run at
its next READY, and the times below are those of the latest run. ``pacs-ai resend``
continues the run (DONE/FAILED -> DELIVERING -> DONE).

========== =========================================================================
stage      from -> to
========== =========================================================================
receive    first image of the sending run received -> last image received
complete   last image received -> the first READY after it (quiet period, routing)
queue      READY (of the run) -> first RUNNING (waiting in the broker for a worker)
infer      first RUNNING -> DELIVERING (read, model, SEG/SR written; retries included)
deliver    DELIVERING -> results accepted by every destination
turnaround last image received -> results accepted by the PACS
========== =========================================================================

A *sending run* is what completed the series this time: the instances received since it
last completed (the ledger records a RECEIVING event at the run's first instance), so a
series sent again an hour later shows the seconds of its second sending, not an hour.
``first_received`` is the fallback for jobs recorded before these events existed.

"Results accepted" is the ``sent_at`` of the job's last outbox item to be stored (the
destination answered Success); a job without destinations has no deliver stage and no
turnaround. "Last image received" is the newest arrival the run covers
(``jobs.input_received_at``). For a run an operator started again (retry) without new
images, *complete* is still the original completion, *queue* starts at the retry, and the
turnaround includes the time until the retry: it is what the PACS user waited.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core.jobs import JobEvent, JobState

STAGES: tuple[str, ...] = ("receive", "complete", "queue", "infer", "deliver")

_TERMINAL = (JobState.DONE, JobState.FAILED, JobState.NOT_APPLICABLE)
#: States after which a READY begins a new run (a result held for review, re-run).
_RUN_ENDS = (*_TERMINAL, JobState.NEEDS_REVIEW)


@dataclass(frozen=True, slots=True)
class StageTimes:
    """Timestamps (epoch seconds) of the latest run of a job; ``None`` where not reached."""

    first_received: float | None = None
    last_received: float | None = None
    #: The series completed: the first READY at or after the last image.
    completed: float | None = None
    #: The run began (READY; later than ``completed`` for a retry).
    ready: float | None = None
    queued: float | None = None
    running: float | None = None
    delivering: float | None = None
    #: When the run ended DONE or FAILED (the latest such transition).
    finished: float | None = None
    #: When the last result was accepted by its destination (all of them SENT).
    accepted: float | None = None

    def durations(self) -> dict[str, float | None]:
        """Seconds per stage (see the module docstring); ``None`` where not known yet."""
        return {
            "receive": _span(self.first_received, self.last_received),
            "complete": _span(self.last_received, self.completed),
            "queue": _span(self.ready, self.running),
            "infer": _span(self.running, self.delivering),
            "deliver": _span(self.delivering, self.accepted),
        }

    @property
    def turnaround(self) -> float | None:
        """Last image received -> results accepted by the PACS, in seconds."""
        return _span(self.last_received, self.accepted)

    def as_dict(self) -> dict[str, float | None]:
        return {
            "first_received": self.first_received,
            "last_received": self.last_received,
            "completed": self.completed,
            "ready": self.ready,
            "queued": self.queued,
            "running": self.running,
            "delivering": self.delivering,
            "finished": self.finished,
            "accepted": self.accepted,
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox item of a job, as far as timing goes."""

    state: str
    sent_at: float | None


def stage_times(
    events: Sequence[JobEvent],
    *,
    first_received: float | None,
    last_received: float | None,
    deliveries: Iterable[Delivery] = (),
) -> StageTimes:
    """The stage timestamps of the latest run of a job, from its ledger events.

    ``events`` in ledger order; notes (``kind`` ``note``) are not transitions and are
    ignored. ``deliveries`` are the job's result items in the outbox.
    """
    transitions = [e for e in events if e.is_transition]
    start = 0
    previous: JobState | None = None
    for index, event in enumerate(transitions):
        # A READY after the job ended (or the very first) begins a new run; READY after
        # QUEUED is the broker refusing a message, within the same run.
        if event.state == JobState.READY and (previous is None or previous in _RUN_ENDS):
            start = index
        if event.state != JobState.RECEIVING:
            previous = event.state
    run = transitions[start:]
    # The run's own sending run: the ledger records a RECEIVING event at the first
    # instance of each run that completed the series (a re-sent series starts anew).
    run_received = [e.at for e in transitions[:start] if e.state == JobState.RECEIVING]
    if run_received:
        first_received = run_received[-1]

    def first(state: JobState) -> float | None:
        return next((e.at for e in run if e.state == state), None)

    finished = next((e.at for e in reversed(run) if e.state in _TERMINAL), None)
    if run and run[-1].state not in _TERMINAL:
        finished = None
    running = first(JobState.RUNNING)
    completed = next(
        (
            e.at
            for e in transitions
            if e.state == JobState.READY and (last_received is None or e.at >= last_received)
        ),
        None,
    )
    items = list(deliveries)
    accepted = None
    if items and all(item.state == "SENT" and item.sent_at is not None for item in items):
        accepted = max(item.sent_at for item in items if item.sent_at is not None)
        # Items sent in an earlier run are not this run's results. (The worker puts its
        # results in the outbox just before it records DELIVERING, and the delivery
        # service may send them in between: RUNNING is the bound, not DELIVERING.)
        if running is None or accepted < running:
            accepted = None
    return StageTimes(
        first_received=first_received,
        last_received=last_received,
        completed=completed,
        ready=first(JobState.READY),
        queued=first(JobState.QUEUED),
        running=running,
        delivering=first(JobState.DELIVERING),
        finished=finished,
        accepted=accepted,
    )


def _span(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, end - start)
