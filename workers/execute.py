"""Running one job: series -> model -> result objects -> outbox, recorded in the ledger.

The worker reads the series, runs the model, writes the result objects that the output
profiles of the job's destinations ask for (``destinations.<name>.outputs``: SEG, SR,
Secondary Capture, PDF) and puts in each destination's outbox what its profile names
(job DELIVERING); the delivery service in the node sends them (``delivery.py``), so a GPU
worker never waits on a PACS. The three outcomes of STYLE.md:

* transient (a resource briefly away) -> RETRYING, retried with backoff until
  ``worker.max_attempts``, then FAILED;
* invalid input (missing slices, wrong modality, permanent rejection) -> FAILED with the
  reason and a quarantine record; never retried;
* anything else is a bug: logged once with its traceback, quarantined, FAILED, re-raised.

Before anything is written the result is checked against what the model declares
plausible (``expect:``, :mod:`inference.plausibility`). A result outside it is held, the
job NEEDS_REVIEW with the reason and its results written but not delivered until an
operator releases them (route ``on_implausible: hold``, the default), or delivered
flagged (``deliver_flagged``: Series Descriptions ``CHECK ...``, the SR saying what was out
of range, the job DONE with that reason).

Idempotent under ``acks_late``: a message for a job that got as far as DELIVERING is
ignored, and result UIDs are derived from the job's inputs, so a re-run replaces.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidInputError, TransientError
from core.jobs import JobRecord, JobState
from core.logs import log_context
from core.messages import RunJobMessage
from core.outbox import Outbox
from core.output_profiles import DEFAULT_PROFILE, OutputProfile
from core.quarantine import QuarantineEntry
from workers.delivery import result_items
from workers.runtime import WorkerRuntime

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the Celery task does next: nothing, or retry after ``retry_in`` seconds."""

    state: JobState | None
    retry_in: float | None = None


class JobExecutor:
    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime

    def run(self, message: RunJobMessage, *, worker: str) -> Outcome:
        ledger = self.runtime.ledger
        with log_context(job_id=message.job_id, series_uid=message.series_uid):
            job = ledger.get_job(message.job_id)
            if job.state in (
                JobState.DELIVERING,
                JobState.DONE,
                JobState.FAILED,
                JobState.NEEDS_REVIEW,
            ):
                # acks_late: the message of a job that got this far can come again.
                logger.info("job already %s; ignoring a duplicate message", job.state)
                return Outcome(state=None)
            attempt = job.attempts + 1
            job = ledger.transition(
                job.job_id,
                JobState.RUNNING,
                count_attempt=True,
                detail={"worker": worker, "attempt": attempt, "device": self.runtime.device},
            )
            self.runtime.job_started(job.job_id)
            try:
                self._process(job)
            except TransientError as exc:
                return self._transient(job, attempt, exc)
            except InvalidInputError as exc:
                self._fail(job, attempt, exc, stage=exc.stage)
                return Outcome(state=JobState.FAILED)
            except Exception as exc:
                logger.exception("job failed with an unexpected error")
                self._fail(job, attempt, exc, stage="bug")
                raise
            finally:
                self.runtime.job_finished()
            return Outcome(state=ledger.get_job(job.job_id).state)

    def _process(self, job: JobRecord) -> None:
        from inference.plausibility import check_plausibility  # noqa: PLC0415
        from inference.results import load_and_predict, write_results  # noqa: PLC0415

        ledger = self.runtime.ledger
        settings = self.runtime.settings
        instances = ledger.series_instances(job.series_instance_uid)
        runner = self.runtime.runner(job.model_id)
        manifest = runner.manifest
        paths = [Path(instance.path) for instance in instances]
        prefetcher = self.runtime.prefetcher
        ahead = prefetcher.take(job.job_id, paths) if prefetcher is not None else None
        volume, prediction, timings = load_and_predict(
            runner,
            paths,
            volume=ahead[0] if ahead else None,
            before_predict=(lambda: prefetcher.prefetch_next(job.job_id)) if prefetcher else None,
        )
        if ahead is not None:
            ledger.note(
                job.job_id, f"series read ahead while the previous job ran ({ahead[1]:.2f} s)"
            )
        started = time.perf_counter()
        verdict = check_plausibility(volume, prediction, manifest)
        timings["check"] = time.perf_counter() - started
        action = self._on_implausible(job)
        flagged = verdict if not verdict.ok and action == "deliver_flagged" else None
        started = time.perf_counter()
        written = write_results(
            volume,
            prediction,
            manifest,
            out_dir=settings.results_dir / job.job_id,
            profiles=self._profiles(job),
            flagged=flagged,
        )
        timings["write"] = time.perf_counter() - started
        for note in volume.notes:
            ledger.note(job.job_id, note)
        for fallback in prediction.fallbacks:
            ledger.note(
                job.job_id,
                f"backend {fallback.backend}/{fallback.precision} skipped: {fallback.reason}",
            )
        result = {
            "instances": len(instances),
            "model_version": manifest.version,
            "backend": prediction.backend,
            "precision": prediction.precision,
            "device": prediction.device,
            "files": [str(file.path) for file in written.files],
            # What each destination gets: kind, SOP Instance UID and SOP Class UID, path.
            "deliveries": {
                name: [[f.kind, f.sop_instance_uid, f.sop_class_uid, str(f.path)] for f in files]
                for name, files in written.deliveries.items()
            },
            "seg_sop_instance_uid": written.seg_sop_instance_uid,
            "sr_sop_instance_uid": written.sr_sop_instance_uid,
            "measurements_ml": written.measurements_ml,
            "plausibility": {**verdict.as_dict(), "on_implausible": action},
        }
        logger.info(
            "model %s ran in %s",
            job.model_id,
            ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()),
        )
        if verdict.ok:
            self._hand_over(job, result, timings)
        elif flagged is None:
            reason = f"held for review: {verdict.reason}"
            ledger.transition(
                job.job_id,
                JobState.NEEDS_REVIEW,
                reason=reason,
                result=result,
                detail={"timings": timings},
            )
            logger.warning("result outside the model's expectations, %s", reason)
        else:
            flag = f"delivered flagged CHECK: {verdict.reason}"
            result["flagged"] = flag
            ledger.note(job.job_id, flag)
            logger.warning("result outside the model's expectations, %s", flag)
            self._hand_over(job, result, timings)

    def _on_implausible(self, job: JobRecord) -> str:
        """The job's route's ``on_implausible`` (``hold`` for a route no longer configured)."""
        routes = self.runtime.settings.routes
        route = next((r for r in routes if r.name == job.route), None)
        return route.on_implausible if route is not None else "hold"

    def _profiles(self, job: JobRecord) -> dict[str, OutputProfile]:
        """The output profile of each of the job's destinations (no destination: the
        default profile, whose results are kept)."""
        if not job.destinations:
            return {"": DEFAULT_PROFILE}
        configured = self.runtime.settings.destinations
        # A destination removed from the configuration meanwhile: the delivery service
        # refuses its items with that reason; what it gets does not matter.
        return {
            name: configured[name].outputs if name in configured else DEFAULT_PROFILE
            for name in job.destinations
        }

    def _hand_over(self, job: JobRecord, result: dict[str, Any], timings: dict[str, float]) -> None:
        """Put the results in the outbox for the delivery service, and move the job on."""
        ledger = self.runtime.ledger
        deliveries: dict[str, list[list[str]]] = result["deliveries"]
        detail = {"timings": timings}
        if not job.destinations:
            ledger.transition(job.job_id, JobState.DELIVERING, result=result, detail=detail)
            ledger.transition(job.job_id, JobState.DONE, reason="no destinations: results kept")
            return
        # Outbox first: a crash before the transition leaves the job RUNNING (the
        # reconciler runs it again); the other order could leave a job DELIVERING forever.
        items = [
            item
            for name in job.destinations
            for item in result_items(
                job_id=job.job_id,
                series_uid=job.series_instance_uid,
                route=job.route,
                destinations=[name],
                files=[
                    (uid, sop_class, Path(path)) for _, uid, sop_class, path in deliveries[name]
                ],
            )
        ]
        Outbox(ledger).add(items)
        ledger.transition(job.job_id, JobState.DELIVERING, result=result, detail=detail)
        logger.info(
            "results handed to delivery: %s",
            ", ".join(f"{len(deliveries[name])} objects for {name}" for name in job.destinations),
        )

    def _transient(self, job: JobRecord, attempt: int, exc: TransientError) -> Outcome:
        worker = self.runtime.settings.worker
        if attempt >= worker.max_attempts:
            self._fail(job, attempt, exc, stage="transient", prefix="gave up after retries: ")
            return Outcome(state=JobState.FAILED)
        delay = worker.retry_backoff_seconds * (2 ** (attempt - 1))
        logger.warning("attempt %d failed (%s); retrying in %.0f s", attempt, exc, delay)
        self.runtime.ledger.transition(
            job.job_id,
            JobState.RETRYING,
            reason=str(exc),
            detail={"attempt": attempt, "retry_in_seconds": delay},
        )
        return Outcome(state=JobState.RETRYING, retry_in=delay)

    def _fail(
        self, job: JobRecord, attempt: int, exc: BaseException, *, stage: str, prefix: str = ""
    ) -> None:
        reason = f"{prefix}{type(exc).__name__}: {exc}"
        entry = QuarantineEntry(
            stage=stage,
            error_type=type(exc).__name__,
            message=str(exc),
            attempts=attempt,
            uids={
                "StudyInstanceUID": job.study_instance_uid,
                "SeriesInstanceUID": job.series_instance_uid,
            },
            job_id=job.job_id,
            extra={"model_id": job.model_id, "route": job.route},
        )
        ledger = self.runtime.ledger
        # FAILED is recorded even if the quarantine record cannot be written: the job must
        # not look in flight forever. The series itself stays in the spool either way.
        ledger.transition(job.job_id, JobState.FAILED, reason=reason, detail={"attempt": attempt})
        folder = self.runtime.quarantine.put(entry, quarantine_id=f"job-{job.job_id}-{attempt}")
        ledger.record_quarantine(
            stage=stage,
            reason=reason,
            path=str(folder),
            series_uid=job.series_instance_uid,
            job_id=job.job_id,
        )
        logger.error("job failed (%s); series kept in the spool, see %s", reason, folder)
