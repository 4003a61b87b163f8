"""Messages that cross the broker, and the names of the tasks and queues that carry them.

A message carries only identifiers: the ledger is the source of truth for everything
else, so a message re-delivered after a crash cannot carry stale state.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Celery task names are explicit and versioned; a v2 message gets a v2 task.
RUN_JOB_TASK = "pacs_ai.run_job.v1"

_QUEUE_PREFIX = "pacs_ai.model."


def model_queue(model_id: str) -> str:
    """The queue that carries jobs for ``model_id`` (workers subscribe per model)."""
    return f"{_QUEUE_PREFIX}{model_id}"


class RunJobMessage(BaseModel):
    """Run job ``job_id``: model ``model_id`` on series ``series_uid``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    job_id: Annotated[str, Field(min_length=1, max_length=32)]
    model_id: Annotated[str, Field(min_length=1, max_length=64)]
    series_uid: Annotated[str, Field(min_length=1, max_length=64)]
