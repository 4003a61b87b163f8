"""Never a wrong result as normal: a result outside its model's ``expect:`` is held for review
(NEEDS_REVIEW), listed on the dashboard, released or discarded there (audited), or, where
its route says ``on_implausible: deliver_flagged``, delivered with ``CHECK`` in its Series
Description and the SR saying what was out of range.

The model is made here: a TorchScript network whose two logits change sign at a fixed
intensity, so that its label map (and the label's volume) is known; each test sets the
expected volume range that makes the result plausible or not. Real worker, real ledger,
real monitor over HTTP, real Orthanc as the PACS.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pytest
import torch
import yaml
from click.testing import CliRunner
from pydicom import dcmread

from core.jobs import JobRecord, JobState
from core.ledger import AuditEntry, DeliveryState, Outbox
from core.messages import RunJobMessage
from core.settings import Settings, validate_settings
from inference import codes
from monitor.passwords import hash_password
from monitor.web.server import MonitorServer
from node_services.delivery import DeliveryService
from pacs_ai.cli import main
from tests.conftest import DicomFactory
from tests.support.dicom_checks import walk
from tests.support.models import manifest, script, write_package
from tests.support.monitor import call, sign_in_form
from tests.support.peers import Orthanc, dciodvfy, free_port
from tests.support.spooling import spool
from workers.execute import JobExecutor
from workers.runtime import WorkerRuntime

pytestmark = pytest.mark.peers

MODEL = "tiny-threshold"
ROUTE = "tiny-ct"
ADMIN_TOKEN = "admin-token-0123456789abcdef"  # noqa: S105 -- a test monitor on 127.0.0.1
READER_TOKEN = "reader-token-0123456789abcdef"  # noqa: S105
#: The factory's CT slice n holds -1000 + n ... -745 + n HU; about half is above this.
LEVEL = -872.5
#: The label's volume is about 0.26 mL on 8 slices of 16 x 16 voxels of 0.25 mm3: this
#: range holds it, the other does not.
PLAUSIBLE = [0.1, 1.0]
IMPLAUSIBLE = [1.0, 100.0]


class Threshold(torch.nn.Module):
    """Two logits whose sign changes at ``LEVEL``: label 1 where the image is above it."""

    def __init__(self) -> None:
        super().__init__()
        self.level = LEVEL

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.level - image, image - self.level], dim=1)


@dataclass
class Rig:
    runtime: WorkerRuntime
    server: MonitorServer

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def held_job(self, files: list[Path]) -> JobRecord:
        """Spool ``files``, open the route's job and run it in the worker."""
        ledger = self.runtime.ledger
        series = ledger.get_series(spool(self.settings.spool_dir, ledger, files))
        job = ledger.open_job(
            series, route=ROUTE, model_id=MODEL, destinations=["pacs"], priority=5
        )
        job = ledger.transition(job.job_id, JobState.QUEUED)
        message = RunJobMessage(
            job_id=job.job_id, model_id=MODEL, series_uid=series.series_instance_uid
        )
        JobExecutor(self.runtime).run(message, worker="test")
        return ledger.get_job(job.job_id)

    def deliver(self) -> None:
        DeliveryService(self.settings, self.runtime.ledger).run_once()

    def audit(self, action: str) -> list[AuditEntry]:
        return list(reversed(self.runtime.ledger.audit_entries(action=action)))


def settings_for(
    tmp_path: Path, *, volume_ml: list[float], on_implausible: str, pacs_port: int
) -> Settings:
    folder = tmp_path / "models" / MODEL
    folder.mkdir(parents=True)
    script(Threshold(), folder / "model.ts")
    write_package(
        folder,
        manifest(
            id=MODEL,
            name="Tiny threshold (test)",
            accepts={"modalities": ["CT"]},
            network={"kind": "torchscript", "path": "model.ts"},
            backends=[{"name": "torch"}],
            expect={"labels": {"Thing": {"volume_ml": volume_ml, "components": 1}}},
        ),
    )
    return validate_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "model_dirs": [str(tmp_path / "models")],
            "destinations": {
                "pacs": {
                    "host": "127.0.0.1",
                    "port": pacs_port,
                    "ae_title": "ORTHANC",
                    "timeout_seconds": 5,
                }
            },
            "routes": [
                {
                    "name": ROUTE,
                    "match": {"Modality": "CT"},
                    "models": [MODEL],
                    "send_results_to": ["pacs"],
                    "on_implausible": on_implausible,
                }
            ],
            "worker": {"device": "cpu"},
            "monitor": {
                "host": "127.0.0.1",
                "port": free_port(),
                "users": [
                    {
                        "name": "alice",
                        "role": "admin",
                        "password_hash": hash_password("alice-password"),
                    }
                ],
                "tokens": [
                    {"name": "ops", "role": "admin", "token": ADMIN_TOKEN},
                    {"name": "viewer", "role": "read-only", "token": READER_TOKEN},
                ],
            },
        }
    )


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    started: list[Rig] = []

    def make(*, volume_ml: list[float], on_implausible: str = "hold", pacs_port: int = 0) -> Rig:
        settings = settings_for(
            tmp_path / f"rig{len(started)}",
            volume_ml=volume_ml,
            on_implausible=on_implausible,
            pacs_port=pacs_port or free_port(),
        )
        runtime = WorkerRuntime(settings)
        server = MonitorServer(settings, runtime.ledger, inspector=None)
        server.start()
        rig = Rig(runtime, server)
        started.append(rig)
        return rig

    yield make
    for rig in started:
        rig.server.stop()
        rig.runtime.close()


def test_a_plausible_result_is_handed_to_delivery_with_what_was_measured(
    make_rig: Callable[..., Rig], dicom_factory: DicomFactory
) -> None:
    rig = make_rig(volume_ml=PLAUSIBLE)

    job = rig.held_job(dicom_factory.series(8))

    assert job.state is JobState.DELIVERING
    plausibility = job.result["plausibility"]
    assert plausibility["ok"] is True and plausibility["problems"] == []
    measured = plausibility["measured"]["Thing"]
    assert measured["volume_ml"] == job.result["measurements_ml"]["Thing"]
    assert 0.1 < measured["volume_ml"] < 1.0 and measured["components"] == 1


def test_an_implausible_result_is_held_listed_and_delivered_as_it_is_when_released(
    make_rig: Callable[..., Rig], orthanc: Orthanc, dicom_factory: DicomFactory
) -> None:
    rig = make_rig(volume_ml=IMPLAUSIBLE, pacs_port=orthanc.dicom_port)
    ledger = rig.runtime.ledger

    held = rig.held_job(dicom_factory.series(8))
    rig.deliver()

    assert held.state is JobState.NEEDS_REVIEW
    assert held.reason is not None
    assert held.reason.startswith("held for review: Thing: volume 0.2")
    assert held.reason.endswith("mL, expected 1-100 mL")
    # Held: nothing owed to the PACS, nothing in it, the results kept on disk.
    assert Outbox(ledger).items(job_id=held.job_id) == []
    assert orthanc.instances() == []
    assert held.result["files"] and all(Path(f).is_file() for f in held.result["files"])
    # Visible: in the API, and on the dashboard with its Release and Discard buttons.
    listed = call(f"{rig.url}/api/jobs?state=NEEDS_REVIEW", token=READER_TOKEN).json()["jobs"]
    assert [(j["job_id"], j["state"]) for j in listed] == [(held.job_id, "NEEDS_REVIEW")]
    page = call(f"{rig.url}/", token=ADMIN_TOKEN).text
    assert f'id="held-{held.job_id}"' in page
    assert f'action="/jobs/{held.job_id}/release"' in page
    assert f'action="/jobs/{held.job_id}/discard"' in page
    assert "Thing: volume 0.2" in page
    read_only = call(f"{rig.url}/", token=READER_TOKEN).text
    assert f'id="held-{held.job_id}"' in read_only
    assert f'action="/jobs/{held.job_id}/release"' not in read_only

    denied = call(
        f"{rig.url}/api/jobs/{held.job_id}/release", method="POST", token=READER_TOKEN, data={}
    )
    released = call(
        f"{rig.url}/api/jobs/{held.job_id}/release", method="POST", token=ADMIN_TOKEN, data={}
    )
    again = call(
        f"{rig.url}/api/jobs/{held.job_id}/release", method="POST", token=ADMIN_TOKEN, data={}
    )
    delivering = ledger.get_job(held.job_id)
    rig.deliver()
    done = ledger.get_job(held.job_id)

    assert denied.status == 403
    assert released.status == 200, released.text
    assert released.json()["message"] == "released: 2 result(s) queued for delivery"
    assert again.status == 409 and "NEEDS_REVIEW" in again.json()["error"]
    assert delivering.state is JobState.DELIVERING
    assert done.state is JobState.DONE and done.reason is None
    stored = {
        orthanc.instance_tags(i)["SOPInstanceUID"]: orthanc.instance_tags(i)["SeriesDescription"]
        for i in orthanc.instances()
    }
    assert set(stored) == {held.result["seg_sop_instance_uid"], held.result["sr_sop_instance_uid"]}
    assert not any(description.startswith("CHECK") for description in stored.values())
    outcomes = [(row.actor, row.job_id, row.outcome) for row in rig.audit("release")]
    assert outcomes == [
        ("viewer", held.job_id, "denied"),
        ("ops", held.job_id, "ok"),
        ("ops", held.job_id, "refused"),
    ]


def test_a_held_result_discarded_on_the_dashboard_ends_discarded_and_is_never_delivered(
    make_rig: Callable[..., Rig], dicom_factory: DicomFactory
) -> None:
    rig = make_rig(volume_ml=IMPLAUSIBLE)
    ledger = rig.runtime.ledger
    held = rig.held_job(dicom_factory.series(8))
    cookie, csrf = sign_in_form(rig.url, "alice", "alice-password")
    session = {"Cookie": f"pacs_ai_session={cookie}"}
    job_page = call(f"{rig.url}/jobs/{held.job_id}", headers=session).text

    answer = call(
        f"{rig.url}/jobs/{held.job_id}/discard",
        method="POST",
        headers=session,
        data={"csrf": csrf, "reason": "brain of a child, model is for adults"},
    )
    release_after = call(
        f"{rig.url}/api/jobs/{held.job_id}/release", method="POST", token=ADMIN_TOKEN, data={}
    )
    rig.deliver()

    assert "Release held results" in job_page and "Discard" in job_page
    assert answer.status == 303, answer.text
    job = ledger.get_job(held.job_id)
    assert job.state is JobState.FAILED
    assert job.reason == "discarded by alice: brain of a child, model is for adults"
    shown = call(f"{rig.url}/api/jobs/{held.job_id}", token=READER_TOKEN).json()
    assert shown["state"] == "DISCARDED"
    assert release_after.status == 409
    assert Outbox(ledger).items(job_id=held.job_id) == []
    assert [(row.actor, row.outcome) for row in rig.audit("discard")] == [("alice", "ok")]


def test_a_route_that_delivers_flagged_sends_check_results_saying_what_was_out_of_range(
    make_rig: Callable[..., Rig], orthanc: Orthanc, dicom_factory: DicomFactory
) -> None:
    rig = make_rig(
        volume_ml=IMPLAUSIBLE, on_implausible="deliver_flagged", pacs_port=orthanc.dicom_port
    )
    ledger = rig.runtime.ledger

    handed_over = rig.held_job(dicom_factory.series(8))
    rig.deliver()

    assert handed_over.state is JobState.DELIVERING
    done = ledger.get_job(handed_over.job_id)
    assert done.state is JobState.DONE
    assert done.reason is not None
    assert done.reason.startswith("delivered flagged CHECK: Thing: volume 0.2")
    stored = [orthanc.instance_tags(i) for i in orthanc.instances()]
    assert {t["Modality"] for t in stored} == {"SEG", "SR"}
    assert all(t["SeriesDescription"].startswith("CHECK AI") for t in stored), stored
    [sr_path] = [Path(f) for f in done.result["files"] if Path(f).name.startswith("sr")]
    report = hd.sr.srread(sr_path)
    assert report.SeriesDescription.startswith("CHECK ")
    assert isinstance(report.content, hd.sr.MeasurementReport)
    items = [item for item in walk(dcmread(sr_path)) if "ConceptNameCodeSequence" in item]
    quality = [
        item
        for item in items
        if item.ConceptNameCodeSequence[0].CodeValue == codes.QUALITY_CONTROL.value
    ]
    assert [q.ConceptCodeSequence[0].CodeMeaning for q in quality] == ["Value out of range"]
    comments = [
        str(item.TextValue)
        for item in items
        if item.ConceptNameCodeSequence[0].CodeValue == codes.COMMENT.value
    ]
    assert len(comments) == 1 and comments[0] in done.reason
    errors, _warnings = dciodvfy(sr_path)
    assert errors == []


def test_pacs_ai_release_on_the_command_line_delivers_a_held_result_and_is_audited(
    make_rig: Callable[..., Rig], dicom_factory: DicomFactory, tmp_path: Path
) -> None:
    rig = make_rig(volume_ml=IMPLAUSIBLE)
    held = rig.held_job(dicom_factory.series(8))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(rig.settings.data_dir)}))

    discard_without_reason = CliRunner().invoke(
        main, ["discard", "--config", str(config), held.job_id]
    )
    released = CliRunner().invoke(main, ["release", "--config", str(config), held.job_id])

    assert discard_without_reason.exit_code == 2
    assert "--reason" in discard_without_reason.output
    assert released.exit_code == 0, released.output
    assert "released" in released.output
    # The command's configuration names no destination: the job's own list counts.
    assert rig.runtime.ledger.get_job(held.job_id).state is JobState.DELIVERING
    items = Outbox(rig.runtime.ledger).items(job_id=held.job_id)
    assert {i.state for i in items} == {DeliveryState.PENDING} and len(items) == 2
    assert [(row.actor, row.outcome) for row in rig.audit("release")] == [
        (f"cli:{getpass.getuser()}", "ok")
    ]
