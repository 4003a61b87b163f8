"""The DICOM node service: listener, ledger recorder and completion watcher together.

``pacs-ai serve`` runs one :class:`Node`. It never imports a framework: models are known
by their manifests only (to check that routes name installed models, and what each model
accepts, so that a series it cannot take is recorded NOT_APPLICABLE without queueing).
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from core.errors import ConfigError
from core.jobs import InstanceRecord
from core.ledger import Ledger
from core.periodic import Periodic
from core.quarantine import Quarantine, QuarantineEntry
from core.queue import JobQueue, make_celery
from core.settings import Settings
from dicom_node.assembly import CompletionWatcher
from dicom_node.recorder import (
    IngestRecorder,
    read_checkpoint,
    register_unrecorded,
    write_checkpoint,
)
from dicom_node.routing import Router
from dicom_node.scp import StorageSCP
from dicom_node.spool import Spool
from models.registry import ModelRegistry

logger = logging.getLogger(__name__)

#: How often the node records that the spool is fully recorded (see dicom_node.recorder).
CHECKPOINT_INTERVAL_SECONDS = 60.0


def check_routes_against_models(settings: Settings, model_ids: list[str]) -> None:
    """Raise ConfigError naming every route model that no installed package provides."""
    problems = [
        f"routes[{r_index}].models[{m_index}]: no model package {model_id!r} "
        f"(installed: {', '.join(model_ids) or 'none'})"
        for r_index, route in enumerate(settings.routes)
        for m_index, model_id in enumerate(route.models)
        if model_id not in model_ids
    ]
    if problems:
        raise ConfigError("configuration", problems)


def installed_models(settings: Settings) -> ModelRegistry:
    """The model packages of ``model_dirs`` (manifests only; weights are the workers').

    Raises:
        ConfigError: a package's manifest is invalid.
    """
    return ModelRegistry.discover(settings.model_dirs, check_weights=False)


class Node:
    """Everything ``pacs-ai serve`` runs, started and stopped as one."""

    def __init__(self, settings: Settings, *, ledger: Ledger | None = None) -> None:
        self.settings = settings
        self.ledger = ledger or Ledger(settings.resolved_ledger_url)
        # A brand-new ledger is created; one of another release refused (`pacs-ai db upgrade`).
        self.ledger.require_current_schema()
        self.spool = Spool(
            settings.spool_dir,
            fsync=settings.node.fsync,
            min_free_bytes=settings.node.min_free_disk_mb * 1024 * 1024,
        )
        self.quarantine = Quarantine(
            settings.quarantine_dir,
            max_bytes=settings.node.quarantine_max_mb * 1024 * 1024,
            min_free_bytes=settings.node.min_free_disk_mb * 1024 * 1024,
        )
        self.recorder = IngestRecorder(self.ledger, node=settings.node.name)
        self.celery = make_celery(settings)
        self.scp = StorageSCP(
            settings.node,
            spool=self.spool,
            quarantine=self.quarantine,
            on_stored=self._stored,
            on_quarantined=self._record_quarantine,
            on_association_ended=self._association_ended,
            on_receiver_lost=lambda since: self.recorder.rescan(settings.spool_dir, since=since),
        )
        self._checkpoints = Periodic(
            "spool-checkpoint", CHECKPOINT_INTERVAL_SECONDS, self._write_checkpoint
        )
        # Series each open association brought, for completion on association release.
        self._series_by_peer: dict[str, set[str]] = {}
        self._peers_lock = threading.Lock()
        self.recorder.follow(self.scp.sync)
        self.watcher = CompletionWatcher(
            settings.completion,
            ledger=self.ledger,
            recorder=self.recorder,
            router=Router(settings.routes, mode=settings.routing.mode),
            queue=JobQueue(self.celery),
            manifests={p.id: p.manifest for p in installed_models(settings)},
            node=settings.node.name,
        )

    @property
    def port(self) -> int:
        return self.scp.port

    def start(self) -> None:
        spool_dir = self.settings.spool_dir
        register_unrecorded(
            spool_dir,
            self.ledger,
            modified_since=read_checkpoint(spool_dir),
            node=self.settings.node.name,
        )
        self.recorder.start()
        self.scp.start()
        self.watcher.start()
        self._checkpoints.start()

    def stop(self) -> None:
        self._checkpoints.stop()
        self.scp.stop()
        self.watcher.stop()
        self.recorder.stop()
        self.celery.close()

    def _write_checkpoint(self) -> None:
        # Only once everything reported so far is in the ledger.
        if self.recorder.flush(timeout=30.0):
            write_checkpoint(self.settings.spool_dir)

    def _stored(self, record: InstanceRecord) -> None:
        self.recorder.add(record)
        with self._peers_lock:
            self._series_by_peer.setdefault(record.peer, set()).add(record.series_instance_uid)

    def _association_ended(self, peer: str, released: bool) -> None:
        with self._peers_lock:
            series = self._series_by_peer.pop(peer, set())
        # An aborted association may have left a series half-sent: only a normal release
        # says "that was all"; otherwise the quiet period decides.
        if released and series:
            self.watcher.association_released(series)

    def _record_quarantine(self, folder: str, entry: QuarantineEntry) -> None:
        self.ledger.record_quarantine(
            stage=entry.stage,
            reason=entry.message,
            path=folder,
            calling_ae=entry.calling_ae,
        )

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
