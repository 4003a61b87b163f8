"""No patient data in any log: a study with a distinctive patient through the whole path.

DCMTK sends a small chest CT whose Patient's Name, Patient ID and Accession Number are
strings found nowhere else to ``pacs-ai serve``; a ``pacs-ai worker`` runs ct-lungs and
writes every kind of result (SEG, SR, Secondary Capture, PDF: each copies the patient);
the node delivers them to Orthanc; a signed-in user opens the dashboard and the job's
page. Logging stays at its default (INFO). Afterwards none of the three strings is in
the node's or the worker's log, although they reached the PACS and the dashboard.

The Patient's Name has a single component on purpose: highdicom warns about such a name,
quoting it, on every object it writes (the leak the issue found in a worker log).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from core.jobs import JobState
from monitor.passwords import hash_password
from pacs_ai.phantom import write_chest_ct_series
from tests.support.monitor import call, sign_in_form
from tests.support.pacs_ai import PacsAiDeployment
from tests.support.peers import Orthanc, RedisServer, storescu

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(600)]

PATIENT_NAME = "Zyxwvqwerty"
PATIENT_ID = "PID-8XQ7Z"
ACCESSION = "ACC-5KJ3M"
ADMIN_PASSWORD = "admin-password-logs"  # noqa: S105 -- a test monitor on 127.0.0.1


@pytest.fixture
def deployment(
    tmp_path: Path, redis_server: RedisServer, orthanc: Orthanc
) -> Iterator[PacsAiDeployment]:
    # No logging settings: the default level (INFO) and format, as a site runs it.
    config: dict[str, Any] = {
        "broker_url": redis_server.url,
        "node": {"ae_title": "PACSAI"},
        "completion": {"series_quiet_seconds": 2, "check_interval_seconds": 0.2},
        "destinations": {
            "pacs": {
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "ae_title": "ORTHANC",
                "outputs": {"sc": True, "pdf": True, "sc_max_images": 2},
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
        "delivery": {"poll_interval_seconds": 0.2},
        "monitor": {
            "users": [
                {"name": "admin", "role": "admin", "password_hash": hash_password(ADMIN_PASSWORD)}
            ]
        },
    }
    running = PacsAiDeployment(tmp_path / "pacs-ai", config)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def distinctive_patient_series(folder: Path) -> list[Path]:
    """The phantom chest CT of a patient named nowhere else, without a birth date."""
    series = write_chest_ct_series(folder, slices=24, size=96, seed=11)
    for path in series.paths:
        ds = dcmread(path)
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.AccessionNumber = ACCESSION
        del ds.PatientBirthDate  # anonymisers remove it (Type 2); results must still work
        ds.save_as(path, enforce_file_format=True)
    return list(series.paths)


def test_a_distinctive_patient_goes_through_the_whole_path_and_into_no_log(
    deployment: PacsAiDeployment, orthanc: Orthanc, tmp_path: Path
) -> None:
    files = distinctive_patient_series(tmp_path / "ct")
    series_uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)

    sent = storescu(files, "127.0.0.1", deployment.port, "PACSAI", "MODALITY")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    job = deployment.wait_for_job(series_uid, JobState.DONE, timeout=300)

    # The results, with the patient, are in the PACS: SEG, SR, 2 Secondary Captures, PDF.
    results = [orthanc.instance_tags(i) for i in orthanc.instances()]
    results = [r for r in results if r.get("Modality") != "CT"]
    assert sorted(r["Modality"] for r in results) == ["DOC", "OT", "OT", "SEG", "SR"]
    assert {(r["PatientName"], r["PatientID"], r["AccessionNumber"]) for r in results} == {
        (PATIENT_NAME, PATIENT_ID, ACCESSION)
    }
    # ... and on the dashboard, for a signed-in user.
    cookie, _ = sign_in_form(deployment.monitor_url, "admin", ADMIN_PASSWORD)
    signed_in = {"Cookie": f"pacs_ai_session={cookie}"}
    assert call(f"{deployment.monitor_url}/", headers=signed_in).status == 200
    page = call(f"{deployment.monitor_url}/jobs/{job.job_id}", headers=signed_in)
    assert page.status == 200
    assert ACCESSION in page.text

    deployment.stop()
    logs = {
        "node": deployment.node.log_path.read_text(errors="replace"),
        "worker": deployment.worker.log_path.read_text(errors="replace"),
    }
    for name, text in logs.items():
        assert " INFO " in text, f"the {name} log should be at INFO"
        for secret in (PATIENT_NAME, PATIENT_ID, ACCESSION, "zyxwv", "qwerty"):
            assert secret.lower() not in text.lower(), f"{secret!r} is in the {name} log"
    # highdicom did warn about the name; the worker logged that it did, not the name.
    assert "UserWarning from highdicom" in logs["worker"]
