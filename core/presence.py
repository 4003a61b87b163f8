"""Who is running: the node's heartbeat thread, and what ``status`` says about the node.

``pacs-ai serve`` records that it is alive every ``worker.heartbeat_seconds``
(:class:`core.ledger.Presence`, one row per process), as the workers do; a process that
stops cleanly records when. So ``pacs-ai status``, run anywhere that reaches the ledger,
tells a node that is up from one that stopped (and when) from one that died (its heartbeat
just ages), and shows stopped workers as stopped rather than silent.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.ledger import Ledger, NodeRecord, Presence
from core.periodic import Periodic

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeState:
    """What ``status`` says about the node: up, or since when it is not."""

    up: bool
    detail: str


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
        node: str | None = None,
        dicomweb_url: str | None = None,
    ) -> None:
        """``node``: the node's ``node.name``; ``dicomweb_url``: where workers on other
        machines fetch the instances it holds (both recorded with every beat)."""
        self._presence = Presence(ledger)
        self._ae_title = ae_title
        self._port = port
        self._node = node
        self._dicomweb_url = dicomweb_url
        self.host = socket.gethostname()
        self.name = f"pacs-ai-node@{self.host}:{os.getpid()}"
        self._loop = Periodic("node-heartbeat", interval, self.beat)

    def beat(self) -> None:
        self._presence.node_heartbeat(
            self.name,
            host=self.host,
            pid=os.getpid(),
            ae_title=self._ae_title,
            port=self._port(),
            node=self._node,
            dicomweb_url=self._dicomweb_url,
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
