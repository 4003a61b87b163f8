"""Scale-out for real: a worker without the node's file system, and two nodes sharing
one PostgreSQL ledger and one Redis.

The remote worker runs as another Unix user, with a data directory of its own, and cannot
read the node's: it gets the LIDC chest CT over WADO-RS and hands SEG and SR back with
STOW-RS; the node delivers them to Orthanc. Killed with SIGKILL half-way through the fetch,
then half-way through the upload (a proxy holds the transfer at that point), it leaves
exactly one SEG and one SR in the PACS. Two nodes each receive half of one series (two
storescu runs at once): the series completes once, and a worker fetches each instance
from the node that holds it; with that node stopped the job waits, saying why, and
finishes when the node is back.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread

from core.jobs import JobState
from core.ledger import Outbox
from pacs_ai.phantom import write_chest_ct_series
from tests.support.invariants import (
    assert_every_instance_delivered_or_quarantined,
    assert_one_seg_and_one_sr_per_series,
)
from tests.support.pacs_ai import PacsAiDeployment
from tests.support.peers import Orthanc, PeerProcess, RedisServer, free_port, storescu, wait_for
from tests.support.postgres import fresh_database
from tests.support.scale_out import Account, HoldingProxy, Python, other_account, python_for

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(900)]

WORKER_TOKEN = "remote-gpu-host-token-0123456789"  # noqa: S105
#: Held this far into the 145 MB fetch, or this far into the upload of SEG and SR.
MID_FETCH_BYTES = 40 * 1024 * 1024
MID_UPLOAD_BYTES = 256 * 1024


def common_config(ledger_url: str, redis: RedisServer, orthanc: Orthanc) -> dict[str, Any]:
    """What every node and worker of a site shares: ledger, broker, routes, timings."""
    return {
        "ledger_url": ledger_url,
        "broker_url": redis.url,
        "destinations": {
            "pacs": {"host": "127.0.0.1", "port": orthanc.dicom_port, "ae_title": "ORTHANC"}
        },
        "routes": [
            {
                "name": "chest-ct",
                "match": {"Modality": "CT"},
                "models": ["ct-lungs"],
                "send_results_to": ["pacs"],
            }
        ],
        "completion": {"series_quiet_seconds": 3, "check_interval_seconds": 0.2},
        "delivery": {"retry_delays": [1, 2, 4, 8], "poll_interval_seconds": 0.2},
        "reconciler": {"interval_seconds": 0.5, "requeue_after_seconds": 5},
        "worker": {
            "heartbeat_seconds": 0.5,
            "lost_after_seconds": 4,
            "node_retry_seconds": 1,
            "fetch_timeout_seconds": 20,
        },
        "monitor": {
            "host": "127.0.0.1",
            "tokens": [{"name": "gpu-hosts", "role": "worker", "token": WORKER_TOKEN}],
        },
    }


@pytest.fixture
def ledger_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def remote_user() -> Iterator[tuple[Account, Python]]:
    """Another Unix user, and the Python it runs pacs-ai with."""
    account = other_account()
    with python_for(account) as python:
        yield account, python


class RemoteWorker:
    """``pacs-ai worker`` as another Unix user, with its own data directory, fetching from
    ``fetch_from``; its token only in its environment (``PACS_AI_WORKER__FETCH_TOKEN``)."""

    def __init__(
        self, account: Account, python: Python, home: Path, config: dict[str, Any], *, log: Path
    ) -> None:
        self.account = account
        self.python = python
        self.home = home
        self.data_dir = home / "data"
        self.config = {**config, "data_dir": str(self.data_dir)}
        self.config_path = home / "worker.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        os.chown(self.config_path, account.uid, account.gid)
        self.log_path = log
        self.process: PeerProcess | None = None

    def start(self, ledger_reader: PacsAiDeployment, *, timeout: float = 180.0) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "PACS_AI_WORKER__FETCH_TOKEN": WORKER_TOKEN,
            **self.python.env,
        }
        self.process = PeerProcess(
            "remote pacs-ai worker",
            self.account.argv(
                self.python.executable, "-m", "pacs_ai", "worker", "--config", self.config_path
            ),
            log_path=self.log_path,
            env=env,
            cwd=self.home,
        )
        since = time.time() - 1
        self.process.start()
        wait_for(
            lambda: bool(ledger_reader.ledger.workers(seen_since=since)),
            timeout,
            "the remote worker with its models warm",
            process=self.process,
        )

    def kill(self) -> None:
        if self.process is not None and self.process.pid is not None and self.process.alive:
            os.killpg(self.process.pid, 9)
        if self.process is not None:
            self.process.stop()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=30)

    def fetched_files(self) -> list[Path]:
        return sorted((self.data_dir / "fetch").glob("*/*/*.dcm"))


@pytest.fixture
def remote_site(
    tmp_path: Path,
    ledger_url: str,
    redis_server: RedisServer,
    orthanc: Orthanc,
    remote_user: tuple[Account, Python],
) -> Iterator[tuple[PacsAiDeployment, RemoteWorker, HoldingProxy]]:
    account, python = remote_user
    config = common_config(ledger_url, redis_server, orthanc)
    node = PacsAiDeployment(
        tmp_path / "node",
        {
            **config,
            "data_dir": str(tmp_path / "node" / "data"),
            "node": {"ae_title": "PACSAI", "name": "node-a"},
        },
    )
    monitor_port = int(node.config["monitor"]["port"])
    with HoldingProxy(monitor_port) as proxy, account.own_folder() as home:
        worker_config = {
            **config,
            "worker": {**config["worker"], "fetch_from": f"{proxy.url}/dicomweb"},
        }
        worker = RemoteWorker(account, python, home, worker_config, log=tmp_path / "worker.log")
        node.start(worker=False)
        try:
            yield node, worker, proxy
        finally:
            worker.kill()
            node.stop()


def test_a_remote_worker_as_another_user_turns_the_lidc_ct_into_one_seg_and_one_sr_despite_kills(
    remote_site: tuple[PacsAiDeployment, RemoteWorker, HoldingProxy],
    orthanc: Orthanc,
    lidc_ct_dir: Path,
) -> None:
    node, worker, proxy = remote_site
    series_uid = str(
        dcmread(next(lidc_ct_dir.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID
    )

    # Killed half-way through fetching the series.
    proxy.hold_download_after(MID_FETCH_BYTES)
    worker.start(node)
    assert storescu(lidc_ct_dir, "127.0.0.1", node.port, "PACSAI", "MODALITY").returncode == 0
    spooled = next((Path(node.config["data_dir"]) / "spool").rglob("*.dcm"))
    assert not worker.account.can_read(spooled), "the worker must not read the node's spool"
    wait_for(proxy.holding.is_set, 120, "the worker half-way through its fetch")
    assert 0 < len(worker.fetched_files()) < 275
    assert node.ledger.jobs(series_uid=series_uid)[0].state == JobState.RUNNING
    worker.kill()
    proxy.let_go()
    worker.start(node)
    job = node.wait_for_job(series_uid, JobState.DONE, timeout=300)
    notes = [e.reason or "" for e in node.ledger.events(job.job_id)]
    assert any("over DICOMweb from node-a" in note for note in notes)
    assert any("handed to the node over STOW-RS" in note for note in notes)
    assert worker.fetched_files() == [], "the fetched series is removed after the job"

    # Sent again (a re-run): killed half-way through handing the results back.
    proxy.hold_upload_after(MID_UPLOAD_BYTES)
    rerun_after = time.time()
    assert storescu(lidc_ct_dir, "127.0.0.1", node.port, "PACSAI", "MODALITY").returncode == 0
    wait_for(proxy.holding.is_set, 300, "the worker half-way through its upload")
    worker.kill()
    proxy.let_go()
    worker.start(node)
    again = node.wait_for_job(series_uid, JobState.DONE, after=rerun_after, timeout=300)

    assert again.job_id == job.job_id
    # The record names the node's copies of the results, not the worker's, now removed.
    assert again.result["node"] == "node-a"
    recorded = [Path(entry[3]) for e in again.result["deliveries"].values() for entry in e]
    recorded += [Path(path) for path in again.result["files"]]
    node_results = Path(node.config["data_dir"]) / "results" / job.job_id
    assert recorded
    assert all(path.parent == node_results and path.is_file() for path in recorded), recorded
    assert_every_instance_delivered_or_quarantined(node.ledger)
    assert_one_seg_and_one_sr_per_series(orthanc, {series_uid})
    # The worker removes them once the job is handed over, which may be just after the
    # node delivered the results.
    wait_for(lambda: worker.fetched_files() == [], 30, "the fetched series removed")
    assert not (worker.data_dir / "results" / job.job_id).exists()


# -- two nodes ----------------------------------------------------------------------------


@pytest.fixture
def two_nodes(
    tmp_path: Path, ledger_url: str, redis_server: RedisServer, orthanc: Orthanc
) -> Iterator[tuple[PacsAiDeployment, PacsAiDeployment]]:
    config = common_config(ledger_url, redis_server, orthanc)
    # Long enough for the test to act between the last instance and the completion.
    config["completion"] = {"series_quiet_seconds": 6, "check_interval_seconds": 0.2}
    nodes = []
    for name in ("node-a", "node-b"):
        monitor_port = free_port()
        nodes.append(
            PacsAiDeployment(
                tmp_path / name,
                {
                    **config,
                    "data_dir": str(tmp_path / name / "data"),
                    "node": {
                        "ae_title": "PACSAI",
                        "name": name,
                        "dicomweb_url": f"http://127.0.0.1:{monitor_port}/dicomweb",
                    },
                    "monitor": {**config["monitor"], "port": monitor_port},
                    # The worker beside node A reads A's spool and fetches B's instances.
                    "worker": {**config["worker"], "fetch_token": WORKER_TOKEN},
                },
            )
        )
    a, b = nodes
    try:
        a.start()
        b.start(worker=False)
        yield a, b
    finally:
        b.stop()
        a.stop()


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], list[Path]]:
    root = tmp_path_factory.mktemp("phantoms")

    def write(seed: int) -> list[Path]:
        return list(write_chest_ct_series(root / f"p{seed}", slices=64, size=192, seed=seed).paths)

    return write


def send_halves(files: list[Path], a: PacsAiDeployment, b: PacsAiDeployment) -> None:
    """Odd slices to node A, even ones to node B, two storescu runs at once."""
    results: dict[str, int] = {}

    def send(name: str, part: list[Path], port: int) -> None:
        results[name] = storescu(part, "127.0.0.1", port, "PACSAI", "MODALITY").returncode

    runs = [
        threading.Thread(target=send, args=("a", files[0::2], a.port)),
        threading.Thread(target=send, args=("b", files[1::2], b.port)),
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=120)
    assert results == {"a": 0, "b": 0}


def series_uid_of(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def test_a_series_split_across_two_nodes_completes_once_with_every_instance(
    two_nodes: tuple[PacsAiDeployment, PacsAiDeployment],
    orthanc: Orthanc,
    phantom: Callable[[int], list[Path]],
) -> None:
    a, b = two_nodes
    files = phantom(1)
    series_uid = series_uid_of(files)

    send_halves(files, a, b)
    job = a.wait_for_job(series_uid, JobState.DONE, timeout=300)

    holders = {i.node for i in a.ledger.series_instances(series_uid)}
    assert holders == {"node-a", "node-b"}
    assert len(a.ledger.jobs(series_uid=series_uid)) == 1
    events = a.ledger.events(job.job_id)
    assert [e.state for e in events].count(JobState.READY) == 1, "completed more than once"
    assert job.result["instances"] == 64
    assert any("over DICOMweb from node-b" in (e.reason or "") for e in events)
    logs = a.node.log_path.read_text() + b.node.log_path.read_text()
    assert logs.count("series complete: 64 instances") == 1
    # The worker beside node A wrote the results on A's disk: A, and only A, delivers them.
    assert {item.node for item in Outbox(a.ledger).items(job_id=job.job_id)} == {"node-a"}
    assert_every_instance_delivered_or_quarantined(a.ledger)
    assert_one_seg_and_one_sr_per_series(orthanc, {series_uid})


def test_a_job_waits_for_a_stopped_node_that_holds_its_instances_and_finishes_after_its_restart(
    two_nodes: tuple[PacsAiDeployment, PacsAiDeployment],
    orthanc: Orthanc,
    phantom: Callable[[int], list[Path]],
) -> None:
    a, b = two_nodes
    files = phantom(2)
    series_uid = series_uid_of(files)

    send_halves(files, a, b)
    # Every instance recorded, the series not yet complete: node B dies (SIGKILL).
    wait_for(lambda: len(a.ledger.series_instances(series_uid)) == 64, 30, "64 recorded")
    assert not a.ledger.jobs(series_uid=series_uid), "node B must go before the job runs"
    a.kill(b.node)

    def waiting_for_b() -> bool:
        jobs = a.ledger.jobs(series_uid=series_uid)
        return (
            bool(jobs)
            and jobs[0].state == JobState.RETRYING
            and ("waiting for node node-b" in (jobs[0].reason or ""))
        )

    wait_for(waiting_for_b, 120, "the job waiting for node B", process=a.node)
    waiting = a.ledger.jobs(series_uid=series_uid)[0]
    assert waiting.attempts == 0, "waiting for a node uses up no attempt"
    b.start_node()
    job = a.wait_for_job(series_uid, JobState.DONE, timeout=300)

    assert job.job_id == waiting.job_id
    assert_every_instance_delivered_or_quarantined(a.ledger)
    assert_one_seg_and_one_sr_per_series(orthanc, {series_uid})
