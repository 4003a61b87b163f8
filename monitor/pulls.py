"""Studies pulled from a PACS, as the dashboard shows and starts them.

An admin can start a run for a study found by its accession number: the dashboard asks
the PACS (C-FIND or QIDO-RS) at once, so that "no such study" is answered in the page,
then queues the retrieval in the ledger for the node's retrieval service
(:mod:`node_services.retrieve.service`), which pulls it; the node then runs the chosen
models as for any pulled study. Every attempt is audited (``run``: who, from where,
which source and models, how many studies; never the accession number, which names a
patient's study: the studies are in the ledger by UID).

Every retrieval (``pacs-ai run``, backfills, dashboard runs) is listed with its progress.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import PacsAiError
from core.ledger import Ledger, RetrievalProgress, RetrievalRecord
from core.ledger.retrievals import LEASE_SECONDS
from core.settings import Settings
from monitor.actions import JobActions
from monitor.auth import Principal

logger = logging.getLogger(__name__)

#: The audit log's action for a run started on the dashboard.
RUN = "run"


class PullRefusedError(Exception):
    """The run cannot be started as asked (the message says why)."""


#: What starts a run (the node's :func:`node_services.retrieve.service.
#: start_run_by_accession`, given by ``pacs-ai serve``): keyword arguments ``source``,
#: ``accession``, ``models``, ``destinations``, ``keep``, ``actor``; raises PacsAiError.
PullStarter = Callable[..., RetrievalRecord]


@dataclass(frozen=True, slots=True)
class PullView:
    """A retrieval with its progress, for the dashboard."""

    retrieval: RetrievalRecord
    progress: RetrievalProgress

    @property
    def pulled_fraction(self) -> float:
        return self.progress.retrieved / self.progress.total if self.progress.total else 1.0

    @property
    def processed_fraction(self) -> float:
        return self.progress.processed / self.progress.total if self.progress.total else 1.0


class Pulls:
    def __init__(
        self, settings: Settings, ledger: Ledger, *, starter: PullStarter | None = None
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self._starter = starter
        self._audit = JobActions(ledger).audit

    def sources(self) -> list[str]:
        """Destinations studies can be pulled from (none where runs cannot be started)."""
        if self._starter is None:
            return []
        return [n for n, d in self.settings.destinations.items() if d.query_retrieve is not None]

    def recent(self, limit: int = 10) -> list[PullView]:
        """The most recently changed retrievals, with their progress; those whose
        process is gone are first ended as interrupted (never shown RUNNING)."""
        self.ledger.interrupt_stale_retrievals(stale_after=LEASE_SECONDS)
        return [
            PullView(record, self.ledger.retrieval_progress(record.retrieval_id))
            for record in self.ledger.retrievals(limit=limit)
        ]

    def start_by_accession(
        self,
        principal: Principal,
        *,
        source: str,
        accession: str,
        models: list[str],
        destinations: list[str],
        keep: bool,
        remote: str | None = None,
    ) -> RetrievalRecord:
        """Find the study with ``accession`` in ``source`` and queue its retrieval for the
        node, to run ``models`` and send the results to ``destinations`` (or keep them).

        Raises:
            PermissionError: not an admin (audited as ``denied``).
            PullRefusedError: a bad request, no such study, or the PACS could not be asked
                (audited as ``refused``).
        """
        detail: dict[str, object] = {"source": source, "models": ", ".join(models)}
        if not principal.is_admin:
            self._audit(principal, RUN, None, "denied", detail=detail, remote=remote)
            raise PermissionError(
                f"starting a run needs the admin role; {principal.name} is read-only"
            )
        record: RetrievalRecord | None = None
        why = "this monitor runs without its node: start runs on the node's dashboard"
        if self._starter is not None:
            try:
                record = self._starter(
                    source=source,
                    accession=accession,
                    models=models,
                    destinations=destinations,
                    keep=keep,
                    actor=principal.name,
                )
            except PacsAiError as exc:
                why = str(exc)
        if record is None:
            self._audit(
                principal, RUN, None, "refused", detail={**detail, "why": why}, remote=remote
            )
            raise PullRefusedError(why)
        progress = self.ledger.retrieval_progress(record.retrieval_id)
        self._audit(
            principal,
            RUN,
            None,
            "ok",
            detail={**detail, "retrieval": record.retrieval_id, "studies": progress.total},
            remote=remote,
        )
        logger.info(
            "run %s started by %s: %d studies from %s",
            record.retrieval_id[:8],
            principal.name,
            progress.total,
            source,
        )
        return record
