"""A remote worker hands its result objects back to the node with STOW-RS.

A worker with ``worker.fetch_from`` shares no disk with the node, so the objects a job
made cannot go to the outbox as files: they are uploaded to the node
(``POST {fetch_from}/studies/{study}?job=ID&destination=NAME``, one request per
destination with the objects its output profile names), which keeps them and puts them in
that destination's outbox; the node delivers them, as it does a local worker's. Objects
not to be delivered now (held for review, a shadow job's, a job without destinations) are
uploaded without a destination: the node keeps them and points the job's result at its
copies, for an operator's release or ``pacs-ai resend``.

Uploads are idempotent (the node replaces by SOP Instance UID), so a retried job uploads
again safely. Once the node has them, the worker's own copies are removed.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from core.jobs import JobRecord
from core.settings import Settings
from workers.dicomweb import DicomWebClient, ServerUnavailableError
from workers.fetch import NodeUnavailableError

logger = logging.getLogger(__name__)


class ResultUploader:
    def __init__(self, settings: Settings) -> None:
        worker = settings.worker
        assert worker.fetch_from is not None, "only remote workers hand results back"
        self.settings = settings
        self.url = worker.fetch_from
        self._client = DicomWebClient(
            worker.fetch_from,
            token=worker.fetch_token.get_secret_value() if worker.fetch_token else None,
            ca_certificates=worker.fetch_ca_certificates,
            timeout=worker.fetch_timeout_seconds,
        )

    def deliver(self, job: JobRecord, deliveries: dict[str, list[list[str]]]) -> int:
        """Upload each destination's objects for the node to deliver; return how many.

        Raises:
            NodeUnavailableError: the node cannot be reached (the job waits for it).
            TransientError: it refused some objects.
        """
        count = 0
        for name in job.destinations:
            files = [Path(entry[3]) for entry in deliveries.get(name, [])]
            self._upload(job, files, destination=name)
            count += len(files)
        return count

    def keep(self, job: JobRecord, deliveries: dict[str, list[list[str]]]) -> int:
        """Upload the objects for the node to keep, not deliver; return how many.

        Raises:
            NodeUnavailableError: the node cannot be reached.
            TransientError: it refused some objects.
        """
        files = sorted({Path(entry[3]) for entries in deliveries.values() for entry in entries})
        self._upload(job, files, destination=None)
        return len(files)

    def remove_local_copies(self, job: JobRecord) -> None:
        """The node holds the objects now: the worker's disk keeps nothing of the job."""
        shutil.rmtree(self.settings.results_dir / job.job_id, ignore_errors=True)

    def _upload(self, job: JobRecord, files: list[Path], *, destination: str | None) -> None:
        if not files:
            return
        query: dict[str, str] = {"job": job.job_id}
        if destination is not None:
            query["destination"] = destination
        try:
            self._client.store(files, study=job.study_instance_uid, query=query)
        except ServerUnavailableError as exc:
            raise NodeUnavailableError(
                f"waiting for the node at {self.url} to take the results: {exc}", node=None
            ) from exc
        logger.info(
            "%d result object(s) handed to the node%s",
            len(files),
            f" for {destination}" if destination else " to keep",
        )
