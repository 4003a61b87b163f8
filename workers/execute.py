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

A projection radiograph series with several films the model accepts (a PA and a lateral,
a repeat) is still one job: the model runs on each film, each film gets its own results
(one result series per kind for the job, an object per film numbered 1..N, see
:class:`inference.results.ResultPlace`), and all go to the outbox together. The job is
held if any film's result is implausible, the reason naming the film by its SOP Instance
UID.

A shadow job (a ``shadow: true`` route, ``pacs-ai run --keep``) writes its results for
its destinations' profiles as any other, puts nothing in the outbox and ends DONE: the
results stay in the node until ``pacs-ai resend`` delivers them.

Idempotent under ``acks_late``: a message for a job that got as far as DELIVERING, or
that another live worker is running, is ignored, and result UIDs are derived from the
job's inputs, so a re-run replaces.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import InvalidInputError, TransientError
from core.jobs import JobRecord, JobState
from core.ledger import Ledger, Outbox, result_items
from core.ledger.jobs import moved_result
from core.logs import log_context
from core.messages import RunJobMessage
from core.output_profiles import DEFAULT_PROFILE, OutputProfile
from core.quarantine import QuarantineEntry
from workers.fetch import NodeUnavailableError
from workers.runtime import WorkerRuntime

if TYPE_CHECKING:
    from collections.abc import Sequence

    from inference.plausibility import Plausibility
    from inference.results import Run, WrittenResults
    from inference.volume import Volume

logger = logging.getLogger(__name__)

#: The reason a shadow job ends DONE with.
SHADOW_KEPT = "shadow: results kept in the node, not delivered (pacs-ai resend delivers them)"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the Celery task does next: nothing, or retry after ``retry_in`` seconds."""

    state: JobState | None
    retry_in: float | None = None


def _input_name(volume: Volume) -> str:
    """How notes and reasons name one of several inputs of a job: ``radiograph <SOP
    Instance UID>`` for a film (never patient data), nothing for a volume."""
    if volume.projection is None:
        return ""
    return f"radiograph {volume.source_headers[0].SOPInstanceUID}"


def _result_record(
    runs: Sequence[Run],
    written: Sequence[WrittenResults],
    verdicts: Sequence[Plausibility],
    *,
    instances: int,
    version: str,
    node: str | None,
) -> dict[str, Any]:
    """The job's ``result`` in the ledger (JSON): what the dashboard, the delivery service
    and the CLI read. Of several films, ``seg_sop_instance_uid``, ``sr_sop_instance_uid``
    and ``measurements_ml`` are the first film's; ``images`` has each film's.

    ``files`` and the paths in ``deliveries`` are on the disk of ``node`` (``node``: the
    node that releases or re-sends them; None: any node). A remote worker's results are
    pointed at the node's copies once it holds them (:func:`moved_result`)."""
    first = written[0]
    prediction = runs[0].prediction
    result: dict[str, Any] = {
        "instances": instances,
        "model_version": version,
        "backend": prediction.backend,
        "precision": prediction.precision,
        "device": prediction.device,
        "files": [str(file.path) for results in written for file in results.files],
        # What each destination gets: kind, SOP Instance UID and SOP Class UID, path.
        "deliveries": {
            name: [
                [f.kind, f.sop_instance_uid, f.sop_class_uid, str(f.path)]
                for results in written
                for f in results.deliveries[name]
            ]
            for name in first.deliveries
        },
        "node": node,
        "seg_sop_instance_uid": first.seg_sop_instance_uid,
        "sr_sop_instance_uid": first.sr_sop_instance_uid,
        "measurements_ml": first.measurements_ml,
    }
    if runs[0].volume.projection is not None:
        result["images"] = [
            {
                "sop_instance_uid": str(run.volume.source_headers[0].SOPInstanceUID),
                "instance_number": number,
                "seg_sop_instance_uid": results.seg_sop_instance_uid,
                "sr_sop_instance_uid": results.sr_sop_instance_uid,
                "probabilities": results.probabilities,
                "plausibility": own.as_dict(),
            }
            for number, (run, results, own) in enumerate(
                zip(runs, written, verdicts, strict=True), start=1
            )
        ]
    return result


def _as_node_holds(ledger: Ledger, job: JobRecord, result: dict[str, Any]) -> dict[str, Any]:
    """``result`` pointing at the copies the node took into its outbox (STOW-RS), on the
    node's disk, instead of this worker's temporary files."""
    items = Outbox(ledger).items(job_id=job.job_id)
    nodes = {item.node for item in items}
    node = nodes.pop() if len(nodes) == 1 else None
    return moved_result(result, {item.sop_instance_uid: item.path for item in items}, node=node)


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
            if job.state is JobState.RUNNING and self._running_elsewhere(job, worker):
                # A broker connection lost mid-job (a Redis Sentinel failover) makes kombu
                # hand the running job's message out again. Its worker is alive, and if it
                # dies the reconciler queues the job again: a second run would only race it.
                logger.info("job already running on %s; ignoring a duplicate message", job.worker)
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
                self.runtime.fetcher.release(job.job_id)
                self.runtime.job_finished()
            return Outcome(state=ledger.get_job(job.job_id).state)

    def _running_elsewhere(self, job: JobRecord, worker: str) -> bool:
        """Whether another worker process runs ``job`` and still sends heartbeats (the
        reconciler's rule for a live worker)."""
        if job.worker is None or job.worker == worker:
            return False
        since = time.time() - self.runtime.settings.worker.lost_after_seconds
        return any(
            record.name == job.worker and record.stopped_at is None
            for record in self.runtime.ledger.workers(seen_since=since)
        )

    def _process(self, job: JobRecord) -> None:
        from inference.plausibility import check_plausibility, combined  # noqa: PLC0415
        from inference.results import ResultPlace, predict_each, write_results  # noqa: PLC0415

        ledger = self.runtime.ledger
        settings = self.runtime.settings
        instances = ledger.series_instances(job.series_instance_uid)
        runner = self.runtime.runner(job.model_id)
        manifest = runner.manifest
        # In place in the spool, or fetched over DICOMweb from the nodes that hold them.
        series = self.runtime.fetcher.files(job, instances)
        paths = series.paths
        if series.fetched:
            ledger.note(job.job_id, series.describe())
        prefetcher = self.runtime.prefetcher
        ahead = prefetcher.take(job.job_id, paths) if prefetcher is not None else None
        # One run for a volume; one per film the model accepts for a projection series.
        runs, series_notes = predict_each(
            runner,
            paths,
            volume=ahead[0] if ahead else None,
            before_predict=(lambda: prefetcher.prefetch_next(job.job_id)) if prefetcher else None,
        )
        if ahead is not None:
            ledger.note(
                job.job_id, f"series read ahead while the previous job ran ({ahead[1]:.2f} s)"
            )
        timings: dict[str, float] = {"fetch": series.seconds} if series.fetched else {}
        for run in runs:
            for stage, seconds in run.timings.items():
                timings[stage] = timings.get(stage, 0.0) + seconds
        several = len(runs) > 1
        names = [_input_name(run.volume) for run in runs]
        started = time.perf_counter()
        verdicts = [check_plausibility(run.volume, run.prediction, manifest) for run in runs]
        verdict = combined(list(zip(names, verdicts, strict=True)))
        timings["check"] = time.perf_counter() - started
        action = self._on_implausible(job)
        deliver_flagged = not verdict.ok and action == "deliver_flagged"
        started = time.perf_counter()
        out_dir = settings.results_dir / job.job_id
        # The results of every film share one result series per kind, numbered 1..N.
        written = [
            write_results(
                run.volume,
                run.prediction,
                manifest,
                out_dir=out_dir / f"image-{number}" if several else out_dir,
                profiles=self._profiles(job),
                flagged=own if deliver_flagged and not own.ok else None,
                place=ResultPlace(
                    instance_number=number,
                    series_source=runs[0].volume.source_headers[0],
                    flagged=deliver_flagged,
                ),
            )
            for number, (run, own) in enumerate(zip(runs, verdicts, strict=True), start=1)
        ]
        timings["write"] = time.perf_counter() - started
        for note in series_notes:
            ledger.note(job.job_id, note)
        for name, run in zip(names, runs, strict=True):
            for note in run.volume.notes:
                ledger.note(job.job_id, f"{name}: {note}" if several else note)
        fallbacks = {
            f"backend {fallback.backend}/{fallback.precision} skipped: {fallback.reason}": None
            for run in runs
            for fallback in run.prediction.fallbacks
        }
        for note in fallbacks:
            ledger.note(job.job_id, note)
        result = _result_record(
            runs,
            written,
            verdicts,
            instances=len(instances),
            version=manifest.version,
            # The node on this machine (whose disk holds the files); a remote worker's are
            # on no node's disk until it hands them back.
            node=self.runtime.fetcher.node_here(),
        )
        result["plausibility"] = {**verdict.as_dict(), "on_implausible": action}
        logger.info(
            "model %s ran in %s",
            job.model_id,
            ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()),
        )
        if verdict.ok:
            self._hand_over(job, result, timings)
        elif not deliver_flagged:
            reason = f"held for review: {verdict.reason}"
            ledger.transition(
                job.job_id,
                JobState.NEEDS_REVIEW,
                reason=reason,
                result=result,
                detail={"timings": timings},
            )
            logger.warning("result outside the model's expectations, %s", reason)
            self._keep_at_node(job, result, held=True)
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
            self._keep_at_node(job, result)
            ledger.transition(job.job_id, JobState.DONE, reason="no destinations: results kept")
            return
        if job.shadow:
            # Written for each destination's profile, so that `pacs-ai resend` can deliver
            # them as they are; nothing goes to the outbox now.
            ledger.transition(job.job_id, JobState.DELIVERING, result=result, detail=detail)
            self._keep_at_node(job, result)
            ledger.transition(job.job_id, JobState.DONE, reason=SHADOW_KEPT)
            logger.info("shadow job: results kept in the node, not delivered")
            return
        uploader = self.runtime.uploader
        if uploader is not None:
            # No shared disk: the node takes the objects (STOW-RS) into its outbox first,
            # then the job moves on, in the same order as below and for the same reason.
            count = uploader.deliver(job, deliveries)
            # The record names the node's copies, not this worker's, removed below.
            result = _as_node_holds(ledger, job, result)
            ledger.transition(job.job_id, JobState.DELIVERING, result=result, detail=detail)
            ledger.note(job.job_id, f"{count} result object(s) handed to the node over STOW-RS")
            uploader.remove_local_copies(job)
            return
        # Outbox first: a crash before the transition leaves the job RUNNING (the
        # reconciler runs it again); the other order could leave a job DELIVERING forever.
        node: str | None = result["node"]
        items = [
            item
            for name in job.destinations
            for item in result_items(
                job_id=job.job_id,
                series_uid=job.series_instance_uid,
                route=job.route,
                destinations=[name],
                # The node on this machine delivers them (the files are on its disk).
                node=node,
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

    def _keep_at_node(self, job: JobRecord, result: dict[str, Any], *, held: bool = False) -> None:
        """A remote worker's results that are not delivered now go to the node to keep
        (an operator releases or re-sends them there); nothing for a local worker."""
        uploader = self.runtime.uploader
        if uploader is None:
            return
        try:
            count = uploader.keep(job, result["deliveries"])
        except TransientError as exc:
            if not held:
                raise
            # Held for review already: the job stays so; a retry makes the results again.
            logger.warning("held results not handed to the node: %s", exc)
            self.runtime.ledger.note(
                job.job_id,
                f"the held results could not be handed to the node ({exc}); retry the job "
                "to make them again before releasing it",
            )
            return
        self.runtime.ledger.note(job.job_id, f"{count} result object(s) kept by the node")
        uploader.remove_local_copies(job)

    def _transient(self, job: JobRecord, attempt: int, exc: TransientError) -> Outcome:
        worker = self.runtime.settings.worker
        if isinstance(exc, NodeUnavailableError):
            # Not the job's fault: it waits for the node, however long, and keeps its
            # attempts for failures of its own.
            delay = worker.node_retry_seconds
            logger.warning("%s; trying again in %.0f s", exc, delay)
            self.runtime.ledger.transition(
                job.job_id,
                JobState.RETRYING,
                reason=f"{exc}; trying again every {delay:g} s",
                detail={"node": exc.node, "retry_in_seconds": delay},
                refund_attempt=True,
            )
            return Outcome(state=JobState.RETRYING, retry_in=delay)
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
