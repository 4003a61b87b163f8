"""Who is running: the node's heartbeat, and workers that stopped cleanly.

``pacs-ai serve`` records that it is alive every ``worker.heartbeat_seconds`` (one row
per process in ``nodes``), as the workers do in ``workers``; a process that stops cleanly
records when. So ``pacs-ai status``, run anywhere that reaches the ledger, tells a node
that is up from one that stopped (and when) from one that died (its heartbeat just ages),
and shows stopped workers as stopped rather than silent.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update

from core.ledger import Ledger
from core.ledger.schema import nodes_table, worker_status_table, workers_table
from core.periodic import Periodic

logger = logging.getLogger(__name__)

#: Stopped processes (and silent ones) older than this are forgotten.
FORGET_AFTER_SECONDS = 86_400.0


@dataclass(frozen=True, slots=True)
class NodeRecord:
    name: str
    host: str
    pid: int
    ae_title: str
    port: int
    started_at: float
    heartbeat_at: float
    stopped_at: float | None


@dataclass(frozen=True, slots=True)
class NodeState:
    """What ``status`` says about the node: up, or since when it is not."""

    up: bool
    detail: str


class Presence:
    """Heartbeats and clean stops in the ledger database."""

    def __init__(self, ledger: Ledger) -> None:
        self._engine = ledger.engine

    def node_heartbeat(
        self, name: str, *, host: str, pid: int, ae_title: str, port: int, now: float | None = None
    ) -> None:
        """Record that node process ``name`` is alive (its first beat also starts it)."""
        at = time.time() if now is None else now
        with self._engine.begin() as conn:
            changed = conn.execute(
                update(nodes_table)
                .where(nodes_table.c.name == name)
                .values(heartbeat_at=at, stopped_at=None, ae_title=ae_title, port=port)
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
        return [
            NodeRecord(
                name=row.name,
                host=row.host,
                pid=row.pid,
                ae_title=row.ae_title,
                port=row.port,
                started_at=row.started_at,
                heartbeat_at=row.heartbeat_at,
                stopped_at=row.stopped_at,
            )
            for row in rows
        ]

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


def node_state(nodes: list[NodeRecord], *, now: float, lost_after: float) -> NodeState:
    """Whether a node process is up (a fresh heartbeat, not stopped), else what is known."""
    live = [n for n in nodes if n.stopped_at is None and now - n.heartbeat_at <= lost_after]
    if live:
        names = ", ".join(f"{n.ae_title}@{n.host}:{n.port}" for n in live)
        return NodeState(
            True, f"running ({names}, heartbeat {now - live[0].heartbeat_at:.0f} s ago)"
        )
    if not nodes:
        return NodeState(
            False, "not running (no heartbeat in the last day: start it with pacs-ai serve)"
        )
    last = nodes[0]
    seen = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last.heartbeat_at))
    if last.stopped_at is not None:
        stopped = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last.stopped_at))
        return NodeState(False, f"not running (stopped cleanly at {stopped} on {last.host})")
    return NodeState(
        False,
        f"not running (last seen {seen} on {last.host}, {now - last.heartbeat_at:.0f} s ago; "
        "it stopped without saying so)",
    )


class NodeHeartbeat:
    """The node process's heartbeat, from a thread of its own (``pacs-ai serve``)."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        ae_title: str,
        port: Callable[[], int],
        interval: float,
    ) -> None:
        self._presence = Presence(ledger)
        self._ae_title = ae_title
        self._port = port
        self.host = socket.gethostname()
        self.name = f"pacs-ai-node@{self.host}:{os.getpid()}"
        self._loop = Periodic("node-heartbeat", interval, self.beat)

    def beat(self) -> None:
        self._presence.node_heartbeat(
            self.name, host=self.host, pid=os.getpid(), ae_title=self._ae_title, port=self._port()
        )

    def start(self) -> None:
        self.beat()
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
        try:
            self._presence.node_stopped(self.name)
        except Exception:
            # The ledger is away at shutdown: the heartbeat simply ages (shown as died).
            logger.warning("could not record that the node stopped", exc_info=True)
