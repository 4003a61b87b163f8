"""A destination that rejects our association permanently is a configuration error, said
at once, retried on its own slower schedule, and delivered to once it is fixed.

Real Orthanc servers do the rejecting: one that knows only declared modalities (our
calling AE title not recognised) and one that checks the called AE title. The retry
schedule runs on an injected clock, as in test_delivery.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydicom import dcmread

from core.jobs import InstanceRecord, JobRecord, JobState
from core.ledger import DeliveryState, Ledger, Outbox, result_items
from core.settings import Settings, validate_settings
from monitor.readings import Readings
from node_services.delivery import DeliveryService
from pacs_ai.cli import main
from tests.conftest import DicomFactory
from tests.support.peers import LOCALHOST, Orthanc, RedisServer

pytestmark = pytest.mark.peers

#: Orthanc answers only the modalities it declares (calling AE title not recognised).
KNOWN_CALLERS_ONLY = {
    "DicomAlwaysAllowStore": False,
    "DicomAlwaysAllowEcho": False,
    "DicomAlwaysAllowFind": False,
    "DicomAlwaysAllowGet": False,
    "DicomAlwaysAllowMove": False,
}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def write_config(
    tmp_path: Path, orthanc: Orthanc, *, ae_title: str | None = None, broker_url: str | None = None
) -> Path:
    config = {
        "data_dir": str(tmp_path / "data"),
        "broker_url": broker_url,
        "node": {"ae_title": "PACSAI"},
        "destinations": {
            "pacs": {
                "host": LOCALHOST,
                "port": orthanc.dicom_port,
                "ae_title": ae_title or orthanc.aet,
                "timeout_seconds": 5,
            }
        },
        "delivery": {"retry_delays": [10], "config_error_retry_delays": [600, 3600]},
        "monitor": {"enabled": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))
    return path


def load(path: Path) -> Settings:
    return validate_settings(json.loads(path.read_text()))


@pytest.fixture
def ledger_for() -> Iterator[Callable[[Settings], Ledger]]:
    opened: list[Ledger] = []

    def make(settings: Settings) -> Ledger:
        ledger = Ledger(settings.resolved_ledger_url)
        ledger.create_schema()
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()


def delivering_job(ledger: Ledger, files: list[Path]) -> JobRecord:
    """A job whose results (``files``) wait in the outbox for ``pacs``."""
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
        destinations=["pacs"],
        priority=5,
    )
    for state in (JobState.QUEUED, JobState.RUNNING):
        ledger.transition(job.job_id, state)
    headers = [dcmread(f, stop_before_pixels=True) for f in files]
    Outbox(ledger).add(
        result_items(
            job_id=job.job_id,
            series_uid=job.series_instance_uid,
            route="r",
            destinations=["pacs"],
            files=[
                (str(h.SOPInstanceUID), str(h.SOPClassUID), f)
                for h, f in zip(headers, files, strict=True)
            ],
        )
    )
    return ledger.transition(job.job_id, JobState.DELIVERING)


def test_a_pacs_that_does_not_know_our_ae_title_is_a_configuration_error_said_at_once(
    tmp_path: Path,
    make_orthanc: Callable[..., Orthanc],
    dicom_factory: DicomFactory,
    ledger_for: Callable[[Settings], Ledger],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    orthanc = make_orthanc(extra_config=KNOWN_CALLERS_ONLY)
    config = write_config(tmp_path, orthanc)
    settings = load(config)
    ledger = ledger_for(settings)
    job = delivering_job(ledger, dicom_factory.series(2))
    clock = Clock()
    service = DeliveryService(settings, ledger, clock=clock)

    service.run_once()
    waiting = ledger.get_job(job.job_id)
    items = Outbox(ledger).items(job_id=job.job_id)
    [view] = Readings(settings, ledger, inspector=None).destinations()

    # At once: the job says what is wrong, which key or which side to fix, and the command.
    assert waiting.state is JobState.DELIVERING
    assert waiting.reason is not None
    assert "destination 'pacs' rejects our AE title PACSAI permanently" in waiting.reason
    assert "(calling AE title not recognised)" in waiting.reason
    assert f"then `pacs-ai resend {job.job_id}`" in waiting.reason
    assert view.misconfigured and view.problem is not None and "PACSAI" in view.problem
    # Its own schedule: the items keep their retries; the next attempt is 600 s away.
    assert all(i.state is DeliveryState.PENDING and i.attempts == 0 for i in items)
    assert all(i.next_attempt_at == pytest.approx(clock.now + 600) for i in items)

    clock.now += 599
    assert service.run_once() == 0
    clock.now += 1
    assert service.run_once() == 2
    # Far beyond delivery.retry_delays (one retry): still waiting, never dead-lettered,
    # every hour (the last delay repeats).
    for _hour in range(4):
        clock.now += 3600
        assert service.run_once() == 2
    [problem] = Outbox(ledger).destination_problems().values()
    assert problem.attempts == 6
    assert problem.next_attempt_at == pytest.approx(clock.now + 3600)
    assert ledger.get_job(job.job_id).state is JobState.DELIVERING
    assert {i.state for i in Outbox(ledger).items(job_id=job.job_id)} == {DeliveryState.PENDING}

    # The PACS learns our AE title; the printed command, with the short id, sends at once.
    orthanc.add_modality("pacsai", "PACSAI", LOCALHOST, 11112)
    monkeypatch.setenv("PACS_AI_CONFIG", str(config))
    resent = CliRunner().invoke(main, ["resend", job.job_id[:8]])
    service.run_once()

    assert resent.exit_code == 0, resent.output
    assert "2 result(s) due now" in resent.output
    done = ledger.get_job(job.job_id)
    assert done.state is JobState.DONE and done.reason is None
    assert len(orthanc.instances()) == 2
    assert Outbox(ledger).destination_problems() == {}
    audit = ledger.audit_entries()
    assert [(entry.action, entry.outcome) for entry in audit] == [("resend", "ok")]
    notes = [e.reason for e in ledger.events(job.job_id) if e.kind == "note"]
    assert len(notes) == 1, "the reason is noted once, not at every attempt"


def test_a_wrong_called_ae_title_names_the_key_to_fix_and_status_shows_it_misconfigured(
    tmp_path: Path,
    make_orthanc: Callable[..., Orthanc],
    dicom_factory: DicomFactory,
    ledger_for: Callable[[Settings], Ledger],
    redis_server: RedisServer,
) -> None:
    orthanc = make_orthanc(extra_config={"DicomCheckCalledAet": True})
    config = write_config(tmp_path, orthanc, ae_title="NOTORTHANC", broker_url=redis_server.url)
    settings = load(config)
    ledger = ledger_for(settings)
    job = delivering_job(ledger, dicom_factory.series(1))
    service = DeliveryService(settings, ledger)

    service.run_once()
    status = CliRunner().invoke(main, ["status", "--config", str(config), "--json"])
    text = CliRunner().invoke(main, ["status", "--config", str(config)])

    reason = ledger.get_job(job.job_id).reason or ""
    assert "rejects the called AE title NOTORTHANC permanently" in reason
    assert "fix destinations.pacs.ae_title" in reason
    [shown] = json.loads(status.output)["destinations"]
    assert shown["misconfigured"] is True
    assert shown["problem"].startswith("destination 'pacs' rejects the called AE title")
    assert "MISCONFIGURED since" in text.output
    assert f"{job.job_id[:8]} DELIVERING" in text.output


def test_a_job_waiting_for_a_retry_says_so_and_resend_tries_at_once(
    tmp_path: Path,
    orthanc: Orthanc,
    dicom_factory: DicomFactory,
    ledger_for: Callable[[Settings], Ledger],
) -> None:
    config = write_config(tmp_path, orthanc)
    settings = load(config)
    ledger = ledger_for(settings)
    job = delivering_job(ledger, dicom_factory.series(1))
    service = DeliveryService(settings, ledger)  # real time: resend makes it due now
    orthanc.stop(graceful=False)

    service.run_once()
    reason = ledger.get_job(job.job_id).reason or ""
    orthanc.start(fixed_ports=True)
    resent = CliRunner().invoke(main, ["resend", "--config", str(config), job.job_id[:8]])
    attempted = service.run_once()

    assert "destination 'pacs' did not take the results yet" in reason
    assert "retry 1 of 1" in reason and f"`pacs-ai resend {job.job_id}` tries now" in reason
    assert resent.exit_code == 0, resent.output
    assert attempted == 1, "due at once, not 10 s later"
    assert ledger.get_job(job.job_id).state is JobState.DONE
