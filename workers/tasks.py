"""The Celery task that runs a job, and the worker-process hooks that keep models warm."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from celery.signals import (
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from pydantic import ValidationError

from core.messages import RUN_JOB_TASK, RunJobMessage
from core.settings import Settings
from workers.execute import JobExecutor
from workers.runtime import WorkerRuntime

logger = logging.getLogger(__name__)

#: conf key carrying the validated settings (JSON) into worker processes.
SETTINGS_KEY = "pacs_ai_settings"
#: conf key listing the models to warm up when a worker process starts.
WARM_MODELS_KEY = "pacs_ai_warm_models"
#: conf key with the worker's name, as recorded in the ledger's heartbeat.
NAME_KEY = "pacs_ai_worker_name"


class _Process:
    """This worker process's runtime, created after the fork (one per process)."""

    runtime: WorkerRuntime | None = None

    @classmethod
    def get(cls, app: Celery) -> WorkerRuntime:
        if cls.runtime is None:
            settings = Settings.model_validate_json(app.conf[SETTINGS_KEY])
            cls.runtime = WorkerRuntime(settings, name=str(app.conf.get(NAME_KEY)))
        return cls.runtime


def register_tasks(app: Celery) -> None:
    """Register the job task on ``app`` and warm models when worker processes start."""

    @app.task(
        name=RUN_JOB_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None
    )
    def run_job(self: Task[Any, Any], message: dict[str, Any]) -> None:
        try:
            parsed = RunJobMessage.model_validate(message)
        except ValidationError as exc:
            # Nothing to retry or record against: a message we cannot read is dropped, loudly.
            logger.error("dropping a malformed job message %r: %s", message, exc)  # noqa: TRY400
            return
        runtime = _Process.get(self.app)
        outcome = JobExecutor(runtime).run(parsed, worker=runtime.identity)
        if outcome.retry_in is not None:
            raise self.retry(countdown=outcome.retry_in)

    def warm() -> None:
        _Process.get(app).warm_up(list(app.conf.get(WARM_MODELS_KEY) or []))

    @worker_process_init.connect(weak=False)
    def _warm_pool_process(**_kwargs: Any) -> None:
        # prefork: runs in the child after the fork, where CUDA may be initialised.
        warm()

    @worker_ready.connect(weak=False)
    def _warm_solo(**_kwargs: Any) -> None:
        # solo: jobs run in the main process, which no pool process init reaches.
        if app.conf.worker_pool == "solo":
            warm()

    @worker_process_shutdown.connect(weak=False)
    def _close(**_kwargs: Any) -> None:
        if _Process.runtime is not None:
            _Process.runtime.close()
            _Process.runtime = None

    @worker_shutdown.connect(weak=False)
    def _close_solo(**_kwargs: Any) -> None:
        # solo: the runtime lives in the main process, which no pool process shutdown
        # reaches; closing it records the clean stop (prefork children did so already).
        _close()
