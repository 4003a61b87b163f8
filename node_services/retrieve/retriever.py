"""A retrieval, study by study: from a PACS into the node's spool and ledger.

:meth:`Retriever.start` queries the source and records the retrieval with the studies it
found (by UID only). :meth:`Retriever.run` pulls them in order, paced by a backfill's
rate and time window: for each study, its series are listed, filtered, and retrieved one
by one. C-GET and WADO-RS instances are filed in the spool exactly as the node's SCP
files received ones (:class:`SpoolSink`: identity checked, fsync, rename) and recorded
in the ledger with the origin ``retrieved``; C-MOVE instances reach the node's own
C-STORE path, and the run waits until the node has recorded them. The study is then
RETRIEVED, and the node's completion watcher completes and routes its series at once
(the retrieval's models, or the routing rules), never while it is still being pulled.

A run stops between two series when asked (``stop``), or when the source cannot be
reached; what was being pulled is pulled again, from its start, when the retrieval runs
again (a backfill resumes), and re-received instances replace their earlier copies. A
study that FAILED is pulled again when its retrieval resumes, until it has failed
:data:`STUDY_ATTEMPTS` times (a pull stopped or interrupted is no failure); its reason
says which attempt failed and why.

While it runs, a thread renews the run's lease in the ledger every
:data:`HEARTBEAT_SECONDS`, however long one series takes. A process killed without a word
stops renewing it: the next run, backfill or node to look ends it as interrupted, or
resumes it (:meth:`core.ledger.RetrievalLedger.interrupt_stale_retrievals`). A run that
finds its lease taken stops between two series and writes nothing more: every write of
a study's progress is conditional on this process still running the retrieval.

Nothing here logs a patient's name, ID or accession number: UIDs and counts only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from core.errors import InvalidInputError
from core.jobs import InstanceRecord, SeriesState
from core.ledger import (
    Ledger,
    RetrievalProgress,
    RetrievalRecord,
    RetrievalState,
    StudyPull,
)
from core.ledger.retrievals import LEASE_SECONDS, runner_name
from core.settings import Settings
from dicom_node.encoding import FileMeta, UnknownTransferSyntaxError, file_meta, parse_file_meta
from dicom_node.scanner import DataSetScanner
from dicom_node.spool import Spool
from node_services.retrieve.base import (
    QueryError,
    SeriesFilter,
    Source,
    SourceUnavailableError,
    StudyMatch,
    StudyQuery,
)
from node_services.retrieve.pacing import Pacing
from node_services.retrieve.sources import make_source

logger = logging.getLogger(__name__)

#: The origin recorded on a pulled series.
RETRIEVED = "retrieved"
#: A retrieval whose runner has not renewed its lease this long may be taken over (it
#: died); one whose runner was a process of this host that no longer exists at once.
STALE_AFTER_SECONDS = LEASE_SECONDS
#: How often a running retrieval renews its lease (from a thread of its own).
HEARTBEAT_SECONDS = 10.0
#: Times a study may fail: a FAILED one is pulled again on resume until it has failed
#: this often (stopped or interrupted pulls do not count).
STUDY_ATTEMPTS = 3
#: Longest wait, after a C-MOVE ended, for the node to record what the PACS sent.
MOVE_ARRIVAL_SECONDS = 120.0


def backfill_key(**parameters: object) -> str:
    """A key of a backfill's parameters: the same command line resumes the same backfill."""
    text = json.dumps(parameters, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Report:
    """What a running retrieval tells its caller (the terminal's progress bar)."""

    retrieval: RetrievalRecord
    progress: RetrievalProgress
    #: What it does now: ``pulling <study UID>``, ``waiting for the window 20:00-06:00``.
    doing: str


class SpoolSink:
    """Retrieved instances into the node's spool, filed as the SCP files received ones:
    the data set walked by the node's own structure checker (:class:`DataSetScanner`),
    written as received behind a File Meta Information of ours naming the PACS."""

    def __init__(
        self,
        spool: Spool,
        *,
        source_ae: str,
        called_ae: str,
        peer: str,
        max_instance_bytes: int = 0,
    ) -> None:
        self.spool = spool
        self.source_ae = source_ae
        self.called_ae = called_ae
        self.peer = peer
        self.max_instance_bytes = max_instance_bytes
        self.records: list[InstanceRecord] = []

    def store(
        self,
        data_set: bytes | memoryview,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
    ) -> None:
        """File one instance: its encoded data set, in ``transfer_syntax_uid``.

        Raises:
            InvalidInputError: a transfer syntax we do not know, a malformed data set,
                unusable UIDs, or UIDs that already name an instance of another series.
            OSError: the spool cannot keep it (disk full, below its reserve).
        """
        try:
            scanner = DataSetScanner(transfer_syntax_uid, max_bytes=self.max_instance_bytes)
        except UnknownTransferSyntaxError as exc:
            raise InvalidInputError(str(exc), stage="receive") from exc
        scanner.feed(data_set)
        identity = scanner.identity()
        if identity.sop_instance_uid != sop_instance_uid:
            raise InvalidInputError(
                f"the data set's SOP Instance UID {identity.sop_instance_uid} is not the "
                f"{sop_instance_uid} it was sent as",
                stage="receive",
            )
        holder = self.spool.claim(identity)
        if holder is not None:
            raise InvalidInputError(
                f"SOP Instance UID {identity.sop_instance_uid} already names an instance of "
                f"{holder}: not filed",
                stage="receive",
            )
        meta = file_meta(
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            source_ae=self.source_ae,
        )
        stored = self.spool.store(identity, [meta, data_set])
        self.records.append(
            InstanceRecord(
                sop_instance_uid=identity.sop_instance_uid,
                sop_class_uid=identity.sop_class_uid,
                series_instance_uid=identity.series_instance_uid,
                study_instance_uid=identity.study_instance_uid,
                transfer_syntax_uid=transfer_syntax_uid,
                path=str(stored.path),
                size=stored.size,
                received_at=time.time(),
                calling_ae=self.source_ae,
                called_ae=self.called_ae,
                peer=self.peer,
                modality=identity.modality,
            )
        )

    def store_file(self, part10: bytes | memoryview) -> None:
        """File one instance given as a DICOM file (a WADO-RS part): its own File Meta
        Information says its transfer syntax and UIDs.

        Raises:
            InvalidInputError: not a DICOM file, or as for :meth:`store`.
            OSError: as for :meth:`store`.
        """
        try:
            uids, offset = parse_file_meta(part10)
        except ValueError as exc:
            raise InvalidInputError(f"not a DICOM file: {exc}", stage="receive") from exc
        meta = FileMeta(uids, offset)
        missing = meta.missing()
        if missing or offset > len(part10):
            raise InvalidInputError(
                f"its file meta information lacks {', '.join(missing) or 'its end'}",
                stage="receive",
            )
        self.store(
            memoryview(part10)[offset:],
            sop_class_uid=meta.sop_class_uid,
            sop_instance_uid=meta.sop_instance_uid,
            transfer_syntax_uid=meta.transfer_syntax_uid,
        )


class Retriever:
    """Starts and runs retrievals for one process (the CLI, or the node for the
    dashboard's runs)."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        *,
        stop: threading.Event | None = None,
        source_factory: Callable[[Settings, str], Source] = make_source,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.stop = stop or threading.Event()
        self._source_factory = source_factory
        self._spool: Spool | None = None
        self._lease: _Lease | None = None

    @property
    def spool(self) -> Spool:
        if self._spool is None:
            node = self.settings.node
            # The node's spool, written beside the node: what a crash leaves in
            # .incoming is the node's to recover at its start, not ours.
            self._spool = Spool(
                self.settings.spool_dir,
                fsync=node.fsync,
                min_free_bytes=node.min_free_disk_mb * 1024 * 1024,
                recover_leftovers=False,
            )
        return self._spool

    def source(self, name: str) -> Source:
        """Raises ConfigError when ``name`` is no destination with a query/retrieve role."""
        return self._source_factory(self.settings, name)

    # -- starting --------------------------------------------------------------------

    def find(self, source: str, query: StudyQuery) -> list[StudyMatch]:
        """The studies ``query`` finds in ``source`` (QueryError, SourceUnavailableError)."""
        return self.source(source).find_studies(query)

    def create(
        self,
        *,
        kind: str,
        source: str,
        studies: Sequence[StudyMatch],
        series_filter: SeriesFilter,
        models: Sequence[str],
        destinations: Sequence[str],
        shadow: bool,
        actor: str,
        query: dict[str, object] | None = None,
        key: str | None = None,
        studies_per_minute: float | None = None,
        window: str | None = None,
        state: RetrievalState = RetrievalState.QUEUED,
    ) -> RetrievalRecord:
        """Record a retrieval of ``studies`` (found by :meth:`find`).

        ``query`` is what may be kept of the query (never a patient ID or accession).
        """
        record = self.ledger.create_retrieval(
            kind=kind,
            source=source,
            models=models,
            destinations=destinations,
            shadow=shadow,
            query={**(query or {}), "series_filter": series_filter.as_json()},
            actor=actor,
            key=key,
            studies_per_minute=studies_per_minute,
            window=window,
            state=state,
        )
        self.ledger.add_retrieval_studies(record.retrieval_id, [s.study_uid for s in studies])
        logger.info(
            "retrieval %s (%s) from %s: %d studies, models %s",
            record.retrieval_id[:8],
            kind,
            source,
            len(studies),
            ", ".join(models) or "by the routing rules",
        )
        return record

    # -- running ---------------------------------------------------------------------

    def run(
        self,
        retrieval_id: str,
        *,
        pacing: Pacing | None = None,
        report: Callable[[Report], None] | None = None,
        runner: str | None = None,
    ) -> RetrievalRecord:
        """Pull the retrieval's PENDING studies in order; return it as it ended (DONE,
        STOPPED when asked to stop or the source is away, FAILED for a run that cannot go on).

        Raises:
            RetrievalBusyError: another live process runs it.
            ConfigError: its source is no longer a query/retrieve destination.
        """
        name = runner or runner_name()
        for ended in self.ledger.interrupt_stale_retrievals(stale_after=STALE_AFTER_SECONDS):
            logger.warning("retrieval %s %s: %s", ended.retrieval_id[:8], ended.state, ended.reason)
        record = self.ledger.claim_retrieval(
            retrieval_id, name, stale_after=STALE_AFTER_SECONDS, max_attempts=STUDY_ATTEMPTS
        )
        with _Lease(self.ledger, retrieval_id, name) as lease:
            self._lease = lease
            try:
                return self._run(record, name, pacing, report)
            finally:
                self._lease = None

    def _run(
        self,
        record: RetrievalRecord,
        name: str,
        pacing: Pacing | None,
        report: Callable[[Report], None] | None,
    ) -> RetrievalRecord:
        retrieval_id = record.retrieval_id
        try:
            source = self.source(record.source)
        except Exception as exc:
            self.ledger.finish_retrieval(retrieval_id, RetrievalState.FAILED, str(exc), runner=name)
            raise
        series_filter = SeriesFilter.from_json(record.query.get("series_filter") or {})

        def tell(doing: str) -> None:
            if report is not None:
                report(Report(record, self.ledger.retrieval_progress(retrieval_id), doing))

        for study in self.ledger.retrieval_studies(retrieval_id, states=[StudyPull.PENDING]):
            if not self._paced(pacing, tell):
                return self._end(record, name, RetrievalState.STOPPED, _STOPPED)
            if study.attempts:
                logger.info(
                    "study %s: attempt %d of %d (last failure: %s)",
                    study.study_uid,
                    study.attempts + 1,
                    STUDY_ATTEMPTS,
                    study.reason,
                )
            tell(f"pulling study {study.study_uid}")
            try:
                self.pull_study(record, source, study.study_uid, series_filter)
            except SourceUnavailableError as exc:
                logger.warning("retrieval %s: %s", retrieval_id[:8], exc)
                state = (
                    RetrievalState.STOPPED if record.kind == "backfill" else RetrievalState.FAILED
                )
                return self._end(record, name, state, f"{exc}; run again to resume")
            except _StopRequestedError:
                return self._end(record, name, RetrievalState.STOPPED, _STOPPED)
        tell("done")
        return self._end(record, name, RetrievalState.DONE, None)

    def _end(
        self, record: RetrievalRecord, name: str, state: RetrievalState, reason: str | None
    ) -> RetrievalRecord:
        if not self.ledger.finish_retrieval(record.retrieval_id, state, reason, runner=name):
            logger.warning(
                "retrieval %s was taken from this process (%s) before it ended %s",
                record.retrieval_id[:8],
                name,
                state,
            )
        return self.ledger.get_retrieval(record.retrieval_id)

    def _stopping(self) -> bool:
        """Asked to stop, or this process's lease on the run was lost."""
        return self.stop.is_set() or self._lease_lost()

    def _lease_lost(self) -> bool:
        """Another process took the run over: this one writes nothing more of it."""
        return self._lease is not None and self._lease.lost.is_set()

    def _paced(self, pacing: Pacing | None, tell: Callable[[str], None]) -> bool:
        """Wait until the next study may start; False when asked to stop meanwhile."""
        while not self._stopping():
            wait = pacing.wait() if pacing is not None else None
            if not wait:
                if pacing is not None:
                    pacing.started()
                return True
            assert pacing is not None and wait is not None
            if wait.why == "window":
                tell(f"waiting for the time window {pacing.window}")
            else:
                tell(f"next study in {wait.seconds:.0f} s (rate limit)")
            self.stop.wait(min(wait.seconds, HEARTBEAT_SECONDS))
        return False

    def pull_study(
        self,
        record: RetrievalRecord,
        source: Source,
        study_uid: str,
        series_filter: SeriesFilter,
    ) -> StudyPull:
        """Pull one study of ``record`` into the spool and the ledger; its end state.

        Raises:
            SourceUnavailableError: the source cannot be reached (the study is PENDING
                again).
        """
        retrieval_id = record.retrieval_id
        runner = record.runner

        def write(
            state: StudyPull,
            *,
            reason: str | None = None,
            series_count: int | None = None,
            instance_count: int | None = None,
        ) -> None:
            """Record the study's state while this process runs the retrieval; a lost
            lease stops the run (another process pulls the study now)."""
            if self._lease_lost():
                raise _StopRequestedError
            if not self.ledger.set_retrieval_study(
                retrieval_id,
                study_uid,
                state,
                reason=reason,
                series_count=series_count,
                instance_count=instance_count,
                runner=runner,
            ):
                if self._lease is not None:
                    self._lease.lost.set()
                raise _StopRequestedError

        write(StudyPull.RETRIEVING)
        recorded: list[str] = []
        try:
            series = source.find_series(study_uid, keys=series_filter.keywords)
            wanted = [s for s in series if series_filter.passes(s)]
            if not wanted:
                why = (
                    f"none of its {len(series)} series passed the series filter"
                    if series
                    else "the source lists no series for it"
                )
                write(StudyPull.EMPTY, reason=why, series_count=0)
                logger.info("study %s: %s", study_uid, why)
                return StudyPull.EMPTY
            instances = 0
            for item in wanted:
                self._check_stop()
                recorded.append(item.series_uid)
                instances += self._pull_series(source, study_uid, item.series_uid)
        except SourceUnavailableError:
            if not self._lease_lost():
                self._hold_series(recorded, "the retrieval stopped: the source went away")
                write(StudyPull.PENDING)
            raise
        except _StopRequestedError:
            if not self._lease_lost():  # else the study is another process's now
                write(StudyPull.PENDING)
            raise
        except (QueryError, InvalidInputError, OSError) as exc:
            reason = str(exc)
            if self._lease_lost():
                raise _StopRequestedError from exc
            self._hold_series(recorded, f"retrieval incomplete: {reason}")
            failures = [
                s.attempts
                for s in self.ledger.retrieval_studies(retrieval_id, states=[StudyPull.RETRIEVING])
                if s.study_uid == study_uid
            ]
            # This failure's number. Only studies that failed fewer times than the bound
            # are pulled again (claim_retrieval), so it is at most the bound; min() keeps
            # it so whatever a ledger holds.
            attempt = (
                f"attempt {min(failures[0] + 1, STUDY_ATTEMPTS)} of {STUDY_ATTEMPTS}: "
                if failures
                else ""
            )
            write(StudyPull.FAILED, reason=f"{attempt}{reason}")
            logger.warning("study %s not retrieved: %s", study_uid, reason)
            return StudyPull.FAILED
        write(StudyPull.RETRIEVED, series_count=len(wanted), instance_count=instances)
        logger.info(
            "study %s retrieved from %s: %d series, %d instances",
            study_uid,
            source.name,
            len(wanted),
            instances,
        )
        return StudyPull.RETRIEVED

    def _pull_series(self, source: Source, study_uid: str, series_uid: str) -> int:
        """Retrieve one series; the instances now in the ledger.

        Raises:
            QueryError: refused, or some of its instances could not be retrieved.
        """
        started = time.time()
        sink = SpoolSink(
            self.spool,
            source_ae=_source_ae(self.settings, source.name),
            called_ae=self.settings.node.ae_title,
            peer=source.name,
            max_instance_bytes=self.settings.node.max_instance_bytes,
        )
        outcome = source.retrieve_series(study_uid, series_uid, sink)
        if source.method == "get":
            # Recorded even when some failed: what is in the spool is in the ledger.
            self.ledger.record_instances(sink.records, origin=RETRIEVED)
        if outcome.failed:
            problems = "; ".join(outcome.problems[:3])
            raise QueryError(
                f"series {series_uid}: {outcome.failed} of "
                f"{outcome.failed + outcome.completed} instances not retrieved"
                + (f" ({problems})" if problems else "")
            )
        if source.method == "move":
            self._await_moved(source, series_uid, since=started, expected=outcome.completed)
            return outcome.completed
        return len(sink.records)

    def _check_stop(self) -> None:
        if self._stopping():
            raise _StopRequestedError

    def _await_moved(self, source: Source, series_uid: str, *, since: float, expected: int) -> None:
        """Wait until the node has recorded what a C-MOVE sent it."""
        deadline = time.monotonic() + MOVE_ARRIVAL_SECONDS
        arrived = 0
        while time.monotonic() < deadline:
            arrived = self.ledger.instances_received_since(series_uid, since)
            if arrived >= expected:
                return
            if self.stop.wait(0.2) or self._stopping():
                raise _StopRequestedError
        raise QueryError(
            f"series {series_uid}: {source.name} moved {expected} instances but the node "
            f"recorded {arrived}: is `pacs-ai serve` running, and is its AE title "
            f"{self.settings.node.ae_title} declared on the PACS with this node's address?"
        )

    def _hold_series(self, series_uids: Sequence[str], reason: str) -> None:
        """Keep incompletely pulled series from being completed and routed as they are
        (they stay in the spool; a later pull of the study receives them again)."""
        for uid in series_uids:
            try:
                if self.ledger.get_series(uid).state == SeriesState.RECEIVING:
                    self.ledger.set_series_state(uid, SeriesState.FAILED, reason)
            except KeyError:
                continue


_STOPPED = "stopped; run again to resume"


class _StopRequestedError(Exception):
    """Asked to stop between two series."""


class _Lease:
    """Renews a runner's lease on a retrieval every :data:`HEARTBEAT_SECONDS` from a
    thread, for as long as the run lasts (a series may take longer than the lease);
    ``lost`` is set when another process has taken the retrieval meanwhile."""

    def __init__(self, ledger: Ledger, retrieval_id: str, runner: str) -> None:
        self._ledger = ledger
        self._retrieval_id = retrieval_id
        self._runner = runner
        self._done = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(
            target=self._renew, name=f"retrieval-lease-{retrieval_id[:8]}", daemon=True
        )

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._done.wait(HEARTBEAT_SECONDS):
            try:
                held = self._ledger.retrieval_heartbeat(self._retrieval_id, self._runner)
            except SQLAlchemyError as exc:
                # The ledger away a moment: the lease is renewed at the next beat, and
                # lapses (another process may take over) if it stays away.
                logger.warning("retrieval %s: lease not renewed: %s", self._retrieval_id[:8], exc)
                continue
            if not held:
                logger.error(
                    "retrieval %s was taken from %s (found stale): stopping it here",
                    self._retrieval_id[:8],
                    self._runner,
                )
                self.lost.set()
                return


def _source_ae(settings: Settings, name: str) -> str:
    destination = settings.destinations[name]
    return str(getattr(destination, "ae_title", name))[:16]
