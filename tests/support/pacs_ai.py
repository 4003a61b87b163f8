"""pacs-ai itself as the tests run it: real ``pacs-ai serve`` / ``pacs-ai worker`` processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from core.jobs import JobRecord, JobState
from core.ledger import Ledger
from tests.support.peers import PeerProcess, free_port, port_open, wait_for


class PacsAiDeployment:
    """A node and a worker started from one configuration file, as a user would."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config.setdefault("data_dir", str(workdir / "data"))
        self.config.setdefault("node", {}).setdefault("port", free_port())
        self.config["node"].setdefault("host", "127.0.0.1")
        # The dashboard too, on a free port: test runs side by side must not clash.
        self.config.setdefault("monitor", {}).setdefault("port", free_port())
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.node = self._process("serve")
        self.worker = self._process("worker")
        self._ledger: Ledger | None = None

    def _process(self, command: str) -> PeerProcess:
        return PeerProcess(
            f"pacs-ai {command}",
            [sys.executable, "-m", "pacs_ai", command, "--config", self.config_path],
            log_path=self.workdir / f"{command}.log",
        )

    @property
    def port(self) -> int:
        return int(self.config["node"]["port"])

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.config['monitor']['port']}"

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            data_dir = Path(self.config["data_dir"])
            self._ledger = Ledger(
                self.config.get("ledger_url") or f"sqlite:///{data_dir / 'ledger.sqlite3'}"
            )
            self._ledger.create_schema()
        return self._ledger

    def start(self, *, timeout: float = 120.0, worker: bool = True) -> None:
        try:
            self.start_node(timeout=timeout)
            if worker:
                self.start_worker(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def start_node(self, *, timeout: float = 120.0) -> None:
        self.node = self._process("serve")
        self.node.start()
        wait_for(lambda: port_open(self.port), timeout, "pacs-ai serve", process=self.node)

    def start_worker(self, *, timeout: float = 120.0) -> None:
        self.worker = self._process("worker")
        since = time.time() - 1
        self.worker.start()
        wait_for(
            lambda: bool(self.ledger.workers(seen_since=since)),
            timeout,
            "pacs-ai worker with its models warm",
            process=self.worker,
        )

    def kill(self, process: PeerProcess) -> None:
        """SIGKILL a pacs-ai process and every child (a prefork worker's pool too)."""
        if process.pid is not None and process.alive:
            os.killpg(process.pid, signal.SIGKILL)
        process.stop()

    def stop(self) -> None:
        self.worker.stop(timeout=30)
        self.node.stop(timeout=30)
        if self._ledger is not None:
            self._ledger.close()

    def wait_for_job(
        self, series_uid: str, state: JobState, *, after: float = 0.0, timeout: float
    ) -> JobRecord:
        """Wait until the series' job reaches ``state`` (having been updated after ``after``)."""

        def reached() -> bool:
            jobs = self.ledger.jobs(series_uid=series_uid)
            if jobs and jobs[0].state == JobState.FAILED and state != JobState.FAILED:
                raise AssertionError(f"job failed: {jobs[0].reason}\n{self.logs()}")
            return bool(jobs) and jobs[0].state == state and jobs[0].updated_at > after

        wait_for(reached, timeout, f"job of series {series_uid} {state}", process=self.node)
        return self.ledger.jobs(series_uid=series_uid)[0]

    def logs(self) -> str:
        return f"{self.node.describe_log()}\n{self.worker.describe_log()}"
