"""The monitor, started and stopped with the node (``pacs-ai serve``): uvicorn in a
background thread, with its HTTP limits set here."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

import uvicorn

from core.errors import ConfigError
from core.ledger import Ledger
from core.queue import BrokerInspector
from core.settings import Settings
from monitor.metrics import NodeStats
from monitor.pulls import PullStarter
from monitor.web.app import create_app

logger = logging.getLogger(__name__)

#: Largest request line plus headers (h11): far above what a browser sends.
MAX_HEADERS = 16 * 1024
#: Connections served at once; more are answered 503 at once.
MAX_CONNECTIONS = 200
KEEP_ALIVE_SECONDS = 5


class MonitorServer:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        *,
        inspector: BrokerInspector | None,
        node_stats: NodeStats | None = None,
        pull_starter: PullStarter | None = None,
    ) -> None:
        """``pull_starter``: what starts a run from the dashboard (the node's; without
        it the dashboard lists retrievals but starts none)."""
        self.settings = settings
        tls = settings.monitor.tls
        self.app = create_app(
            settings,
            ledger,
            inspector=inspector,
            node_stats=node_stats,
            tls=tls is not None,
            pull_starter=pull_starter,
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the monitor is not running")
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.monitor.tls else "http"
        host = self.settings.monitor.host
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{self.port}/"

    def start(self) -> None:
        """Listen and serve in a background thread.

        Raises:
            ConfigError: the port cannot be bound (in use, or not allowed).
        """
        monitor = self.settings.monitor
        family = socket.AF_INET6 if ":" in monitor.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((monitor.host, monitor.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                "monitor",
                [
                    f"monitor.port: cannot listen on {monitor.host}:{monitor.port} ({exc}); "
                    "choose another monitor.port, or set monitor.enabled: false"
                ],
            ) from exc
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=True,
            http="h11",
            loop="asyncio",
            lifespan="off",
            h11_max_incomplete_event_size=MAX_HEADERS,
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=5,
            ssl_certfile=str(monitor.tls.certificate) if monitor.tls else None,
            ssl_keyfile=str(monitor.tls.private_key) if monitor.tls else None,
        )
        config.load()
        if config.ssl is not None:
            config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        server = uvicorn.Server(config)
        self._server = server
        self._port = int(sock.getsockname()[1])
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="monitor", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            raise ConfigError("monitor", ["monitor: the web server did not start; see the log"])
        logger.info("monitor (dashboard, /metrics, /readyz, /api/docs) on %s", self.url)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._port = None
