"""The outbox and the delivery service against a real Orthanc (DIMSE and DICOMweb).

Retry schedules run on an injected clock: the test moves time forward instead of
sleeping through `delivery.retry_delays`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from core.jobs import InstanceRecord, JobRecord, JobState
from core.ledger import DeliveryState, ItemKind, Ledger, NewItem, Outbox, result_items
from core.settings import Settings, validate_settings
from node_services.delivery import DeliveryService
from tests.conftest import DicomFactory
from tests.support.peers import Orthanc

pytestmark = pytest.mark.peers


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def settings_for(
    tmp_path: Path, destinations: dict[str, Any], *, retry_delays: list[float]
) -> Settings:
    return validate_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "destinations": destinations,
            "delivery": {"retry_delays": retry_delays},
        }
    )


def dimse(orthanc: Orthanc) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
        "ae_title": orthanc.aet,
        "timeout_seconds": 5,
    }


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    instance = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    instance.create_schema()
    yield instance
    instance.close()


def delivering_job(ledger: Ledger, files: list[Path], destinations: list[str]) -> JobRecord:
    """A job whose results (``files``) are in the outbox, as a worker leaves it."""
    first = dcmread(files[0])
    ledger.record_instances(
        [
            InstanceRecord(
                sop_instance_uid="1.2.3.4.1",
                sop_class_uid=str(first.SOPClassUID),
                series_instance_uid=str(first.SeriesInstanceUID),
                study_instance_uid=str(first.StudyInstanceUID),
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=str(files[0]),
                size=1,
                received_at=time.time(),
                calling_ae="SCANNER",
                called_ae="PACSAI",
                peer="127.0.0.1:1",
            )
        ]
    )
    job = ledger.open_job(
        ledger.get_series(str(first.SeriesInstanceUID)),
        route="r",
        model_id="m",
        destinations=destinations,
        priority=5,
    )
    for state in (JobState.QUEUED, JobState.RUNNING):
        ledger.transition(job.job_id, state)
    Outbox(ledger).add(
        result_items(
            job_id=job.job_id,
            series_uid=job.series_instance_uid,
            route="r",
            destinations=destinations,
            files=[(str(dcmread(f).SOPInstanceUID), str(dcmread(f).SOPClassUID), f) for f in files],
        )
    )
    return ledger.transition(job.job_id, JobState.DELIVERING)


def test_results_reach_the_pacs_and_the_job_ends_done(
    tmp_path: Path, ledger: Ledger, orthanc: Orthanc, dicom_factory: DicomFactory
) -> None:
    settings = settings_for(tmp_path, {"pacs": dimse(orthanc)}, retry_delays=[10])
    files = dicom_factory.series(2)
    job = delivering_job(ledger, files, ["pacs"])

    DeliveryService(settings, ledger).run_once()

    assert ledger.get_job(job.job_id).state is JobState.DONE
    items = Outbox(ledger).items(job_id=job.job_id)
    assert [(i.state, i.attempts, i.last_status) for i in items] == [(DeliveryState.SENT, 1, 0)] * 2
    assert len(orthanc.instances()) == 2


def test_a_pacs_that_comes_back_within_the_retry_schedule_gets_every_result(
    tmp_path: Path, ledger: Ledger, orthanc: Orthanc, dicom_factory: DicomFactory
) -> None:
    settings = settings_for(tmp_path, {"pacs": dimse(orthanc)}, retry_delays=[10, 30])
    job = delivering_job(ledger, dicom_factory.series(2), ["pacs"])
    clock = Clock()
    service = DeliveryService(settings, ledger, clock=clock)
    orthanc.stop(graceful=False)

    service.run_once()
    waiting = Outbox(ledger).items(job_id=job.job_id)
    orthanc.start(fixed_ports=True)
    clock.now += 9
    assert service.run_once() == 0  # not due yet
    clock.now += 1
    service.run_once()

    assert all(i.state is DeliveryState.PENDING and i.attempts == 1 for i in waiting)
    assert all(i.next_attempt_at == pytest.approx(waiting[0].updated_at + 10) for i in waiting)
    assert waiting[0].last_error and "ORTHANC" in waiting[0].last_error
    assert ledger.get_job(job.job_id).state is JobState.DONE
    assert len(orthanc.instances()) == 2


def test_retries_used_up_dead_letter_the_results_and_fail_the_job_until_resent(
    tmp_path: Path, ledger: Ledger, orthanc: Orthanc, dicom_factory: DicomFactory
) -> None:
    settings = settings_for(tmp_path, {"pacs": dimse(orthanc)}, retry_delays=[5])
    job = delivering_job(ledger, dicom_factory.series(1), ["pacs"])
    clock = Clock()
    service = DeliveryService(settings, ledger, clock=clock)
    orthanc.stop(graceful=False)

    service.run_once()
    clock.now += 5
    service.run_once()
    failed = ledger.get_job(job.job_id)
    [dead] = Outbox(ledger).items(job_id=job.job_id)

    assert dead.state is DeliveryState.DEAD and dead.attempts == 2
    assert failed.state is JobState.FAILED
    assert failed.reason is not None and f"pacs-ai resend {job.job_id}" in failed.reason
    [quarantined] = ledger.quarantined(series_uid=job.series_instance_uid)
    assert json.loads((Path(quarantined.path) / "error.json").read_text())["stage"] == "deliver"

    orthanc.start(fixed_ports=True)
    assert Outbox(ledger).resend(job_id=job.job_id) == 1
    ledger.transition(job.job_id, JobState.DELIVERING, reason="resend")
    service.run_once()

    assert ledger.get_job(job.job_id).state is JobState.DONE
    assert len(orthanc.instances()) == 1


def test_a_permanent_rejection_fails_the_job_without_retrying(
    tmp_path: Path, ledger: Ledger, orthanc: Orthanc, dicom_factory: DicomFactory
) -> None:
    settings = settings_for(tmp_path, {"pacs": dimse(orthanc)}, retry_delays=[10, 30])
    # A private SOP class Orthanc does not accept (UnknownSopClassAccepted is false).
    unknown = dicom_factory.image(sop_class_uid="1.2.826.0.1.3680043.10.1399.999")
    job = delivering_job(ledger, [unknown], ["pacs"])

    DeliveryService(settings, ledger).run_once()

    [item] = Outbox(ledger).items(job_id=job.job_id)
    assert item.state is DeliveryState.REJECTED and item.attempts == 1
    failed = ledger.get_job(job.job_id)
    assert failed.state is JobState.FAILED
    assert failed.reason is not None and "refused" in failed.reason


def test_originals_are_forwarded_without_a_job(
    tmp_path: Path, ledger: Ledger, orthanc: Orthanc, dicom_factory: DicomFactory
) -> None:
    settings = settings_for(tmp_path, {"archive": dimse(orthanc)}, retry_delays=[10])
    files = dicom_factory.series(3)
    Outbox(ledger).add(
        NewItem(
            destination="archive",
            kind=ItemKind.ORIGINAL,
            series_uid="1.2.3",
            route="router",
            sop_instance_uid=str(dcmread(f).SOPInstanceUID),
            sop_class_uid=str(dcmread(f).SOPClassUID),
            path=str(f),
        )
        for f in files
    )

    DeliveryService(settings, ledger).run_once()

    assert {i.state for i in Outbox(ledger).items(series_uid="1.2.3")} == {DeliveryState.SENT}
    assert len(orthanc.instances()) == 3


def test_a_dicomweb_destination_receives_results_with_stow_rs(
    tmp_path: Path, ledger: Ledger, dicomweb_orthanc: Orthanc, dicom_factory: DicomFactory
) -> None:
    web = {"type": "dicomweb", "url": f"http://127.0.0.1:{dicomweb_orthanc.http_port}/dicom-web"}
    settings = settings_for(tmp_path, {"web": web}, retry_delays=[10])
    job = delivering_job(ledger, dicom_factory.series(2), ["web"])

    DeliveryService(settings, ledger).run_once()

    assert ledger.get_job(job.job_id).state is JobState.DONE
    assert {i.state for i in Outbox(ledger).items(job_id=job.job_id)} == {DeliveryState.SENT}
    assert len(dicomweb_orthanc.instances()) == 2


def test_an_unreachable_dicomweb_server_is_a_transient_failure(
    tmp_path: Path, ledger: Ledger, dicom_factory: DicomFactory
) -> None:
    web = {"type": "dicomweb", "url": "http://127.0.0.1:9/dicom-web", "timeout_seconds": 2}
    settings = settings_for(tmp_path, {"web": web}, retry_delays=[10])
    job = delivering_job(ledger, dicom_factory.series(1), ["web"])

    DeliveryService(settings, ledger).run_once()

    [item] = Outbox(ledger).items(job_id=job.job_id)
    assert item.state is DeliveryState.PENDING and item.attempts == 1
    assert item.last_error is not None and "cannot reach" in item.last_error
    assert ledger.get_job(job.job_id).state is JobState.DELIVERING
