"""A real Redis Sentinel group: a master, a replica and Sentinels, on free ports.

Debian's ``redis-server`` and ``redis-sentinel`` (apt-get install redis-sentinel; a missing
program skips locally and fails in CI). Readiness and failovers are polled with deadlines:
the group is ready when the replica is in sync and every Sentinel knows the replica and
the other Sentinels (a failover needs a majority of Sentinels that know each other).
Optional passwords: one for the Redis servers, one for the Sentinels, as production
sets them, so that clients must keep the two apart.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from tests.support.peers import (
    LOCALHOST,
    PeerNotReadyError,
    PeerProcess,
    _free_ports,
    tool_or_skip,
    wait_for,
)

MASTER_NAME = "pacs-ai-test"


def _sentinel(client: redis.Redis, *args: str) -> Any:
    """One SENTINEL subcommand (redis-py's own helpers are untyped or return a bool)."""
    return client.execute_command("SENTINEL", *args)  # type: ignore[no-untyped-call]


class SentinelGroup:
    """One master, ``replicas`` replicas and ``sentinels`` Sentinels (quorum: a majority).

    ``url`` is the ``broker_url`` listing the Sentinels; ``settings`` the matching
    ``broker_url`` and ``broker_sentinel`` keys.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        redis_password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
    ) -> None:
        self.workdir = workdir
        self.redis_binary = tool_or_skip("redis-server")
        self.sentinel_binary = tool_or_skip("redis-sentinel")
        self.redis_password = redis_password
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        ports = _free_ports(1 + replicas + sentinels)
        self.redis_ports = ports[: 1 + replicas]
        self.sentinel_ports = ports[1 + replicas :]
        self.redis: dict[int, PeerProcess] = {}
        self.sentinels: dict[int, PeerProcess] = {}

    # ------------------------------------------------------------------ start / stop

    def start(self, *, timeout: float = 30.0) -> None:
        try:
            master_port = self.redis_ports[0]
            for port in self.redis_ports:
                self.redis[port] = self._redis_process(
                    port, replica_of=None if port == master_port else master_port
                )
                self.redis[port].start()
            for port in self.redis_ports:
                wait_for(
                    lambda port=port: self._answers(port),  # type: ignore[misc]
                    timeout,
                    f"redis-server on {port}",
                    process=self.redis[port],
                )
            wait_for(
                lambda: self._in_sync(master_port),
                timeout,
                "the replicas in sync with the master",
                process=self.redis[master_port],
            )
            for port in self.sentinel_ports:
                self.sentinels[port] = self._sentinel_process(port, master_port)
                self.sentinels[port].start()
            for port in self.sentinel_ports:
                wait_for(
                    lambda port=port: self._sentinel_knows_everyone(port),  # type: ignore[misc]
                    timeout,
                    f"redis-sentinel on {port} knowing the replica and the other Sentinels",
                    process=self.sentinels[port],
                )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for process in [*self.sentinels.values(), *self.redis.values()]:
            process.kill()

    def __enter__(self) -> SentinelGroup:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _redis_process(self, port: int, *, replica_of: int | None) -> PeerProcess:
        folder = self.workdir / f"redis-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        argv = [
            os.fspath(self.redis_binary),
            "--port", str(port),
            "--bind", LOCALHOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", os.fspath(folder),
            "--protected-mode", "no",
        ]  # fmt: skip
        if replica_of is not None:
            argv += ["--replicaof", LOCALHOST, str(replica_of)]
        if self.redis_password is not None:
            # Replicas promoted later authenticate to whoever is master then.
            argv += ["--requirepass", self.redis_password, "--masterauth", self.redis_password]
        return PeerProcess(f"redis-server:{port}", argv, log_path=folder / "redis.log", cwd=folder)

    def _sentinel_process(self, port: int, master_port: int) -> PeerProcess:
        folder = self.workdir / f"sentinel-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        quorum = len(self.sentinel_ports) // 2 + 1
        lines = [
            f"port {port}",
            f"bind {LOCALHOST}",
            "daemonize no",
            "protected-mode no",
            f'dir "{folder}"',
            f"sentinel monitor {MASTER_NAME} {LOCALHOST} {master_port} {quorum}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER_NAME} 10000",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]
        if self.redis_password is not None:
            lines.append(f"sentinel auth-pass {MASTER_NAME} {self.redis_password}")
        if self.sentinel_password is not None:
            # Sentinels talk to each other too: they use sentinel-pass for that.
            lines += [
                f"requirepass {self.sentinel_password}",
                f"sentinel sentinel-pass {self.sentinel_password}",
            ]
        # Sentinel rewrites its configuration file as it learns: one per Sentinel.
        config = folder / "sentinel.conf"
        config.write_text("\n".join(lines) + "\n")
        return PeerProcess(
            f"redis-sentinel:{port}",
            [os.fspath(self.sentinel_binary), os.fspath(config)],
            log_path=folder / "sentinel.log",
            cwd=folder,
        )

    # ------------------------------------------------------------------ clients

    @contextlib.contextmanager
    def redis_client(self, port: int) -> Iterator[redis.Redis]:
        with redis.Redis(
            host=LOCALHOST,
            port=port,
            password=self.redis_password,
            socket_timeout=2,
            socket_connect_timeout=2,
        ) as client:
            yield client

    @contextlib.contextmanager
    def sentinel_client(self, port: int) -> Iterator[redis.Redis]:
        with redis.Redis(
            host=LOCALHOST,
            port=port,
            password=self.sentinel_password,
            socket_timeout=2,
            socket_connect_timeout=2,
            decode_responses=True,
        ) as client:
            yield client

    def _answers(self, port: int) -> bool:
        try:
            with self.redis_client(port) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def _in_sync(self, master_port: int) -> bool:
        expected = len(self.redis_ports) - 1
        try:
            for port in self.redis_ports:
                with self.redis_client(port) as client:
                    info: dict[str, Any] = client.info("replication")
                if port == master_port and info.get("connected_slaves") != expected:
                    return False
                if port != master_port and info.get("master_link_status") != "up":
                    return False
        except (redis.RedisError, OSError):
            return False
        return True

    def _sentinel_knows_everyone(self, port: int) -> bool:
        try:
            with self.sentinel_client(port) as client:
                state = _sentinel(client, "MASTER", MASTER_NAME)
        except (redis.RedisError, OSError):
            return False
        fields = dict(zip(state[::2], state[1::2], strict=True)) if isinstance(state, list) else {}
        if isinstance(state, dict):
            fields = state
        return (
            int(fields.get("num-slaves", 0)) == len(self.redis_ports) - 1
            and int(fields.get("num-other-sentinels", 0)) == len(self.sentinel_ports) - 1
        )

    # ------------------------------------------------------------------ the test's levers

    @property
    def url(self) -> str:
        """``broker_url``: every Sentinel, the master's password on the first address."""
        auth = f":{self.redis_password}@" if self.redis_password is not None else ""
        addresses = [f"sentinel://{LOCALHOST}:{port}" for port in self.sentinel_ports]
        addresses[0] = f"sentinel://{auth}{LOCALHOST}:{self.sentinel_ports[0]}"
        return ";".join(addresses) + "/0"

    @property
    def settings(self) -> dict[str, Any]:
        """The ``broker_url`` and ``broker_sentinel`` keys of a pacs-ai configuration."""
        sentinel: dict[str, Any] = {"master_name": MASTER_NAME, "timeout_seconds": 2}
        if self.sentinel_password is not None:
            sentinel["password"] = self.sentinel_password
        return {"broker_url": self.url, "broker_sentinel": sentinel}

    def master_port(self) -> int:
        """The master's port as the live Sentinels agree on it.

        Raises:
            PeerNotReadyError: they disagree (a failover is under way) or none answers.
        """
        answers = set()
        for port, process in self.sentinels.items():
            if not process.alive:
                continue
            with self.sentinel_client(port) as client:
                _host, master = _sentinel(client, "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            answers.add(int(master))
        if len(answers) != 1:
            raise PeerNotReadyError(f"the Sentinels name different masters: {sorted(answers)}")
        return answers.pop()

    def kill_master(self) -> int:
        """SIGKILL the master (no clean shutdown); return its port."""
        port = self.master_port()
        self.redis[port].kill()
        return port

    def kill_sentinel(self, port: int) -> None:
        self.sentinels[port].kill()

    def failover(self) -> int:
        """Ask a Sentinel for a planned failover (SENTINEL FAILOVER); return the old port."""
        port = self.master_port()
        sentinel = next(p for p, process in self.sentinels.items() if process.alive)
        with self.sentinel_client(sentinel) as client:
            _sentinel(client, "FAILOVER", MASTER_NAME)
        return port

    def wait_for_new_master(self, old_port: int, *, timeout: float = 60.0) -> int:
        """Wait until the failover is complete: every live Sentinel names a master other
        than ``old_port``, that server says it is a master, and the old master, if it
        still runs, has become a replica (which is when its clients are disconnected).
        Return the new master's port."""
        found: list[int] = []

        def role(port: int) -> str:
            with self.redis_client(port) as client:
                return str(client.info("replication").get("role"))

        def switched() -> bool:
            try:
                port = self.master_port()
                if port == old_port or role(port) != "master":
                    return False
                if self.redis[old_port].alive and role(old_port) != "slave":
                    return False
            except (PeerNotReadyError, redis.RedisError, OSError):
                return False
            found.append(port)
            return True

        wait_for(switched, timeout, f"a new master in place of {old_port}", interval=0.1)
        return found[-1]

    def describe_logs(self) -> str:
        return "\n".join(
            process.describe_log() for process in [*self.redis.values(), *self.sentinels.values()]
        )
