"""Completion: when a series or a study has been received completely, and what then.

DICOM has no "end of series" message, so completion is inferred (``completion`` settings):

* a **series** is complete after ``series_quiet_seconds`` without a new instance, or at
  once when the association that sent it is released (``on_association_release``);
* a **study** is complete when all its series are, and either no new series has come for
  ``study_quiet_seconds`` or some ``trigger: study`` route's ``complete_when`` conditions
  are all met by received series (a CT with at least 50 instances, say);
* a series or study still receiving ``force_complete_seconds`` after its first instance
  (of this sending run, for a series received again after it completed) is forced:
  ``proceed`` routes it as it is, ``discard`` records it DISCARDED (the data stays in
  the spool until the retention policy removes it).

State lives in the ledger (arrival times per instance), so a restarted node completes a
half-received series afterwards. Time the node was down does not count as quiet time: a
series or study left receiving gets a full quiet period from the node's start, so a
sender that resumes after the outage is not cut off by a completion at start-up.

Several nodes sharing the ledger: a series is completed by one node holding some of it
(its claim in the ledger); a study by the one node whose conditional update of the study
row succeeds. That node applies the study routes to the series it holds and leaves those
only other nodes hold WAITING_STUDY, for a node holding each to read its header and
apply them (each series once, by a claim in the ledger; a series becomes ROUTED only once
its routes are applied, so one whose routing failed is routed again by the next pass,
with one node or several). ``complete_when`` sees the
series the deciding node holds; a study split across nodes otherwise completes by its
quiet period.

On completion each matching route (``routing.mode``: all, or the first) opens one job
per model (READY, then QUEUED on the broker) and puts the received instances in the
outbox of its ``forward_originals_to`` destinations. A model whose manifest's ``accepts``
the series' headers do not meet (:mod:`models.acceptance`: modality, attributes such as
EchoTime, physical extent; no pixel is read) gets its job in NOT_APPLICABLE with the
reason instead, never queued.
Series no route matches are recorded UNROUTED with every rule's reason.

Studies pulled from a PACS (:mod:`node_services.retrieve`): a series of a study still
being pulled never completes (however quiet); once the study is pulled, its series
complete at once and get the retrieval's models (route ``run`` or ``backfill``, a
backfill's jobs the least urgent), or the routing rules when it names none. Their origin
is recorded as ``retrieved``.

Late instances: any arrival puts its series (and study) back to RECEIVING; when it
completes again, its jobs run again and their results replace the earlier ones (same
derived UIDs). A job still in flight runs again as soon as it ends (see the ledger).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pydicom.dataset import Dataset

from core.errors import TransientError
from core.jobs import JobRecord, JobState, SeriesRecord, SeriesState, StudyRecord, StudyState
from core.ledger import (
    InvalidTransitionError,
    ItemKind,
    Ledger,
    NewItem,
    Outbox,
    RetrievalRecord,
    StoredInstance,
)
from core.ledger.retrievals import BACKFILL_ROUTE
from core.logs import log_context
from core.periodic import Periodic
from core.queue import JobQueue
from core.routing_rules import RouteSettings
from core.settings import CompletionSettings
from dicom_node.header import read_stored_header
from dicom_node.recorder import IngestRecorder
from dicom_node.routing import Arrival, Router, matches_conditions
from models.acceptance import SeriesFacts, facts_from_files, needs_geometry, refusal
from models.manifest import ModelManifest

logger = logging.getLogger(__name__)

#: Modalities of projection radiographs, whose series hold films of several views.
PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG", "IO", "PX"})
#: Films of one projection series whose headers are read to decide what a model accepts.
MAX_FILMS = 32

#: Results pacs-ai made itself (this Manufacturer, one of these modalities) are never
#: routed again, so a PACS that sends results back cannot make the node loop on its output.
OWN_MANUFACTURER = "pacs-ai"
OWN_RESULT_MODALITIES = frozenset({"SEG", "SR", "OT", "DOC"})

#: The origin recorded on a series pulled from a PACS (``pacs-ai run --from``, backfills).
RETRIEVED_ORIGIN = "retrieved"
#: Priority of a backfill's jobs: the least urgent, behind live traffic.
BACKFILL_PRIORITY = 9

#: Series of decided studies whose study routes one pass applies (the rest the next).
WAITING_SERIES_PER_PASS = 1000

_DONE_SERIES = {
    SeriesState.ROUTED,
    SeriesState.UNROUTED,
    SeriesState.WAITING_STUDY,
    SeriesState.FAILED,
    SeriesState.DISCARDED,
    SeriesState.PURGED,
}


class CompletionWatcher:
    """Completes series and studies, routes them and queues their jobs; a thread of its own."""

    def __init__(
        self,
        settings: CompletionSettings,
        *,
        ledger: Ledger,
        recorder: IngestRecorder,
        router: Router,
        queue: JobQueue,
        clock: Callable[[], float] = time.time,
        manifests: Mapping[str, ModelManifest] | None = None,
        node: str | None = None,
    ) -> None:
        """``manifests``: the installed models' manifests by id, whose ``accepts`` each
        completed series is checked against (a model not in it is queued unchecked).
        ``node``: this node's ``node.name``; with several nodes sharing the ledger, it
        completes only series it holds instances of, and only once (see :meth:`_claim`)."""
        self.settings = settings
        self._node = node
        self._ledger = ledger
        self._outbox = Outbox(ledger)
        self._recorder = recorder
        self._router = router
        self._queue = queue
        self._clock = clock
        # Quiet periods are measured from here at the earliest (see the module docstring).
        self._started_at = clock()
        self._released: set[str] = set()
        self._released_lock = threading.Lock()
        # Studies being pulled from a PACS, and pulled ones (node_services.retrieve).
        self._pulling: frozenset[str] = frozenset()
        self._pulled: frozenset[str] = frozenset()
        self._loop = Periodic("completion-watcher", settings.check_interval_seconds, self.run_once)
        self._broker_down_logged = False
        # While the broker is away, READY jobs are retried with backoff, not every tick.
        self._next_queue_attempt = 0.0
        self._queue_backoff = 1.0
        self._manifests: Mapping[str, ModelManifest] = manifests or {}
        # Header facts of the series routed in this pass, by (UID, last arrival, geometry).
        self._facts: dict[tuple[str, float, bool], SeriesFacts | None] = {}
        self._films: dict[tuple[str, float, bool], list[SeriesFacts]] = {}

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def association_released(self, series_uids: set[str]) -> None:
        """The sender released the association that brought these series (normal end)."""
        if self.settings.on_association_release:
            with self._released_lock:
                self._released.update(series_uids)

    def run_once(self) -> list[JobRecord]:
        """Complete what is complete, route it, queue READY jobs; return the jobs queued."""
        # Arrivals still in the recorder's hands would make a series look quieter than it is.
        self._recorder.flush()
        self._facts.clear()
        self._films.clear()
        now = self._clock()
        self._pulling, self._pulled = self._ledger.studies_in_retrieval()
        for series in self._complete_series(now):
            with log_context(series_uid=series.series_instance_uid):
                try:
                    self._route_series(series, now)
                except BaseException:
                    # Left claimed, the series would wait for the claim to expire.
                    self._ledger.release_claim(series)
                    raise
        for study_uid in self._pulled:
            # Its series all routed (or set aside): the retrieval is done with it.
            series_of_study = self._ledger.series_of_study(study_uid)
            if not any(s.state == SeriesState.RECEIVING for s in series_of_study):
                self._ledger.retrieval_study_routed(study_uid)
        for study in self._ledger.studies(state=StudyState.RECEIVING):
            with log_context(study_uid=study.study_instance_uid):
                self._check_study(study, now)
        self._route_waiting_series()
        return self._queue_ready()

    # -- series ----------------------------------------------------------------------------

    def _complete_series(self, now: float) -> list[SeriesRecord]:
        quiet_since = now - self.settings.series_quiet_seconds
        quiet = (
            self._ledger.quiet_series(last_received_before=quiet_since)
            if quiet_since >= self._started_at
            else []
        )
        # A study still being pulled from a PACS is not complete, however quiet (a pull
        # between two series, a backfill stopped mid-study); one pulled is, at once.
        quiet = [s for s in quiet if s.study_instance_uid not in self._pulling]
        with self._released_lock:
            released, self._released = self._released, set()
        candidates = {s.series_instance_uid: s for s in quiet}
        if released or self.settings.force_complete_seconds:
            for series in self._ledger.quiet_series(last_received_before=now):
                if (
                    series.series_instance_uid in released
                    or series.study_instance_uid in self._pulled
                ):
                    candidates[series.series_instance_uid] = series
                elif now - series.run_started_at >= self.settings.force_complete_seconds:
                    # From the first instance of this sending run: a series sent again
                    # days later is not forced complete at its first new instance.
                    if self.settings.force_policy == "discard":
                        if self._claim(series, now):
                            self._discard_series(series, now)
                        candidates.pop(series.series_instance_uid, None)
                    else:
                        logger.warning(
                            "series still receiving after %.0f s: forced complete",
                            now - series.run_started_at,
                        )
                        candidates[series.series_instance_uid] = series
        claimed = [s for s in candidates.values() if self._claim(s, now)]
        return sorted(claimed, key=lambda s: s.last_received_at)

    def _claim(self, series: SeriesRecord, now: float) -> bool:
        """Whether this node completes ``series``: it holds some of its instances (so it
        can read their headers) and its claim in the ledger succeeded, so that of several
        nodes sharing the ledger exactly one routes it, once."""
        if self._node is not None and not self._local_instances(series):
            return False
        return self._ledger.claim_completion(series, now=now)

    def _local_instances(self, series: SeriesRecord) -> list[StoredInstance]:
        """The series' instances whose files this node holds (all of them, in a ledger of
        one node)."""
        instances = self._ledger.series_instances(series.series_instance_uid)
        if self._node is None:
            return instances
        return [i for i in instances if i.node in (None, self._node)]

    def _discard_series(self, series: SeriesRecord, now: float) -> None:
        reason = (
            f"still receiving {now - series.run_started_at:.0f} s after its first instance: "
            "discarded by completion.force_policy (data kept until retention)"
        )
        logger.warning("series %s %s", series.series_instance_uid, reason)
        self._ledger.set_series_state(
            series.series_instance_uid, SeriesState.DISCARDED, reason, completed_at=now
        )

    def _route_series(self, series: SeriesRecord, now: float) -> None:
        header = self._header(series)
        if header is None:
            return
        if (
            str(header.get("Manufacturer", "")) == OWN_MANUFACTURER
            and str(header.get("Modality", "")) in OWN_RESULT_MODALITIES
        ):
            self._ledger.set_series_state(
                series.series_instance_uid,
                SeriesState.UNROUTED,
                "a pacs-ai result sent back to the node: never routed again (loop guard)",
                completed_at=now,
            )
            return
        pulled_by = self._ledger.retrieval_claim(series.study_instance_uid)
        if pulled_by is not None:
            self._ledger.set_series_origin(series.series_instance_uid, RETRIEVED_ORIGIN)
            if pulled_by.models:
                self._route_pulled(pulled_by, series, now)
                return
        arrival = Arrival(series.calling_ae, series.called_ae, series.peer)
        verdicts = self._router.explain(header, arrival)
        matched = self._router.matching(header, arrival)
        now_routes = [r for r in matched if r.trigger == "series"]
        logger.info(
            "series complete: %d instances (%d re-sent) from %s; routes: %s",
            series.instance_count,
            series.resent_count,
            series.calling_ae,
            ", ".join(f"{r.name} ({r.trigger})" for r in matched) or "none",
        )
        if not matched:
            reasons = "; ".join(f"{v.route.name}: {', '.join(v.reasons)}" for v in verdicts)
            # Which conditions failed, by name only: the values (a series description,
            # say) stay in the ledger, where `pacs-ai status` shows them.
            logger.info(
                "series %s not routed (UNROUTED): %s",
                series.series_instance_uid,
                "; ".join(
                    f"rule {v.route.name}: no match on {', '.join(v.failed)}" for v in verdicts
                )
                or "no routes configured",
            )
            self._ledger.set_series_state(
                series.series_instance_uid,
                SeriesState.UNROUTED,
                reasons or "no routes configured",
                completed_at=now,
            )
            return
        for route in now_routes:
            self._apply(
                route, series, reason=f"series quiet for {self.settings.series_quiet_seconds:g} s"
            )
        state = SeriesState.ROUTED if now_routes else SeriesState.WAITING_STUDY
        self._ledger.set_series_state(series.series_instance_uid, state, completed_at=now)

    def _route_pulled(self, retrieval: RetrievalRecord, series: SeriesRecord, now: float) -> None:
        """A series pulled from a PACS for named models (``pacs-ai run --models``, a
        backfill): their jobs, whatever the routing rules say."""
        route = RouteSettings(
            name=retrieval.route_name,
            models=list(retrieval.models),
            send_results_to=list(retrieval.destinations),
            shadow=retrieval.shadow,
            # Live traffic first: a backfill's jobs wait behind everything else.
            priority=BACKFILL_PRIORITY if retrieval.route_name == BACKFILL_ROUTE else 5,
        )
        logger.info(
            "series complete: %d instances pulled from %s (retrieval %s); models: %s",
            series.instance_count,
            retrieval.source,
            retrieval.retrieval_id[:8],
            ", ".join(retrieval.models),
        )
        what = f"{retrieval.kind} {retrieval.retrieval_id[:8]}"
        self._apply(route, series, reason=f"pulled from {retrieval.source} ({what})")
        self._ledger.set_series_state(
            series.series_instance_uid, SeriesState.ROUTED, completed_at=now
        )

    # -- studies ---------------------------------------------------------------------------

    def _check_study(self, study: StudyRecord, now: float) -> None:
        series = self._ledger.series_of_study(study.study_instance_uid)
        forced = now - study.first_received_at >= self.settings.force_complete_seconds
        if any(s.state not in _DONE_SERIES for s in series) and not forced:
            return
        waiting = [s for s in series if s.state == SeriesState.WAITING_STUDY]
        if not any(route.trigger == "study" for route in self._router.routes):
            # No study-level rules: the series were routed (or not) one by one.
            self._ledger.set_study_state(
                study.study_instance_uid, StudyState.ROUTED, completed_at=now
            )
            return
        headers = {
            s.series_instance_uid: self._header(s) for s in series if s.state != SeriesState.PURGED
        }
        quiet = now - max(study.last_new_series_at, self._started_at) >= (
            self.settings.study_quiet_seconds
        )
        early = self._conditions_met(series, headers)
        if not (quiet or early or forced):
            return
        if forced and self.settings.force_policy == "discard" and not (quiet or early):
            reason = "study still incomplete after completion.force_complete_seconds: discarded"
            self._ledger.set_study_state(
                study.study_instance_uid, StudyState.DISCARDED, reason, completed_at=now
            )
            for item in waiting:
                self._ledger.set_series_state(
                    item.series_instance_uid, SeriesState.DISCARDED, reason
                )
            return
        why = (
            "study quiet"
            if quiet
            else ("study conditions met" if early else "study forced complete")
        )
        # Of nodes sharing the ledger, the one whose update succeeds decides the study.
        if not self._ledger.set_study_state(
            study.study_instance_uid,
            StudyState.ROUTED,
            why,
            completed_at=now,
            expected=StudyState.RECEIVING,
        ):
            return
        logger.info("study complete (%s): %d series", why, len(series))
        for item in series:
            if item.state not in (SeriesState.WAITING_STUDY, SeriesState.ROUTED):
                continue
            header = headers.get(item.series_instance_uid)
            if header is not None:
                self._route_for_study(item, header, why)
            elif self._held_elsewhere(item):
                # Held by other nodes only: the node holding it reads its header and
                # applies the study's routes (``_route_waiting_series``). Only from the
                # state read: a late instance may have put it back to RECEIVING since.
                self._ledger.set_series_state(
                    item.series_instance_uid,
                    SeriesState.WAITING_STUDY,
                    f"{why}: its study routes are applied by the node holding it",
                    expected=item.state,
                )

    def _held_elsewhere(self, series: SeriesRecord) -> bool:
        """Whether only other nodes hold instances of ``series`` (a header this node
        cannot read, not one it failed to read)."""
        if self._node is None:
            return False
        instances = self._ledger.series_instances(series.series_instance_uid)
        return bool(instances) and all(i.node not in (None, self._node) for i in instances)

    def _route_for_study(self, series: SeriesRecord, header: Dataset, why: str) -> None:
        """Apply the study-trigger routes that match ``series`` (its study complete).

        A WAITING_STUDY series is claimed first (of nodes holding some of it, one applies
        the routes) and becomes ROUTED only once they are applied: routing that fails
        leaves it WAITING_STUDY, retried next pass (:meth:`_route_waiting_series`), and a
        node that dies meanwhile leaves it to be claimed again when its claim expires
        (then the originals of its forwarding routes may be sent twice, never not at all).
        """
        waiting = series.state == SeriesState.WAITING_STUDY
        uid = series.series_instance_uid
        if waiting and not self._ledger.claim_study_routes(uid, now=self._clock()):
            return  # another node holding some of it routes it
        try:
            arrival = Arrival(series.calling_ae, series.called_ae, series.peer)
            matched = self._router.matching(header, arrival)
            for route in (r for r in matched if r.trigger == "study"):
                self._apply(route, series, reason=why)
            if waiting:
                self._ledger.set_series_state(
                    uid, SeriesState.ROUTED, why, expected=SeriesState.WAITING_STUDY
                )
        finally:
            if waiting:
                self._ledger.release_study_routes(uid)

    def _route_waiting_series(self) -> None:
        """Series of a decided (ROUTED) study still waiting for its routes (another node
        decided it, or routing them failed in an earlier pass): this node applies them to
        those it holds, each once across the nodes, the oldest first."""
        waiting = self._ledger.waiting_series_of_routed_studies(
            node=self._node, limit=WAITING_SERIES_PER_PASS
        )
        for series in waiting:
            header = self._header(series)
            if header is not None:
                with log_context(series_uid=series.series_instance_uid):
                    self._route_for_study(series, header, series.reason or "study complete")

    def _conditions_met(
        self, series: list[SeriesRecord], headers: dict[str, Dataset | None]
    ) -> bool:
        """Whether some study route's complete_when conditions are all met by these series."""
        for route in self._router.routes:
            if route.trigger != "study" or not route.complete_when:
                continue
            if all(
                any(
                    (header := headers.get(s.series_instance_uid)) is not None
                    and _images(s, header) >= condition.min_instances
                    and matches_conditions(condition.match, header)
                    for s in series
                )
                for condition in route.complete_when
            ):
                return True
        return False

    # -- applying a route --------------------------------------------------------------------

    def _apply(self, route: RouteSettings, series: SeriesRecord, *, reason: str) -> None:
        for model_id in route.models:
            refused = self._refusal(model_id, series)
            if refused is not None:
                job = self._ledger.record_not_applicable(
                    series,
                    route=route.name,
                    model_id=model_id,
                    destinations=route.send_results_to,
                    priority=route.priority,
                    reason=refused,
                    shadow=route.shadow,
                )
                # The reason may quote header values (descriptions): DEBUG only.
                logger.info("job %s: %s is not applicable to the series", job.job_id, model_id)
                logger.debug("job %s: %s", job.job_id, refused)
                continue
            self._ledger.open_job(
                series,
                route=route.name,
                model_id=model_id,
                destinations=route.send_results_to,
                priority=route.priority,
                reason=reason,
                shadow=route.shadow,
            )
        if route.forward_originals_to:
            instances = self._ledger.series_instances(series.series_instance_uid)
            self._outbox.add(
                NewItem(
                    destination=destination,
                    kind=ItemKind.ORIGINAL,
                    series_uid=series.series_instance_uid,
                    route=route.name,
                    sop_instance_uid=instance.sop_instance_uid,
                    sop_class_uid=instance.sop_class_uid,
                    path=instance.path,
                    # Sent by the node that holds the file.
                    node=instance.node,
                )
                for destination in route.forward_originals_to
                for instance in instances
            )
            logger.info(
                "forwarding %d instances to %s",
                len(instances),
                ", ".join(route.forward_originals_to),
            )

    def _refusal(self, model_id: str, series: SeriesRecord) -> str | None:
        """Why ``model_id`` cannot take the series, from its headers; ``None``: it can
        (or no manifest or header says otherwise)."""
        manifest = self._manifests.get(model_id)
        if manifest is None:
            return None
        # Every instance's geometry is read only for a model with an extent condition.
        geometry = needs_geometry(manifest.accepts)
        key = (series.series_instance_uid, series.last_received_at, True)
        if not geometry and key not in self._facts:
            key = (series.series_instance_uid, series.last_received_at, False)
        if key not in self._facts:
            self._facts[key] = self._series_facts(series, geometry=geometry)
        facts = self._facts[key]
        if facts is None:
            return None
        refused = refusal(manifest, facts)
        if refused is None or facts.modality not in PROJECTION_MODALITIES:
            return refused
        # A radiograph series (PA and lateral, say): the worker runs every film the model
        # accepts, so the series is not applicable only when no film is acceptable.
        for film in self._film_facts(series, geometry=geometry)[1:]:
            if refusal(manifest, film) is None:
                return None
        return refused

    def _film_facts(self, series: SeriesRecord, *, geometry: bool) -> list[SeriesFacts]:
        """The facts of each film of a projection series (at most MAX_FILMS of them)."""
        key = (series.series_instance_uid, series.last_received_at, geometry)
        if key not in self._films:
            instances = self._local_instances(series)
            films = []
            for instance in instances[:MAX_FILMS]:
                try:
                    films.append(
                        facts_from_files(
                            [Path(instance.path)],
                            geometry=geometry,
                            read=read_stored_header,
                            read_geometry=read_stored_header,
                        )
                    )
                except Exception as exc:  # noqa: BLE001 -- the worker decides on that film
                    logger.warning(
                        "cannot read the header of film %s (%s)",
                        instance.sop_instance_uid,
                        type(exc).__name__,
                    )
            self._films[key] = films
        return self._films[key]

    def _series_facts(self, series: SeriesRecord, *, geometry: bool) -> SeriesFacts | None:
        local = self._local_instances(series)
        if len(local) < series.instance_count:
            # Part of the series is at another node: its slices and extent cannot be
            # judged from here, so the worker, which fetches every instance, checks them.
            return None
        paths = [Path(i.path) for i in local]
        if not paths:
            return None
        try:
            return facts_from_files(
                paths, geometry=geometry, read=read_stored_header, read_geometry=read_stored_header
            )
        except Exception as exc:  # noqa: BLE001 -- the worker then decides on the pixels
            logger.warning(
                "cannot read the series' headers to check what its models accept (%s: %s); "
                "its jobs are queued and the workers check",
                type(exc).__name__,
                exc,
            )
            return None

    def _header(self, series: SeriesRecord) -> Dataset | None:
        instances = self._local_instances(series)
        if not instances and self._ledger.series_instances(series.series_instance_uid):
            return None  # all held by other nodes: theirs to read
        if not instances:
            self._ledger.set_series_state(
                series.series_instance_uid, SeriesState.FAILED, "no stored instances"
            )
            return None
        try:
            return read_stored_header(Path(instances[0].path))
        except Exception as exc:  # noqa: BLE001 -- any unreadable header fails the series
            reason = f"cannot read the first instance's header: {type(exc).__name__}: {exc}"
            logger.warning("series %s: %s", series.series_instance_uid, reason)
            self._ledger.set_series_state(series.series_instance_uid, SeriesState.FAILED, reason)
            return None

    # -- queueing ----------------------------------------------------------------------------

    def _queue_ready(self) -> list[JobRecord]:
        queued: list[JobRecord] = []
        if time.monotonic() < self._next_queue_attempt:
            return queued
        for ready in self._ledger.jobs(states=[JobState.READY], limit=1000):
            # QUEUED first: a worker may pick the message up before enqueue() returns,
            # and it moves the job on from QUEUED.
            try:
                job = self._ledger.transition(
                    ready.job_id, JobState.QUEUED, expected={JobState.READY}
                )
            except InvalidTransitionError:
                continue  # another node queued it meanwhile (they share the ledger)
            try:
                self._queue.enqueue(job)
            except TransientError as exc:
                self._ledger.transition(
                    job.job_id, JobState.READY, reason=f"broker unavailable: {exc}"
                )
                if not self._broker_down_logged:
                    logger.warning("cannot queue jobs, will keep trying: %s", exc)
                    self._broker_down_logged = True
                self._next_queue_attempt = time.monotonic() + self._queue_backoff
                self._queue_backoff = min(self._queue_backoff * 2, 30.0)
                break
            self._broker_down_logged = False
            self._queue_backoff = 1.0
            queued.append(job)
        return queued


def _images(series: SeriesRecord, header: Dataset) -> int:
    """The images of a series: its instances, an enhanced multi-frame instance counted by
    its frames (Number of Frames of the first instance, standing for all of them)."""
    try:
        frames = int(header.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    return series.instance_count * max(frames, 1)
