"""The node's runner of retrievals queued for it: runs started on the dashboard.

The dashboard finds the study (C-FIND or QIDO-RS, in the request, so that the admin
learns at once whether it exists) and queues the retrieval in the ledger; this service,
in ``pacs-ai serve``, pulls queued retrievals one at a time, and the node takes the
studies on as any pulled study. A retrieval still queued when the node stops is run when
it starts again.
"""

from __future__ import annotations

import logging
import threading

from core.errors import PacsAiError
from core.ledger import Ledger, RetrievalBusyError, RetrievalRecord, RetrievalState
from core.periodic import Periodic
from core.settings import Settings
from dicom_node.node import installed_models
from node_services.retrieve.base import SeriesFilter, StudyQuery
from node_services.retrieve.retriever import STALE_AFTER_SECONDS, Retriever

logger = logging.getLogger(__name__)

#: The kind of retrieval the node runs itself.
DASHBOARD = "dashboard"


class PullRefusedError(PacsAiError):
    """A run cannot be started as asked (the message says why, without patient data)."""


def start_run_by_accession(
    settings: Settings,
    ledger: Ledger,
    *,
    source: str,
    accession: str,
    models: list[str],
    destinations: list[str],
    keep: bool,
    actor: str,
) -> RetrievalRecord:
    """Find the study with ``accession`` in ``source`` (C-FIND or QIDO-RS, now) and queue
    its retrieval for this service, to run ``models`` and send the results to
    ``destinations`` (or keep them).

    Raises:
        PullRefusedError: a bad request, no such study, or the PACS could not be asked.
    """
    accession = accession.strip()
    if not accession or len(accession) > 16:
        raise PullRefusedError("give the accession number (at most 16 characters)")
    if not models:
        raise PullRefusedError("choose at least one model")
    if not destinations and not keep:
        raise PullRefusedError("choose where the results go, or keep them in the node")
    unknown = [d for d in destinations if d not in settings.destinations]
    if unknown:
        raise PullRefusedError(f"no destination {', '.join(unknown)}")
    try:
        installed = installed_models(settings).ids
    except PacsAiError as exc:
        raise PullRefusedError(str(exc)) from None
    missing = [m for m in models if m not in installed]
    if missing:
        raise PullRefusedError(f"no model package {', '.join(missing)}")
    retriever = Retriever(settings, ledger)
    try:
        studies = retriever.find(source, StudyQuery(accession_number=accession))
    except PacsAiError as exc:  # ConfigError, QueryError, SourceUnavailableError
        raise PullRefusedError(str(exc)) from None
    if not studies:
        raise PullRefusedError(f"no study with that accession number in {source}")
    return retriever.create(
        kind=DASHBOARD,
        source=source,
        studies=studies,
        series_filter=SeriesFilter(),
        models=models,
        destinations=destinations,
        shadow=keep,
        actor=actor,
        query={"by": "accession"},
        state=RetrievalState.QUEUED,
    )


class RetrievalService:
    def __init__(self, settings: Settings, ledger: Ledger, *, interval: float = 2.0) -> None:
        self._ledger = ledger
        self._stop = threading.Event()
        self._retriever = Retriever(settings, ledger, stop=self._stop)
        self._loop = Periodic("retrievals", interval, self.run_once)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        # A retrieval in progress stops between two series; the next start resumes it.
        self._stop.set()
        self._loop.stop()

    def run_once(self) -> int:
        """Run the queued retrievals (oldest first), and those a process that died left
        RUNNING (found stale, they are STOPPED and resumed); return how many ran."""
        for ended in self._ledger.interrupt_stale_retrievals(stale_after=STALE_AFTER_SECONDS):
            logger.warning("retrieval %s %s: %s", ended.retrieval_id[:8], ended.state, ended.reason)
        queued = self._ledger.retrievals(
            kinds=[DASHBOARD], states=[RetrievalState.QUEUED, RetrievalState.STOPPED]
        )
        ran = 0
        for record in sorted(queued, key=lambda r: r.created_at):
            if self._stop.is_set():
                break
            try:
                ended = self._retriever.run(record.retrieval_id)
            except RetrievalBusyError:
                continue
            ran += 1
            logger.info(
                "retrieval %s from %s ended %s", record.retrieval_id[:8], record.source, ended.state
            )
        return ran
