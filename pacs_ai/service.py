"""What ``pacs-ai serve`` runs: the DICOM node and the node-side services around it.

* the embedded Redis, when no ``broker_url`` is configured;
* the :class:`~dicom_node.node.Node`: listener, spool, ledger recorder, completion watcher;
* the node's heartbeat in the ledger (:mod:`core.presence`), for ``pacs-ai status``;
* the delivery service (outbox -> destinations, retry schedule, dead letters);
* the reconciler (the broker made to agree with the ledger);
* the retention sweeper;
* the runner of retrievals started on the dashboard (studies pulled from a PACS);
* the monitor (dashboard, JSON API, ``/metrics``, ``/healthz``, ``/readyz``), unless
  ``monitor.enabled`` is false.

None of them imports a machine-learning framework.
"""

from __future__ import annotations

import functools
import logging
from types import TracebackType

from core.broker import EmbeddedRedis, uses_embedded_broker
from core.presence import NodeHeartbeat
from core.queue import BrokerInspector, JobQueue
from core.settings import Settings
from dicom_node.node import Node
from monitor.web.server import MonitorServer
from node_services.delivery import DeliveryService
from node_services.reconciler import Reconciler
from node_services.retention import RetentionSweeper
from node_services.retrieve.service import RetrievalService, start_run_by_accession

logger = logging.getLogger(__name__)


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker = EmbeddedRedis(settings.data_dir) if uses_embedded_broker(settings) else None
        self.node: Node | None = None
        self.delivery: DeliveryService | None = None
        self.reconciler: Reconciler | None = None
        self.retention: RetentionSweeper | None = None
        self.retrievals: RetrievalService | None = None
        self.monitor: MonitorServer | None = None
        self.heartbeat: NodeHeartbeat | None = None

    def start(self) -> None:
        """Start everything; on a failure, stop what was started and re-raise."""
        try:
            if self.broker is not None:
                self.broker.start()
            self.node = Node(self.settings)
            self.node.start()
            node = self.node
            # `pacs-ai status` elsewhere tells from it whether the node is up.
            self.heartbeat = NodeHeartbeat(
                node.ledger,
                ae_title=self.settings.node.ae_title,
                port=lambda: node.port,
                interval=self.settings.worker.heartbeat_seconds,
                node=self.settings.node.name,
                dicomweb_url=self.settings.node.dicomweb_url,
            )
            self.heartbeat.start()
            self.delivery = DeliveryService(self.settings, self.node.ledger)
            self.delivery.start()
            self.reconciler = Reconciler(
                self.settings,
                self.node.ledger,
                queue=JobQueue(self.node.celery),
                inspector=BrokerInspector(self.node.celery),
            )
            self.reconciler.start()
            self.retention = RetentionSweeper(self.settings, self.node.ledger)
            self.retention.start()
            self.retrievals = RetrievalService(self.settings, self.node.ledger)
            self.retrievals.start()
            if self.settings.monitor.enabled:
                node = self.node
                self.monitor = MonitorServer(
                    self.settings,
                    node.ledger,
                    inspector=BrokerInspector(node.celery, socket_timeout=5.0),
                    node_stats=lambda: dict(node.scp.stats),
                    pull_starter=functools.partial(
                        start_run_by_accession, self.settings, node.ledger
                    ),
                )
                self.monitor.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for part in (
            self.monitor,
            self.retrievals,
            self.retention,
            self.reconciler,
            self.delivery,
        ):
            if part is not None:
                part.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None
        if self.node is not None:
            self.node.stop()
        if self.broker is not None:
            self.broker.stop()

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
