"""Before go-live and after, for real: studies already in the PACS (Orthanc) are pulled by
`pacs-ai run --from` and `pacs-ai backfill` into a running `pacs-ai serve` + `pacs-ai
worker`, and shadow routes keep their results until `pacs-ai resend` delivers one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from core.jobs import JobState
from core.ledger import RetrievalState, StudyPull
from pacs_ai.phantom import PhantomSeries, write_chest_ct_series
from tests.support.pacs_ai import PacsAiDeployment
from tests.support.peers import LOCALHOST, Orthanc, RedisServer, storescu, wait_for

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(900)]

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
ADMIN_TOKEN = "admin-token-for-the-pull-tests"  # noqa: S105 -- a test monitor on 127.0.0.1
READER_TOKEN = "reader-token-for-the-pull-tests"  # noqa: S105
PHANTOM_DATE = "20240101"


@pytest.fixture
def pacs(dicomweb_orthanc: Orthanc) -> Orthanc:
    return dicomweb_orthanc


@pytest.fixture
def deployment(
    tmp_path: Path, redis_server: RedisServer, pacs: Orthanc
) -> Iterator[PacsAiDeployment]:
    config: dict[str, Any] = {
        "broker_url": redis_server.url,
        "node": {"ae_title": "PACSAI"},
        "completion": {"series_quiet_seconds": 2, "check_interval_seconds": 0.2},
        "destinations": {
            # The same Orthanc as a DICOM PACS (C-FIND, C-GET) and as a DICOMweb server.
            "pacs": {
                "host": LOCALHOST,
                "port": pacs.dicom_port,
                "ae_title": pacs.aet,
                "query_retrieve": {},
            },
            "web": {"type": "dicomweb", "url": f"{pacs.url}/dicom-web", "query_retrieve": {}},
        },
        "routes": [
            {
                "name": "shadow-chest",
                "match": {"Modality": "CT"},
                "calling_ae": "SCANNER",
                "models": ["ct-lungs"],
                "send_results_to": ["pacs"],
                "shadow": True,
            }
        ],
        "delivery": {"poll_interval_seconds": 0.2},
        "monitor": {
            "tokens": [
                {"name": "ops", "role": "admin", "token": ADMIN_TOKEN},
                {"name": "viewer", "role": "read-only", "token": READER_TOKEN},
            ]
        },
        "worker": {"device": "cpu", "prefetch_next_series": "off"},
    }
    running = PacsAiDeployment(tmp_path / "pacs-ai", config)
    # The PACS answers queries and retrievals only for AE titles it knows.
    pacs.add_modality("pacsai", "PACSAI", LOCALHOST, running.port)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def pacs_ai(
    deployment: PacsAiDeployment, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacs_ai", *args, "--config", str(deployment.config_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def phantom(tmp_path: Path, seed: int, *, accession: str = "") -> PhantomSeries:
    study = write_chest_ct_series(tmp_path / f"ct-{seed}", slices=24, size=64, seed=seed)
    if accession:
        for path in study.paths:
            ds = dcmread(path)
            ds.AccessionNumber = accession
            ds.save_as(path)
    return study


def store(pacs: Orthanc, study: PhantomSeries) -> None:
    for path in study.paths:
        pacs.upload(path.read_bytes())


def results_in(pacs: Orthanc, study_uid: str) -> dict[str, list[Dataset]]:
    """The SEG and SR objects the PACS holds in ``study_uid`` (results join their study)."""
    found: dict[str, list[Dataset]] = {SEG_STORAGE: [], COMPREHENSIVE_3D_SR: []}
    for instance_id in pacs.instances():
        dataset = dcmread(BytesIO(pacs.download(instance_id)), stop_before_pixels=True)
        if dataset.SOPClassUID in found and dataset.StudyInstanceUID == study_uid:
            found[dataset.SOPClassUID].append(dataset)
    return found


@pytest.mark.parametrize("source", ["pacs", "web"])
def test_the_lidc_ct_in_the_pacs_comes_back_as_one_seg_and_one_sr_after_pacs_ai_run(
    deployment: PacsAiDeployment, pacs: Orthanc, lidc_ct_dir: Path, source: str
) -> None:
    sent = storescu(lidc_ct_dir, LOCALHOST, pacs.dicom_port, pacs.aet, "MODALITY")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    header = dcmread(next(lidc_ct_dir.glob("*.dcm")), stop_before_pixels=True)
    study_uid, series_uid = str(header.StudyInstanceUID), str(header.SeriesInstanceUID)

    run = pacs_ai(
        deployment,
        "run",
        "--from",
        source,
        "--study",
        study_uid,
        "--models",
        "ct-lungs",
        "--send-results-to",
        source,
    )

    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{deployment.logs()}"
    assert "275 instances" in run.stdout
    job = deployment.ledger.jobs(series_uid=series_uid)[0]
    assert (job.route, job.model_id, job.state, job.shadow) == (
        "run",
        "ct-lungs",
        JobState.DONE,
        False,
    )
    assert f"job {job.job_id[:8]} ct-lungs" in run.stdout
    series = deployment.ledger.get_series(series_uid)
    assert (series.origin, series.instance_count) == ("retrieved", 275)
    wait_for(
        lambda: all(len(v) == 1 for v in results_in(pacs, study_uid).values()),
        60,
        "one SEG and one SR in the LIDC study in the PACS",
    )
    results = results_in(pacs, study_uid)
    seg = results[SEG_STORAGE][0]
    assert seg.StudyInstanceUID == study_uid
    assert {s.SegmentLabel for s in seg.SegmentSequence} == {"Right lung", "Left lung"}


def test_a_backfill_stopped_halfway_and_resumed_processes_each_study_once(
    deployment: PacsAiDeployment, pacs: Orthanc, tmp_path: Path
) -> None:
    studies = [phantom(tmp_path, seed) for seed in range(10, 14)]
    for study in studies:
        store(pacs, study)
    command = [
        sys.executable, "-m", "pacs_ai", "backfill", "--config", str(deployment.config_path),
        "--from", "pacs", "--study-date", PHANTOM_DATE, "--series-filter", "Modality=CT",
        "--models", "ct-lungs", "--keep", "--per-minute", "30", "--window", "any",
    ]  # fmt: skip
    ledger = deployment.ledger
    with (tmp_path / "backfill-1.log").open("w") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)

    def pulled() -> int:
        found = ledger.retrievals(kinds=["backfill"])
        if not found:
            return 0
        return ledger.retrieval_progress(found[0].retrieval_id).retrieved

    wait_for(lambda: pulled() >= 2, 120, "two studies pulled by the backfill")
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 3, (tmp_path / "backfill-1.log").read_text()
    [backfill] = ledger.retrievals(kinds=["backfill"])
    assert backfill.state == RetrievalState.STOPPED
    assert ledger.retrieval_progress(backfill.retrieval_id).pending >= 1, "stopped halfway"

    again = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)

    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}\n{deployment.logs()}"
    assert f"resuming backfill {backfill.retrieval_id[:8]}" in again.stdout
    progress = ledger.retrieval_progress(backfill.retrieval_id)
    assert (progress.total, progress.by_state, progress.processed) == (
        4,
        {StudyPull.ROUTED: 4},
        4,
    )
    for study in studies:
        [job] = ledger.jobs(series_uid=study.series_instance_uid)
        runs = [
            e for e in ledger.events(job.job_id) if e.is_transition and e.state == JobState.RUNNING
        ]
        assert (job.route, job.state, job.shadow, job.priority) == (
            "backfill",
            JobState.DONE,
            True,
            9,
        )
        assert len(runs) == 1, f"job {job.job_id} ran {len(runs)} times"
    assert all(results_in(pacs, s.study_instance_uid)[SEG_STORAGE] == [] for s in studies), (
        "--keep: nothing delivered"
    )


def test_a_shadow_route_delivers_nothing_lists_its_results_and_resend_delivers_one(
    deployment: PacsAiDeployment, pacs: Orthanc, tmp_path: Path
) -> None:
    study = phantom(tmp_path, 20)
    sent = storescu(list(study.paths), LOCALHOST, deployment.port, "PACSAI", "SCANNER")
    assert sent.returncode == 0, sent.stdout + sent.stderr

    job = deployment.wait_for_job(study.series_instance_uid, JobState.DONE, timeout=300)

    assert (job.route, job.shadow, job.destinations) == ("shadow-chest", True, ("pacs",))
    assert job.reason is not None and job.reason.startswith("shadow: results kept")
    assert pacs.instances() == [], "a shadow route delivers nothing"
    kept = [Path(path) for path in job.result["files"]]
    assert kept and all(path.is_file() for path in kept)
    status = pacs_ai(deployment, "status", "--json", timeout=60)
    listed = {j["job_id"]: j for j in json.loads(status.stdout)["jobs"]}
    assert listed[job.job_id]["shadow"] is True
    page = _page(deployment, f"/jobs/{job.job_id}", token=ADMIN_TOKEN)
    assert 'id="shadow"' in page and "Send the kept results" in page
    assert 'class="tag shadow"' in _page(deployment, "/", token=READER_TOKEN)

    resent = pacs_ai(deployment, "resend", job.job_id[:8], timeout=60)

    assert resent.returncode == 0, resent.stdout + resent.stderr
    assert "kept result(s) of the shadow job queued for delivery" in resent.stdout
    delivered = deployment.wait_for_job(
        study.series_instance_uid, JobState.DONE, after=job.updated_at, timeout=120
    )
    assert delivered.shadow, "still a shadow job: the next run keeps its results again"
    results = results_in(pacs, study.study_instance_uid)
    assert [len(results[SEG_STORAGE]), len(results[COMPREHENSIVE_3D_SR])] == [1, 1]


def test_an_admin_starts_a_run_for_a_study_found_by_accession_and_it_is_audited(
    deployment: PacsAiDeployment, pacs: Orthanc, tmp_path: Path
) -> None:
    study = phantom(tmp_path, 30, accession="ACC4242")
    store(pacs, study)
    form = {"source": "pacs", "accession": "ACC4242", "models": "ct-lungs", "destination": "pacs"}

    refused = _post(deployment, "/api/pulls", form, token=READER_TOKEN)
    unknown = _form(deployment, "/pulls", {**form, "accession": "NOSUCH1"}, token=ADMIN_TOKEN)
    started = _post(deployment, "/api/pulls", form, token=ADMIN_TOKEN)

    assert refused[0] == 403
    assert unknown[0] == 409 and "no study with that accession number in pacs" in unknown[1]
    assert started[0] == 202
    job = deployment.wait_for_job(study.series_instance_uid, JobState.DONE, timeout=300)
    assert (job.route, deployment.ledger.get_series(job.series_instance_uid).origin) == (
        "run",
        "retrieved",
    )
    audit = [e for e in deployment.ledger.audit_entries(limit=20) if e.action == "run"]
    assert sorted((e.actor, e.outcome) for e in audit) == [
        ("ops", "ok"),
        ("ops", "refused"),
        ("viewer", "denied"),
    ]
    assert all(
        "ACC4242" not in (e.detail or "") and "NOSUCH1" not in (e.detail or "") for e in audit
    ), "no accession number in the audit log"
    wait_for(
        lambda: _get(deployment, "/api/pulls", token=READER_TOKEN)["pulls"][0]["processed"] == 1,
        30,
        "the run's study processed",
    )
    listed = _get(deployment, "/api/pulls", token=READER_TOKEN)["pulls"]
    assert [(p["kind"], p["studies"], p["pulled"]) for p in listed] == [("dashboard", 1, 1)]
    overview = _page(deployment, "/", token=ADMIN_TOKEN)
    assert 'id="pull-form"' in overview
    assert '1</span>/1 pulled, <span class="processed">1</span> processed' in overview
    logs = deployment.logs()
    assert "ACC4242" not in logs and "PACSAI-DEMO" not in logs, "no patient data in the logs"


def _post(
    deployment: PacsAiDeployment, path: str, body: dict[str, str], *, token: str
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(  # noqa: S310 -- http://127.0.0.1 built here
        deployment.monitor_url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _form(
    deployment: PacsAiDeployment, path: str, fields: dict[str, str], *, token: str
) -> tuple[int, str]:
    """POST the dashboard's form (as a browser would, but signed in with a token)."""
    request = urllib.request.Request(  # noqa: S310 -- http://127.0.0.1 built here
        deployment.monitor_url + path,
        data=urllib.parse.urlencode(fields).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _page(deployment: PacsAiDeployment, path: str, *, token: str) -> str:
    request = urllib.request.Request(  # noqa: S310 -- http://127.0.0.1 built here
        deployment.monitor_url + path, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
        return str(answer.read().decode())


def _get(deployment: PacsAiDeployment, path: str, *, token: str) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 -- http://127.0.0.1 built here
        deployment.monitor_url + path, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
        data: dict[str, Any] = json.loads(answer.read())
        return data
