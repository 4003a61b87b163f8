"""Fault injection against the real peers: `pacs-ai serve` and `pacs-ai worker` processes,
redis-server, Orthanc and DCMTK. After each fault every received instance ends in a
delivered result or in quarantine, and the PACS holds exactly one SEG and one SR per series.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from core.jobs import JobState
from pacs_ai.phantom import write_chest_ct_series
from tests.support.invariants import (
    assert_every_instance_delivered_or_quarantined,
    assert_one_seg_and_one_sr_per_series,
)
from tests.support.pacs_ai import PacsAiDeployment
from tests.support.peers import Orthanc, RedisServer, dcmtk_env, storescu, tool_or_skip

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def make_deployment(
    tmp_path: Path, redis_server: RedisServer, orthanc: Orthanc
) -> Iterator[Callable[..., PacsAiDeployment]]:
    started: list[PacsAiDeployment] = []

    def make(*, worker: bool = True) -> PacsAiDeployment:
        config: dict[str, Any] = {
            "broker_url": redis_server.url,
            "node": {"ae_title": "PACSAI"},
            "completion": {"series_quiet_seconds": 1.5, "check_interval_seconds": 0.2},
            "destinations": {
                "pacs": {
                    "host": "127.0.0.1",
                    "port": orthanc.dicom_port,
                    "ae_title": "ORTHANC",
                    "timeout_seconds": 5,
                }
            },
            "routes": [
                {
                    "name": "chest-ct",
                    "match": {"Modality": "CT"},
                    "models": ["ct-lungs"],
                    "send_results_to": ["pacs"],
                }
            ],
            "delivery": {"retry_delays": [1, 2, 4, 8, 16], "poll_interval_seconds": 0.2},
            "reconciler": {"interval_seconds": 0.5, "requeue_after_seconds": 2},
            "worker": {
                "heartbeat_seconds": 0.5,
                "lost_after_seconds": 3,
                "job_timeout_seconds": 300,
            },
        }
        deployment = PacsAiDeployment(tmp_path / f"pacs-ai-{len(started)}", config)
        started.append(deployment)
        deployment.start(worker=worker)
        return deployment

    yield make
    for deployment in started:
        deployment.stop()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> list[list[Path]]:
    """Two synthetic chest CTs of different studies."""
    root = tmp_path_factory.mktemp("phantoms")
    return [
        list(write_chest_ct_series(root / f"p{seed}", slices=64, size=192, seed=seed).paths)
        for seed in (1, 2)
    ]


def series_of(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def send(deployment: PacsAiDeployment, files: list[Path]) -> None:
    result = storescu(files, "127.0.0.1", deployment.port, "PACSAI", "MODALITY")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_worker_killed_mid_job_leaves_exactly_one_seg_and_sr_in_the_pacs(
    make_deployment: Callable[..., PacsAiDeployment], orthanc: Orthanc, lidc_ct_dir: Path
) -> None:
    deployment = make_deployment()
    files = sorted(lidc_ct_dir.glob("*.dcm"))
    series = series_of(files)
    send(deployment, files)
    running = deployment.wait_for_job(series, JobState.RUNNING, timeout=120)

    deployment.kill(deployment.worker)
    assert deployment.ledger.get_job(running.job_id).state is JobState.RUNNING, "killed too late"
    deployment.start_worker()

    done = deployment.wait_for_job(series, JobState.DONE, timeout=240)
    reasons = [e.reason or "" for e in deployment.ledger.events(done.job_id)]
    assert any("stopped answering" in reason for reason in reasons)
    assert_every_instance_delivered_or_quarantined(deployment.ledger)
    assert_one_seg_and_one_sr_per_series(orthanc, {series})


def test_a_pacs_back_within_the_retry_schedule_receives_the_results(
    make_deployment: Callable[..., PacsAiDeployment], orthanc: Orthanc, phantoms: list[list[Path]]
) -> None:
    deployment = make_deployment()
    files = phantoms[0]
    orthanc.stop(graceful=False)
    send(deployment, files)
    deployment.wait_for_job(series_of(files), JobState.DELIVERING, timeout=120)

    orthanc.start(fixed_ports=True)

    deployment.wait_for_job(series_of(files), JobState.DONE, timeout=120)
    assert_every_instance_delivered_or_quarantined(deployment.ledger)
    assert_one_seg_and_one_sr_per_series(orthanc, {series_of(files)})


def test_a_redis_restarted_with_jobs_queued_loses_none_of_them(
    make_deployment: Callable[..., PacsAiDeployment],
    orthanc: Orthanc,
    redis_server: RedisServer,
    phantoms: list[list[Path]],
) -> None:
    deployment = make_deployment(worker=False)
    for files in phantoms:
        send(deployment, files)
    for files in phantoms:
        deployment.wait_for_job(series_of(files), JobState.QUEUED, timeout=60)

    redis_server.restart()  # no persistence: every queued message is gone
    deployment.start_worker()

    for files in phantoms:
        deployment.wait_for_job(series_of(files), JobState.DONE, timeout=240)
    assert_every_instance_delivered_or_quarantined(deployment.ledger)
    assert_one_seg_and_one_sr_per_series(orthanc, {series_of(f) for f in phantoms})


def test_a_node_killed_while_a_series_is_half_received_completes_it_afterwards(
    make_deployment: Callable[..., PacsAiDeployment], orthanc: Orthanc, phantoms: list[list[Path]]
) -> None:
    deployment = make_deployment()
    files = phantoms[0]
    send(deployment, files[: len(files) // 2])

    deployment.kill(deployment.node)
    deployment.start_node()
    send(deployment, files[len(files) // 2 :])

    done = deployment.wait_for_job(series_of(files), JobState.DONE, timeout=240)
    assert done.result["instances"] == len(files)
    assert deployment.ledger.get_series(series_of(files)).instance_count == len(files)
    assert_every_instance_delivered_or_quarantined(deployment.ledger)
    assert_one_seg_and_one_sr_per_series(orthanc, {series_of(files)})


def test_two_studies_sent_interleaved_over_parallel_associations_both_come_back(
    make_deployment: Callable[..., PacsAiDeployment], orthanc: Orthanc, phantoms: list[list[Path]]
) -> None:
    deployment = make_deployment()
    binary = tool_or_skip("storescu")
    senders = [
        subprocess.Popen(
            [
                str(binary),
                "-nh",
                "-aet",
                f"MODALITY{n}",
                "-aec",
                "PACSAI",
                "127.0.0.1",
                str(deployment.port),
                *map(str, files),
            ],
            env=dcmtk_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for n, files in enumerate(phantoms)
    ]
    for sender in senders:
        output, _ = sender.communicate(timeout=120)
        assert sender.returncode == 0, output

    for files in phantoms:
        deployment.wait_for_job(series_of(files), JobState.DONE, timeout=240)
    assert_every_instance_delivered_or_quarantined(deployment.ledger)
    assert_one_seg_and_one_sr_per_series(orthanc, {series_of(f) for f in phantoms})


def test_a_series_sent_twice_is_run_again_and_replaces_its_results(
    make_deployment: Callable[..., PacsAiDeployment], orthanc: Orthanc, phantoms: list[list[Path]]
) -> None:
    deployment = make_deployment()
    files = phantoms[1]
    send(deployment, files)
    first = deployment.wait_for_job(series_of(files), JobState.DONE, timeout=240)

    again_after = time.time()
    send(deployment, files)
    second = deployment.wait_for_job(
        series_of(files), JobState.DONE, after=again_after, timeout=240
    )

    assert second.job_id == first.job_id
    assert deployment.ledger.get_series(series_of(files)).resent_count == len(files)
    assert_every_instance_delivered_or_quarantined(deployment.ledger)
    assert_one_seg_and_one_sr_per_series(orthanc, {series_of(files)})
