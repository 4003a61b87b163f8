"""What a worker process keeps between jobs: settings, ledger, and warm models.

One runtime per worker process, created after the fork (CUDA must not be initialised in
the parent of a prefork pool), holding each model opened once on its backend.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from core.errors import ConfigError
from core.ledger import Ledger, Presence, WorkerStatus
from core.periodic import Periodic
from core.quarantine import Quarantine
from core.settings import Settings
from models.engine_cache import default_engine_dir
from models.registry import ModelRegistry
from workers.fetch import SeriesFetcher
from workers.hand_back import ResultUploader
from workers.prefetch import VolumePrefetcher

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    # Imported at run time only inside the worker process: the pipeline imports torch.
    from inference.pipeline import ModelRunner


def pick_device(preference: str) -> str:
    """``cuda:0`` when asked for (or ``auto`` and available), else ``cpu``."""
    import torch  # noqa: PLC0415 -- framework imported only in worker processes

    if preference == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda:0"
    if preference == "cuda":
        raise RuntimeError("worker.device is 'cuda' but no CUDA device is visible")
    return "cpu"


def gpu_status(device: str) -> WorkerStatus:
    """The GPU behind ``device`` (name, memory in use on the whole device, utilisation
    where NVML can tell), for the heartbeat; empty for ``cpu``."""
    if not device.startswith("cuda"):
        return WorkerStatus()
    import torch  # noqa: PLC0415 -- framework imported only in worker processes

    index = torch.device(device).index or 0
    free, total = torch.cuda.mem_get_info(index)
    utilisation: float | None
    try:
        utilisation = float(torch.cuda.utilization(index)) / 100.0
    except (ImportError, RuntimeError, OSError) as exc:
        # torch reads utilisation through NVML (pynvml / nvidia-ml-py), which is optional.
        logger.debug("GPU utilisation unavailable: %s", exc)
        utilisation = None
    return WorkerStatus(
        gpu_name=torch.cuda.get_device_name(index),
        gpu_memory_used=float(total - free),
        gpu_memory_total=float(total),
        gpu_utilisation=utilisation,
    )


class WorkerRuntime:
    """``name`` is the Celery worker's name; the process adds its pid to it, so that a
    restarted worker is told apart from the one it replaces (whose jobs are lost)."""

    def __init__(self, settings: Settings, *, name: str = "pacs-ai-worker") -> None:
        from inference import decode_pool  # noqa: PLC0415
        from inference.pipeline import ModelRunner  # noqa: PLC0415

        self.settings = settings
        decode_pool.configure(settings.worker.decode_processes)
        # Started now, like the models: the first series does not wait for them.
        decode_pool.pool()
        self.identity = f"{name}:{os.getpid()}"
        self.ledger = Ledger(settings.resolved_ledger_url)
        # A brand-new ledger is created; one of another release refused (`pacs-ai db upgrade`).
        self.ledger.require_current_schema()
        self.quarantine = Quarantine(settings.quarantine_dir)
        # Series in the spool, or fetched over DICOMweb (worker.fetch_from, other nodes);
        # results handed back over DICOMweb by a worker that shares no disk with the node.
        self.fetcher = SeriesFetcher(settings, self.ledger)
        self.fetcher.remove_leftovers()
        self.uploader = ResultUploader(settings) if settings.worker.fetch_from else None
        self.registry = ModelRegistry.discover(settings.model_dirs)
        self.device = pick_device(settings.worker.device)
        self._runner_type = ModelRunner
        self._runners: dict[str, ModelRunner] = {}
        self._lock = threading.Lock()
        self._prefetcher: VolumePrefetcher | None = None
        # For the dashboard: what this process runs now, and how many jobs it finished.
        self._current_job: tuple[str, float] | None = None
        self._jobs_done = 0
        # Beats from a thread of their own, also while a long job runs: the reconciler
        # takes a silent worker for a dead one and queues its job again.
        self._heartbeat = Periodic("heartbeat", settings.worker.heartbeat_seconds, self.heartbeat)
        logger.info("worker process %s ready on %s", self.identity, self.device)

    def runner(self, model_id: str, *, at_start: bool = False) -> ModelRunner:
        """The warm runner of ``model_id`` (opened and warmed on first use)."""
        with self._lock:
            runner = self._runners.get(model_id)
            if runner is None:
                # TensorRT engines are built (under the cache's file lock) only while the
                # worker starts; a runner first opened inside a job never builds one.
                runner = self._runner_type(
                    self.registry.get(model_id),
                    device=self.device,
                    engine_dir=default_engine_dir(self.settings),
                    allow_build=at_start,
                )
                runner.warm_up()
                self._runners[model_id] = runner
            return runner

    def warm_up(self, model_ids: list[str]) -> None:
        """Open and warm ``model_ids``, then announce this worker and keep it announced."""
        for model_id in model_ids:
            self.runner(model_id, at_start=True)
        if model_ids:
            # What a job runs after the model: highdicom, the writers and their code
            # tables, imported now rather than inside the first job (1.3 s of imports
            # on 2 loaded cores).
            import inference.plausibility  # noqa: PLC0415
            import inference.results  # noqa: F401, PLC0415
        self.heartbeat()
        self._heartbeat.start()

    def heartbeat(self) -> None:
        current = self._current_job
        status = dataclasses.replace(
            gpu_status(self.device),
            current_job=current[0] if current else None,
            current_job_since=current[1] if current else None,
            jobs_done=self._jobs_done,
        )
        self.ledger.worker_heartbeat(
            self.identity,
            host=socket.gethostname(),
            pid=os.getpid(),
            device=self.device,
            models=sorted(self._runners),
            status=status,
        )

    @property
    def prefetcher(self) -> VolumePrefetcher | None:
        """The read-ahead of the next series, when ``worker.prefetch_next_series`` wants it."""
        choice = self.settings.worker.prefetch_next_series
        if choice == "off" or (choice == "auto" and not self.device.startswith("cuda")):
            return None
        if self._prefetcher is None:
            self._prefetcher = VolumePrefetcher(
                self.ledger,
                self.fetcher,
                lambda: {
                    model_id: runner.manifest.max_missing_slices
                    for model_id, runner in self._runners.items()
                },
            )
        return self._prefetcher

    def job_started(self, job_id: str) -> None:
        """Announce at once that this process runs ``job_id`` (the dashboard shows it)."""
        self._current_job = (job_id, time.time())
        self._beat_quietly()

    def job_finished(self) -> None:
        self._current_job = None
        self._jobs_done += 1
        self._beat_quietly()

    def _beat_quietly(self) -> None:
        # Only the dashboard reads this beat; a ledger hiccup here must not fail a job
        # (the periodic heartbeat carries the same a few seconds later).
        try:
            self.heartbeat()
        except Exception:
            logger.warning("could not record the worker status now", exc_info=True)

    def close(self) -> None:
        """Stop the heartbeat, record a clean stop (shown as stopped, not silent), and
        release the models."""
        self._heartbeat.stop(timeout=5)
        try:
            Presence(self.ledger).worker_stopped(self.identity)
        except Exception:
            # The ledger is away at shutdown: the heartbeat simply ages (shown as silent).
            logger.warning("could not record that the worker stopped", exc_info=True)
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()
        self.ledger.close()


def preflight_models(settings: Settings, model_ids: list[str], *, timeout: float = 900.0) -> None:
    """Verify the packages a worker is about to serve; refuse to start with a broken one.

    Each package's schema, weights checksums and a dry run (and, on a GPU, the TensorRT
    engine build under the cache's file lock) are checked in a *spawned* process, so that
    the worker's parent process never imports torch or initialises CUDA before it forks
    its pool (see ``inference.verify``).

    Raises:
        ConfigError: naming every broken package and each of its problems.
    """
    import multiprocessing  # noqa: PLC0415

    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        pending = pool.apply_async(_verify_in_child, (settings.model_dump_json(), model_ids))
        problems = pending.get(timeout=timeout)
    if problems:
        raise ConfigError("model packages", problems)
    logger.info("model packages verified: %s", ", ".join(model_ids) or "none")


def _verify_in_child(settings_json: str, model_ids: list[str]) -> list[str]:
    from inference.verify import verify_package  # noqa: PLC0415 -- imports torch

    settings = Settings.model_validate_json(settings_json)
    registry = ModelRegistry.discover(settings.model_dirs)
    device = pick_device(settings.worker.device)
    engine_dir = default_engine_dir(settings)
    problems: list[str] = []
    for model_id in model_ids:
        report = verify_package(registry.get(model_id), device=device, engine_dir=engine_dir)
        problems.extend(f"{model_id} ({report.folder}): {p}" for p in report.problems)
    return problems
