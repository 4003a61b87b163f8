"""Starting a pacs-ai worker: one Celery worker per GPU, concurrency 1, models warm.

``pacs-ai worker`` calls :func:`run_worker`. The parent process never imports torch: the
prefork child does, after the fork, in ``worker_process_init`` (see ``tasks.py``).
"""

from __future__ import annotations

import json
import logging
import os
import socket

from celery import Celery

from core.broker import uses_embedded_broker, wait_for_embedded_broker
from core.messages import model_queue
from core.queue import make_celery, queues_for
from core.settings import Settings
from models.registry import ModelRegistry
from workers.runtime import preflight_models
from workers.tasks import NAME_KEY, SETTINGS_KEY, WARM_MODELS_KEY, register_tasks

logger = logging.getLogger(__name__)


def create_worker_app(settings: Settings, *, models: list[str], name: str) -> Celery:
    app = make_celery(settings)
    app.conf[SETTINGS_KEY] = worker_settings_json(settings)
    app.conf[WARM_MODELS_KEY] = models
    app.conf[NAME_KEY] = name
    app.conf.task_queues = queues_for(models)
    register_tasks(app)
    return app


def worker_settings_json(settings: Settings) -> str:
    """The settings as the worker processes receive them (JSON, in this process's memory
    only): secrets are masked, except the one they use, ``worker.fetch_token``."""
    data = json.loads(settings.model_dump_json())
    token = settings.worker.fetch_token
    if token is not None:
        data["worker"]["fetch_token"] = token.get_secret_value()
    return json.dumps(data)


def select_models(settings: Settings, requested: list[str] | None) -> list[str]:
    """The models this worker serves: those requested, else every installed one.

    Raises:
        ConfigError: a requested model has no valid package (the registry says which).
    """
    registry = ModelRegistry.discover(settings.model_dirs)
    if not requested:
        return registry.ids
    for model_id in requested:
        registry.get(model_id)
    return requested


def run_worker(
    settings: Settings,
    *,
    models: list[str] | None = None,
    gpu: int | None = None,
    pool: str = "prefork",
    hostname: str | None = None,
    log_level: str = "INFO",
) -> None:
    """Run a worker until it is stopped (SIGTERM / Ctrl-C finish the current job first)."""
    if gpu is not None:
        # Before any CUDA initialisation: this process, and the pool child, see one GPU.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    served = select_models(settings, models)
    # Refuse to start with a broken package (schema, checksum, dry run; engines built).
    preflight_models(settings, served)
    if uses_embedded_broker(settings):
        wait_for_embedded_broker(settings, timeout=120)
    role = f"gpu{gpu}" if gpu is not None else "worker"
    name = hostname or f"pacs-ai-{role}@{socket.gethostname()}"
    app = create_worker_app(settings, models=served, name=name)
    app.conf.worker_pool = pool
    logger.info("worker %s serving %s", name, ", ".join(model_queue(m) for m in served))
    worker = app.Worker(
        hostname=name,
        queues=[model_queue(m) for m in served],
        concurrency=1,
        pool=pool,
        loglevel=log_level,
        without_gossip=True,
        without_mingle=True,
    )
    worker.start()
