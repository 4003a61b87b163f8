"""Reading the next series while the current one is inferred (one volume ahead).

With ``acks_late`` and prefetch 1 a worker never holds the next broker message, so the
next study's decode cannot come from Celery. The ledger knows what waits: when a job
starts, the prefetcher picks the most urgent QUEUED job of a model this worker serves and
reads its series into memory in a background thread, while the network runs (on a GPU the
main thread mostly waits for CUDA, so decoding is nearly free). When that job arrives here,
its volume is taken from the slot; if another worker took it, or instances arrived since
(the files changed), the slot is simply discarded. One volume at most is held.

A series on another machine (a remote worker, or another node's instances) is fetched over
DICOMweb in the same background thread (:class:`workers.fetch.SeriesFetcher`), so the
network transfer of the next series overlaps the current inference too; its files stay
in the fetch folder for the job, and are removed when another worker took it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.jobs import JobState
from core.ledger import Ledger
from inference.projection import load_projection, series_is_projection
from inference.volume import Volume, load_series
from workers.fetch import SeriesFetcher

logger = logging.getLogger(__name__)

Signature = tuple[tuple[str, int, int], ...]


def signature(paths: Sequence[Path]) -> Signature:
    """What identifies the content of a series on disk: each file's path, size and mtime."""
    entries = []
    for path in paths:
        stat = path.stat()
        entries.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


@dataclass(frozen=True)
class _Slot:
    job_id: str
    signature: Signature
    volume: Volume
    seconds: float


class VolumePrefetcher:
    """``models`` gives the models this worker serves, each with the missing slices its
    manifest lets the loader interpolate (:attr:`ModelManifest.max_missing_slices`)."""

    def __init__(
        self, ledger: Ledger, fetcher: SeriesFetcher, models: Callable[[], Mapping[str, int]]
    ) -> None:
        self._ledger = ledger
        self._fetcher = fetcher
        self._models = models
        self._lock = threading.Lock()
        self._slot: _Slot | None = None
        self._busy = False

    def holds(self, job_id: str) -> bool:
        """Whether the series of ``job_id`` has been read ahead."""
        with self._lock:
            return self._slot is not None and self._slot.job_id == job_id

    def take(self, job_id: str, paths: Sequence[Path]) -> tuple[Volume, float] | None:
        """The prefetched volume of ``job_id`` and its decode seconds, if still current."""
        with self._lock:
            slot, self._slot = self._slot, None
        if slot is None or slot.job_id != job_id:
            return None
        try:
            current = signature(paths)
        except OSError:
            return None
        if current != slot.signature:
            logger.info("prefetched series changed since it was read; reading it again")
            return None
        return slot.volume, slot.seconds

    def prefetch_next(self, current_job_id: str) -> None:
        """Start reading the next queued series for this worker, unless already busy."""
        with self._lock:
            if self._busy:
                return
            self._busy = True
        thread = threading.Thread(
            target=self._prefetch, args=(current_job_id,), name="prefetch", daemon=True
        )
        thread.start()

    def _prefetch(self, current_job_id: str) -> None:
        try:
            models = self._models()
            waiting = [
                job
                for job in self._ledger.jobs(states=[JobState.QUEUED], limit=200)
                if job.model_id in models and job.job_id != current_job_id
            ]
            if not waiting:
                return
            # The broker's order: most urgent priority first, then oldest.
            job = min(waiting, key=lambda j: (j.priority, j.updated_at))
            # One series read ahead at most: what was fetched for another is let go.
            self._fetcher.keep_only({current_job_id, job.job_id})
            instances = self._ledger.series_instances(job.series_instance_uid)
            fetched = self._fetcher.files(job, instances, ahead=True)
            if fetched.fetched:
                logger.info("fetched the next series ahead: %s", fetched.describe())
            paths = fetched.paths
            projection = series_is_projection(paths)
            if projection and len(paths) > 1:
                return  # the job itself picks the film its model accepts
            started = time.perf_counter()
            before = signature(paths)
            volume = (
                load_projection(paths)
                if projection
                else load_series(paths, max_missing=models[job.model_id])
            )
            slot = _Slot(job.job_id, before, volume, time.perf_counter() - started)
            with self._lock:
                self._slot = slot
            logger.info("prefetched series of job %s (%.2f s)", job.job_id, slot.seconds)
        except Exception as exc:  # noqa: BLE001 -- the job itself will meet and report it
            logger.info("could not prefetch the next series: %s", exc)
        finally:
            with self._lock:
                self._busy = False
