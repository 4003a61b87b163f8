"""Redis Sentinel as the broker: real ``pacs-ai serve`` and two ``pacs-ai worker``
processes, a master, a replica and three Sentinels (Debian's redis-sentinel). The broker
fails over while a job runs; the job finishes exactly once, and the next job runs on the
new master.

The job's process is paused (SIGSTOP) from before the failover until the new master is
in place, so that the job is certainly mid-way whatever the machine's speed; the
workers' consumers stay awake and live through the failover as they would in a long job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from core.jobs import JobRecord, JobState
from pacs_ai.phantom import write_chest_ct_series
from tests.support.invariants import assert_every_instance_delivered_or_quarantined
from tests.support.pacs_ai import PacsAiDeployment
from tests.support.peers import PeerProcess, storescu, wait_for
from tests.support.sentinel import SentinelGroup

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelGroup]:
    with SentinelGroup(tmp_path / "redis", replicas=1, sentinels=3) as group:
        yield group


@pytest.fixture
def deployment(tmp_path: Path, sentinels: SentinelGroup) -> Iterator[PacsAiDeployment]:
    """A node and two workers, all on the Sentinels."""
    config: dict[str, Any] = {
        **sentinels.settings,
        "node": {"ae_title": "PACSAI"},
        "completion": {"series_quiet_seconds": 1.0, "check_interval_seconds": 0.2},
        # No destination: the worker keeps the results and the job ends DONE.
        "routes": [{"name": "chest-ct", "match": {"Modality": "CT"}, "models": ["ct-lungs"]}],
        "reconciler": {"interval_seconds": 1, "requeue_after_seconds": 5},
        "worker": {"device": "cpu", "heartbeat_seconds": 0.5, "job_timeout_seconds": 300},
    }
    pacs_ai = PacsAiDeployment(tmp_path / "pacs-ai", config)
    second = PeerProcess(
        "second pacs-ai worker",
        [sys.executable, "-m", "pacs_ai", "worker", "--config", pacs_ai.config_path],
        log_path=pacs_ai.workdir / "worker-2.log",
    )
    try:
        pacs_ai.start()
        since = time.time()
        second.start()
        wait_for(
            lambda: len(pacs_ai.ledger.workers(seen_since=since)) >= 2,
            120,
            "a second worker with its models warm",
            process=second,
        )
        yield pacs_ai
    finally:
        second.stop(timeout=30)
        pacs_ai.stop()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> list[list[Path]]:
    """Two synthetic chest CTs of different studies."""
    root = tmp_path_factory.mktemp("phantoms")
    return [
        list(write_chest_ct_series(root / f"p{seed}", slices=48, size=160, seed=seed).paths)
        for seed in (1, 2)
    ]


def send(deployment: PacsAiDeployment, files: list[Path]) -> str:
    result = storescu(files, "127.0.0.1", deployment.port, "PACSAI", "MODALITY")
    assert result.returncode == 0, result.stdout + result.stderr
    return str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


@contextlib.contextmanager
def paused(job: JobRecord) -> Iterator[None]:
    """SIGSTOP the worker process running ``job`` for the block (its ledger name ends in
    its pid), SIGCONT after."""
    assert job.worker is not None
    pid = int(job.worker.rsplit(":", 1)[1])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def assert_ran_once_with_one_result(deployment: PacsAiDeployment, job: JobRecord) -> None:
    [only] = deployment.ledger.jobs(series_uid=job.series_instance_uid)
    assert only.job_id == job.job_id and only.state is JobState.DONE
    states = [e.state for e in deployment.ledger.events(job.job_id) if e.is_transition]
    assert states.count(JobState.RUNNING) == 1, states
    assert states.count(JobState.DONE) == 1, states
    kinds = sorted(kind for kind, *_ in only.result["deliveries"][""])
    assert kinds == ["seg", "sr"]
    results = Path(deployment.config["data_dir"]) / "results" / job.job_id
    assert sorted(results.rglob("*.dcm")) == sorted(Path(f) for f in only.result["files"])


@pytest.mark.parametrize("failover", ["master killed", "planned failover"])
def test_a_job_running_during_a_sentinel_failover_finishes_once_and_the_next_runs(
    deployment: PacsAiDeployment,
    sentinels: SentinelGroup,
    phantoms: list[list[Path]],
    failover: str,
) -> None:
    first = send(deployment, phantoms[0])
    running = deployment.wait_for_job(first, JobState.RUNNING, timeout=120)

    with paused(running):
        if failover == "master killed":
            old_master = sentinels.kill_master()
            # The Sentinel every client asks first goes too: they must ask the next one.
            sentinels.kill_sentinel(sentinels.sentinel_ports[0])
        else:
            old_master = sentinels.failover()
        sentinels.wait_for_new_master(old_master)
        assert deployment.ledger.get_job(running.job_id).state is JobState.RUNNING, (
            "the job ended before it was paused"
        )
    done = deployment.wait_for_job(first, JobState.DONE, timeout=240)
    assert_ran_once_with_one_result(deployment, done)

    second = send(deployment, phantoms[1])
    done_next = deployment.wait_for_job(second, JobState.DONE, timeout=240)
    assert_ran_once_with_one_result(deployment, done_next)
    assert_every_instance_delivered_or_quarantined(deployment.ledger)
