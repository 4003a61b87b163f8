"""A worker's job outcomes, run in-process against real files, a real ledger and real peers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.jobs import JobRecord, JobState
from core.messages import RunJobMessage
from core.settings import Settings, validate_settings
from node_services.delivery import DeliveryService
from pacs_ai.phantom import write_chest_ct_series
from tests.conftest import DicomFactory
from tests.support.peers import Orthanc, free_port, wait_for
from tests.support.spooling import spool
from workers.execute import JobExecutor
from workers.runtime import WorkerRuntime

pytestmark = pytest.mark.peers


def settings_for(
    tmp_path: Path, *, pacs_port: int, max_attempts: int = 2, prefetch: str = "auto"
) -> Settings:
    return validate_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "destinations": {
                "pacs": {
                    "host": "127.0.0.1",
                    "port": pacs_port,
                    "ae_title": "ORTHANC",
                    "timeout_seconds": 5,
                }
            },
            "worker": {
                "device": "cpu",
                "max_attempts": max_attempts,
                "retry_backoff_seconds": 0.1,
                "prefetch_next_series": prefetch,
            },
        }
    )


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[WorkerRuntime]:
    instance = WorkerRuntime(settings_for(tmp_path, pacs_port=free_port()))
    yield instance
    instance.close()


def spool_series(runtime: WorkerRuntime, files: list[Path]) -> JobRecord:
    """File ``files`` as the node would, and open a ct-lungs job on them."""
    series_uid = spool(runtime.settings.spool_dir, runtime.ledger, files)
    series = runtime.ledger.get_series(series_uid)
    job = runtime.ledger.open_job(
        series, route="chest-ct", model_id="ct-lungs", destinations=["pacs"], priority=5
    )
    return runtime.ledger.transition(job.job_id, JobState.QUEUED)


def message(job: JobRecord) -> RunJobMessage:
    return RunJobMessage(
        job_id=job.job_id, model_id=job.model_id, series_uid=job.series_instance_uid
    )


def test_a_series_the_model_does_not_accept_fails_with_its_reason_and_is_quarantined(
    runtime: WorkerRuntime, dicom_factory: DicomFactory
) -> None:
    files = dicom_factory.series(25, modality="MR")
    job = spool_series(runtime, files)

    outcome = JobExecutor(runtime).run(message(job), worker="test")

    assert outcome.state is JobState.FAILED and outcome.retry_in is None
    failed = runtime.ledger.get_job(job.job_id)
    assert failed.state is JobState.FAILED
    assert failed.reason is not None
    assert "modality MR is not one the model accepts (CT)" in failed.reason
    [entry] = runtime.ledger.quarantined(series_uid=job.series_instance_uid)
    assert entry.job_id == job.job_id and entry.stage == "model"
    error = json.loads((Path(entry.path) / "error.json").read_text())
    assert error["error_type"] == "InvalidInputError" and error["attempts"] == 1
    # Nothing is lost: every instance is still in the spool.
    assert all(
        Path(i.path).is_file() for i in runtime.ledger.series_instances(job.series_instance_uid)
    )


def test_a_series_with_a_missing_slice_fails_with_a_clear_reason(
    runtime: WorkerRuntime, dicom_factory: DicomFactory
) -> None:
    files = dicom_factory.series(25)
    job = spool_series(runtime, files[:10] + files[11:])

    JobExecutor(runtime).run(message(job), worker="test")

    failed = runtime.ledger.get_job(job.job_id)
    assert failed.state is JobState.FAILED
    assert failed.reason is not None and "missing" in failed.reason.lower()


def test_a_duplicate_message_for_a_finished_job_is_ignored(
    runtime: WorkerRuntime, dicom_factory: DicomFactory
) -> None:
    job = spool_series(runtime, dicom_factory.series(25, modality="MR"))
    executor = JobExecutor(runtime)
    executor.run(message(job), worker="test")
    events_before = runtime.ledger.events(job.job_id)

    outcome = executor.run(message(job), worker="test")

    assert outcome.state is None
    assert runtime.ledger.events(job.job_id) == events_before


def running_on(runtime: WorkerRuntime, job: JobRecord, worker: str) -> JobRecord:
    """``job`` as ``worker`` started it (the RUNNING transition a worker records)."""
    return runtime.ledger.transition(
        job.job_id, JobState.RUNNING, count_attempt=True, detail={"worker": worker}
    )


def test_a_duplicate_message_for_a_job_another_live_worker_runs_is_ignored(
    runtime: WorkerRuntime, dicom_factory: DicomFactory
) -> None:
    # A broker failover mid-job: kombu hands the running job's message out again.
    job = running_on(runtime, spool_series(runtime, dicom_factory.series(25)), "other:1")
    runtime.ledger.worker_heartbeat("other:1", host="gpu-2", pid=1, device="cpu", models=[])
    events_before = runtime.ledger.events(job.job_id)

    outcome = JobExecutor(runtime).run(message(job), worker="test")

    assert outcome.state is None
    assert runtime.ledger.events(job.job_id) == events_before


def test_a_message_for_a_job_whose_worker_went_silent_runs_it(
    runtime: WorkerRuntime, dicom_factory: DicomFactory
) -> None:
    # No heartbeat from "gone:1": the reconciler would queue the job again; so does this.
    files = dicom_factory.series(25, modality="MR")
    job = running_on(runtime, spool_series(runtime, files), "gone:1")

    outcome = JobExecutor(runtime).run(message(job), worker="test")

    assert outcome.state is JobState.FAILED
    assert runtime.ledger.get_job(job.job_id).worker == "test"


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return list(
        write_chest_ct_series(tmp_path_factory.mktemp("phantom"), slices=48, size=160).paths
    )


def test_a_chest_ct_job_delivers_a_seg_and_an_sr_to_the_pacs_and_ends_done(
    tmp_path: Path, orthanc: Orthanc, phantom_files: list[Path]
) -> None:
    runtime = WorkerRuntime(settings_for(tmp_path, pacs_port=orthanc.dicom_port))
    try:
        job = spool_series(runtime, phantom_files)

        outcome = JobExecutor(runtime).run(message(job), worker="test")
        handed_over = runtime.ledger.get_job(job.job_id)
        DeliveryService(runtime.settings, runtime.ledger).run_once()

        done = runtime.ledger.get_job(job.job_id)
        events = runtime.ledger.events(job.job_id)
    finally:
        runtime.close()
    # The worker hands the results to the outbox; the delivery service sends them.
    assert outcome.state is JobState.DELIVERING
    assert handed_over.state is JobState.DELIVERING
    assert done.state is JobState.DONE
    assert [e.state for e in events if e.is_transition][-3:] == [
        JobState.RUNNING,
        JobState.DELIVERING,
        JobState.DONE,
    ]
    timings = {k for e in events for k in e.detail.get("timings", {})}
    assert {"decode", "network", "write", "deliver"} <= timings
    assert done.result["backend"] == "torch" and done.result["precision"] == "fp32"
    volumes = done.result["measurements_ml"]
    assert volumes["Right lung"] > 0 and volumes["Left lung"] > 0
    stored = {orthanc.instance_tags(i)["SOPInstanceUID"] for i in orthanc.instances()}
    assert stored == {done.result["seg_sop_instance_uid"], done.result["sr_sop_instance_uid"]}


def test_a_message_for_a_job_already_handed_to_delivery_is_ignored(
    runtime: WorkerRuntime, phantom_files: list[Path]
) -> None:
    job = spool_series(runtime, phantom_files)
    executor = JobExecutor(runtime)
    executor.run(message(job), worker="test")
    events_before = runtime.ledger.events(job.job_id)

    # acks_late: a worker killed after handing over, before acknowledging, gets it again.
    outcome = executor.run(message(job), worker="test")

    assert outcome.state is None
    assert runtime.ledger.events(job.job_id) == events_before


def test_the_next_queued_series_is_read_while_the_current_job_runs(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, phantom_files: list[Path]
) -> None:
    runtime = WorkerRuntime(settings_for(tmp_path, pacs_port=free_port(), prefetch="on"))
    try:
        first = spool_series(runtime, phantom_files)
        other = write_chest_ct_series(
            tmp_path_factory.mktemp("second"), slices=48, size=160, seed=7
        )
        second = spool_series(runtime, list(other.paths))
        executor = JobExecutor(runtime)
        prefetcher = runtime.prefetcher
        assert prefetcher is not None

        executor.run(message(first), worker="test")
        wait_for(lambda: prefetcher.holds(second.job_id), 60, "the second series read ahead")
        executor.run(message(second), worker="test")

        events = runtime.ledger.events(second.job_id)
    finally:
        runtime.close()
    assert any("series read ahead" in (e.reason or "") for e in events)
    timings = next(e.detail["timings"] for e in events if "timings" in e.detail)
    assert timings["decode"] < 0.05
