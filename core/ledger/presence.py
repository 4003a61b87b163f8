"""Who is running: node processes' heartbeats, and processes that stopped cleanly.

``pacs-ai serve`` records that it is alive every ``worker.heartbeat_seconds`` (one row
per process in ``nodes``), as the workers do in ``workers``
(:meth:`core.ledger.workers.WorkerLedger.worker_heartbeat`); a process that stops cleanly
records when. The heartbeat thread itself is :class:`core.presence.NodeHeartbeat`.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, insert, select, update

from core.ledger.base import LedgerBase
from core.ledger.records import NodeRecord
from core.ledger.rows import _node_record
from core.ledger.schema import nodes_table, worker_status_table, workers_table

#: Stopped processes (and silent ones) older than this are forgotten.
FORGET_AFTER_SECONDS = 86_400.0


class Presence:
    """Heartbeats and clean stops of node and worker processes in the ledger."""

    def __init__(self, ledger: LedgerBase) -> None:
        self._engine = ledger.engine

    def node_heartbeat(
        self,
        name: str,
        *,
        host: str,
        pid: int,
        ae_title: str,
        port: int,
        now: float | None = None,
        node: str | None = None,
        dicomweb_url: str | None = None,
    ) -> None:
        """Record that node process ``name`` is alive (its first beat also starts it);
        ``node`` is its ``node.name`` and ``dicomweb_url`` where it serves its spool."""
        at = time.time() if now is None else now
        with self._engine.begin() as conn:
            changed = conn.execute(
                update(nodes_table)
                .where(nodes_table.c.name == name)
                .values(
                    heartbeat_at=at,
                    stopped_at=None,
                    ae_title=ae_title,
                    port=port,
                    node=node,
                    dicomweb_url=dicomweb_url,
                )
            ).rowcount
            if not changed:
                conn.execute(
                    insert(nodes_table).values(
                        name=name,
                        host=host,
                        pid=pid,
                        ae_title=ae_title,
                        port=port,
                        started_at=at,
                        heartbeat_at=at,
                        stopped_at=None,
                        node=node,
                        dicomweb_url=dicomweb_url,
                    )
                )
            # Keep the table small: nodes gone for a day are forgotten.
            conn.execute(
                delete(nodes_table).where(nodes_table.c.heartbeat_at < at - FORGET_AFTER_SECONDS)
            )

    def node_stopped(self, name: str, *, now: float | None = None) -> None:
        at = time.time() if now is None else now
        with self._engine.begin() as conn:
            conn.execute(
                update(nodes_table).where(nodes_table.c.name == name).values(stopped_at=at)
            )

    def nodes(self) -> list[NodeRecord]:
        """Node processes heard from in the last day, newest heartbeat first."""
        since = time.time() - FORGET_AFTER_SECONDS
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(nodes_table)
                .where(nodes_table.c.heartbeat_at >= since)
                .order_by(nodes_table.c.heartbeat_at.desc())
            ).all()
        return [_node_record(row) for row in rows]

    def node_endpoints(self) -> dict[str, NodeRecord]:
        """The newest process of each named node (``node.name``) heard from in the last
        day: where workers fetch the instances it holds, and whether it is up."""
        found: dict[str, NodeRecord] = {}
        for record in self.nodes():  # newest heartbeat first
            if record.node is not None:
                found.setdefault(record.node, record)
        return found

    def worker_stopped(self, name: str, *, now: float | None = None) -> None:
        """Record that worker process ``name`` stopped cleanly (it is shown as stopped,
        then forgotten a day later)."""
        at = time.time() if now is None else now
        with self._engine.begin() as conn:
            conn.execute(
                update(workers_table).where(workers_table.c.name == name).values(stopped_at=at)
            )
            conn.execute(
                update(worker_status_table)
                .where(worker_status_table.c.name == name)
                .values(current_job=None, current_job_since=None, updated_at=at)
            )
