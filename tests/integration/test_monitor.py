"""The monitor against a real ledger (SQLite) and a real Redis: metrics checked against the
ledger, authentication and roles, CSRF, actions and their audit, readiness."""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread

from core.errors import ConfigError
from core.jobs import InstanceRecord, JobRecord, JobState
from core.ledger import STAGES, DeliveryState, ItemKind, Ledger, NewItem, Outbox, Presence
from core.queue import BrokerInspector, JobQueue, make_celery
from core.settings import Settings, validate_settings
from monitor.passwords import hash_password
from monitor.web.server import MonitorServer
from pacs_ai.cli import main
from tests.conftest import DicomFactory
from tests.support.monitor import call, sign_in_form
from tests.support.peers import RedisServer, free_port
from tests.support.tls import make_pki

pytestmark = pytest.mark.peers

# Test credentials for a monitor that listens on 127.0.0.1 only.
ADMIN_TOKEN = "admin-token-0123456789abcdef"  # noqa: S105
READER_TOKEN = "reader-token-0123456789abcdef"  # noqa: S105
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Rig:
    settings: Settings
    ledger: Ledger
    server: MonitorServer
    inspector: BrokerInspector
    queue: JobQueue

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


def make_settings(tmp_path: Path, redis_url: str, **monitor: Any) -> Settings:
    return validate_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "broker_url": redis_url,
            "destinations": {"pacs": {"host": "127.0.0.1", "port": 4242, "ae_title": "ORTHANC"}},
            "routes": [
                {
                    "name": "chest-ct",
                    "match": {"Modality": "CT"},
                    "models": ["ct-lungs"],
                    "send_results_to": ["pacs"],
                }
            ],
            "worker": {"lost_after_seconds": 60},
            "monitor": {"host": "127.0.0.1", "port": free_port(), **monitor},
        }
    )


AUTH: dict[str, Any] = {
    "users": [
        {"name": "alice", "role": "admin", "password_hash": hash_password("alice-password")},
        {"name": "bob", "role": "read-only", "password_hash": hash_password("bob-password")},
    ],
    "tokens": [
        {"name": "ops", "role": "admin", "token": ADMIN_TOKEN},
        {"name": "prometheus", "role": "read-only", "token": READER_TOKEN},
    ],
}


@pytest.fixture
def make_rig(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Rig]]:
    started: list[Rig] = []

    def make(**monitor: Any) -> Rig:
        settings = make_settings(tmp_path / f"rig{len(started)}", redis_server.url, **monitor)
        ledger = Ledger(settings.resolved_ledger_url)
        ledger.create_schema()
        app = make_celery(settings)
        inspector = BrokerInspector(app, socket_timeout=2.0)
        server = MonitorServer(settings, ledger, inspector=inspector)
        server.start()
        rig = Rig(settings, ledger, server, inspector, JobQueue(app))
        started.append(rig)
        return rig

    yield make
    for rig in started:
        rig.server.stop()
        rig.ledger.close()


def receive_series(
    ledger: Ledger, files: list[Path], *, calling_ae: str = "CT1", at: float = 1000.0
) -> str:
    """Record files as the node does when it stores them; returns the series UID."""
    records = []
    for index, path in enumerate(files):
        ds = dcmread(path, stop_before_pixels=True)
        records.append(
            InstanceRecord(
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                study_instance_uid=str(ds.StudyInstanceUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                path=str(path),
                size=path.stat().st_size,
                received_at=at + index,
                calling_ae=calling_ae,
                called_ae="PACSAI",
                peer="127.0.0.1",
                modality=str(ds.Modality),
            )
        )
    ledger.record_instances(records)
    return records[0].series_instance_uid


def open_job(ledger: Ledger, series_uid: str, *, priority: int = 5) -> JobRecord:
    return ledger.open_job(
        ledger.get_series(series_uid),
        route="chest-ct",
        model_id="ct-lungs",
        destinations=["pacs"],
        priority=priority,
    )


def run_to_delivering(ledger: Ledger, job: JobRecord, result_uid: str) -> None:
    ledger.transition(job.job_id, JobState.QUEUED)
    ledger.transition(job.job_id, JobState.RUNNING, detail={"worker": "w1"}, count_attempt=True)
    Outbox(ledger).add(
        [
            NewItem(
                destination="pacs",
                kind=ItemKind.RESULT,
                series_uid=job.series_instance_uid,
                route=job.route,
                sop_instance_uid=result_uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                path="/nowhere/seg.dcm",
                job_id=job.job_id,
            )
        ]
    )
    ledger.transition(job.job_id, JobState.DELIVERING)


def metrics(
    rig: Rig, token: str = READER_TOKEN
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = call(f"{rig.url}/metrics", token=token)
    assert answer.status == 200, answer.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def test_metrics_scraped_and_parsed_agree_with_the_ledger(
    make_rig: Callable[..., Rig], dicom_factory: DicomFactory
) -> None:
    rig = make_rig(**AUTH)
    ledger, outbox = rig.ledger, Outbox(rig.ledger)
    done_series = receive_series(ledger, dicom_factory.series(3), calling_ae="CT1", at=1000.0)
    failed_series = receive_series(ledger, dicom_factory.series(2), calling_ae="CT2", at=2000.0)
    done = open_job(ledger, done_series)
    run_to_delivering(ledger, done, "2.25.1")
    [item] = outbox.items(job_id=done.job_id)
    outbox.mark_failed(item.item_id, state=DeliveryState.PENDING, status=None, error="away")
    outbox.mark_sent([item.item_id], status=0)
    ledger.transition(done.job_id, JobState.DONE)
    failed = open_job(ledger, failed_series)
    ledger.transition(failed.job_id, JobState.QUEUED)
    ledger.transition(failed.job_id, JobState.FAILED, reason="modality MR is not accepted")
    queued = open_job(
        ledger, receive_series(ledger, dicom_factory.series(1), at=3000.0), priority=2
    )
    rig.queue.enqueue(ledger.transition(queued.job_id, JobState.QUEUED))
    ledger.worker_heartbeat("w1", host="h", pid=1, device="cpu", models=["ct-lungs"])

    samples = metrics(rig)

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("pacs_ai_jobs", state="DONE", model="ct-lungs") == 1
    assert value("pacs_ai_jobs", state="FAILED", model="ct-lungs") == 1
    assert value("pacs_ai_jobs", state="QUEUED", model="ct-lungs") == 1
    assert value("pacs_ai_jobs", state="RUNNING", model="ct-lungs") == 0
    sizes = {
        ae: sum(
            i.size
            for s in (done_series, failed_series)
            for i in ledger.series_instances(s)
            if ledger.get_series(s).calling_ae == ae
        )
        for ae in ("CT1", "CT2")
    }
    assert (
        value("pacs_ai_instances_received_total", calling_ae="CT1", sop_class="CT Image Storage")
        == 3 + 1
    )  # the queued job's series came from CT1 too
    assert (
        value("pacs_ai_instances_received_total", calling_ae="CT2", sop_class="CT Image Storage")
        == 2
    )
    assert (
        value("pacs_ai_received_bytes_total", calling_ae="CT2", sop_class="CT Image Storage")
        == sizes["CT2"]
    )
    assert value("pacs_ai_delivery_attempts_total", destination="pacs") == 2
    assert value("pacs_ai_delivery_failures_total", destination="pacs") == 1
    # The turnaround of the DONE job: last image -> result accepted, as the ledger says.
    [sent] = outbox.items(job_id=done.job_id)
    expected = sent.sent_at - ledger.get_series(done_series).last_received_at  # type: ignore[operator]
    assert value("pacs_ai_turnaround_seconds_count", model="ct-lungs", route="chest-ct") == 1
    assert value("pacs_ai_turnaround_seconds_sum", model="ct-lungs", route="chest-ct") == (
        pytest.approx(expected)
    )
    for stage in STAGES:
        assert value("pacs_ai_stage_duration_seconds_count", stage=stage, model="ct-lungs") == 1
    assert value("pacs_ai_stage_duration_seconds_sum", stage="receive", model="ct-lungs") == 2.0
    queue = "pacs_ai.model.ct-lungs"
    assert value("pacs_ai_queue_depth", queue=queue, model="ct-lungs", priority="2") == 1
    assert value("pacs_ai_broker_up") == 1
    assert value("pacs_ai_worker_up", worker="w1", host="h") == 1
    assert all(v == 0 for (n, _l), v in samples.items() if n == "pacs_ai_scrape_errors")

    # A second scrape counts the same runs once, and new ones on top.
    again = metrics(rig)
    key = ("pacs_ai_turnaround_seconds_count", (("model", "ct-lungs"), ("route", "chest-ct")))
    assert again[key] == 1


def test_everything_but_health_needs_a_token_or_a_session_when_authentication_is_configured(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(**AUTH)

    for path in ("/metrics", "/api/jobs", "/api/queues"):
        answer = call(rig.url + path)
        assert answer.status == 401, path
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = "not-a-token-at-all-0000"
        assert call(rig.url + path, token=wrong).status == 401
        assert call(rig.url + path, token=READER_TOKEN).status == 200
    page = call(rig.url + "/")
    assert page.status == 303
    assert page.headers["Location"] == "/login?next=/"
    assert call(rig.url + "/healthz").status == 200
    assert call(rig.url + "/readyz").status in (200, 503)


def test_a_read_only_user_cannot_act_and_the_refusal_is_audited(
    make_rig: Callable[..., Rig], dicom_factory: DicomFactory
) -> None:
    rig = make_rig(**AUTH)
    job = open_job(rig.ledger, receive_series(rig.ledger, dicom_factory.series(1)))
    rig.ledger.transition(job.job_id, JobState.FAILED, reason="broken")

    answer = call(
        f"{rig.url}/api/jobs/{job.job_id}/retry", method="POST", token=READER_TOKEN, data={}
    )

    assert answer.status == 403
    assert "admin" in answer.json()["error"]
    assert rig.ledger.get_job(job.job_id).state == JobState.FAILED
    rows = rig.ledger.audit_entries()
    assert [(r.actor, r.action, r.job_id, r.outcome) for r in rows] == [
        ("prometheus", "retry", job.job_id, "denied")
    ]


def test_an_admin_retries_a_failed_job_which_the_node_can_queue_again(
    make_rig: Callable[..., Rig], dicom_factory: DicomFactory
) -> None:
    rig = make_rig(**AUTH)
    ledger = rig.ledger
    job = open_job(ledger, receive_series(ledger, dicom_factory.series(1)))
    ledger.transition(job.job_id, JobState.QUEUED)
    ledger.transition(job.job_id, JobState.RUNNING, count_attempt=True)
    ledger.transition(job.job_id, JobState.FAILED, reason="gave up after retries")

    answer = call(
        f"{rig.url}/api/jobs/{job.job_id}/retry", method="POST", token=ADMIN_TOKEN, data={}
    )

    assert answer.status == 200, answer.text
    retried = ledger.get_job(job.job_id)
    assert (retried.state, retried.attempts, retried.reason) == (JobState.READY, 0, None)
    last = ledger.events(job.job_id)[-1]
    assert (last.state, last.reason) == (JobState.READY, "retried by ops")
    # READY is what the node's completion watcher queues; the transition is allowed.
    ledger.transition(job.job_id, JobState.QUEUED)
    again = call(
        f"{rig.url}/api/jobs/{job.job_id}/retry", method="POST", token=ADMIN_TOKEN, data={}
    )
    assert again.status == 409
    assert "only a FAILED job can be retried" in again.json()["error"]
    outcomes = [
        e["outcome"] for e in call(f"{rig.url}/api/audit", token=READER_TOKEN).json()["audit"]
    ]
    assert outcomes == ["refused", "ok"]


def test_a_discarded_job_is_shown_discarded_with_its_reason_until_it_is_retried(
    make_rig: Callable[..., Rig], dicom_factory: DicomFactory
) -> None:
    rig = make_rig(**AUTH)
    job = open_job(rig.ledger, receive_series(rig.ledger, dicom_factory.series(1)))
    rig.ledger.transition(job.job_id, JobState.QUEUED)
    url = f"{rig.url}/api/jobs/{job.job_id}"

    without_reason = call(f"{url}/discard", method="POST", token=ADMIN_TOKEN, data={})
    discarded = call(
        f"{url}/discard", method="POST", token=ADMIN_TOKEN, data={"reason": "test study"}
    )

    assert without_reason.status == 409
    assert discarded.status == 200, discarded.text
    shown = call(url, token=READER_TOKEN).json()
    assert shown["state"] == "DISCARDED"
    assert shown["reason"] == "discarded by ops: test study"
    assert shown["discarded"]["by"] == "ops"
    assert rig.ledger.get_job(job.job_id).state == JobState.FAILED
    listed = call(f"{rig.url}/api/jobs?state=DISCARDED", token=READER_TOKEN).json()["jobs"]
    assert [j["job_id"] for j in listed] == [job.job_id]

    assert call(f"{url}/retry", method="POST", token=ADMIN_TOKEN, data={}).status == 200
    assert call(url, token=READER_TOKEN).json()["state"] == "READY"


def test_re_sending_puts_dead_results_back_in_the_outbox_and_the_job_to_delivering(
    make_rig: Callable[..., Rig], dicom_factory: DicomFactory
) -> None:
    rig = make_rig(**AUTH)
    ledger, outbox = rig.ledger, Outbox(rig.ledger)
    job = open_job(ledger, receive_series(ledger, dicom_factory.series(1)))
    run_to_delivering(ledger, job, "2.25.7")
    [item] = outbox.items(job_id=job.job_id)
    outbox.mark_failed(item.item_id, state=DeliveryState.DEAD, status=None, error="unreachable")
    ledger.transition(job.job_id, JobState.FAILED, reason="destination 'pacs' unreachable")

    answer = call(
        f"{rig.url}/api/jobs/{job.job_id}/resend", method="POST", token=ADMIN_TOKEN, data={}
    )

    assert answer.status == 200, answer.text
    assert answer.json()["message"] == "1 result(s) queued for delivery again"
    assert ledger.get_job(job.job_id).state == JobState.DELIVERING
    assert [i.state for i in outbox.items(job_id=job.job_id)] == [DeliveryState.PENDING]


def test_a_job_waiting_in_its_retry_schedule_is_offered_retry_delivery_now(
    make_rig: Callable[..., Rig], dicom_factory: DicomFactory
) -> None:
    rig = make_rig(**AUTH)
    ledger, outbox = rig.ledger, Outbox(rig.ledger)
    job = open_job(ledger, receive_series(ledger, dicom_factory.series(1)))
    run_to_delivering(ledger, job, "2.25.8")
    [item] = outbox.items(job_id=job.job_id)
    later = time.time() + 3600
    outbox.mark_failed(
        item.item_id, state=DeliveryState.PENDING, status=None, error="away", next_attempt_at=later
    )
    cookie, _csrf = sign_in(rig, "alice", "alice-password")
    page = call(f"{rig.url}/jobs/{job.job_id}", headers={"Cookie": f"pacs_ai_session={cookie}"})

    answer = call(
        f"{rig.url}/api/jobs/{job.job_id}/resend", method="POST", token=ADMIN_TOKEN, data={}
    )

    assert "Retry delivery now" in page.text
    assert answer.status == 200, answer.text
    assert answer.json()["message"] == "1 result(s) to be delivered now"
    [due] = outbox.items(job_id=job.job_id)
    assert due.state == DeliveryState.PENDING and due.next_attempt_at <= time.time()
    assert ledger.get_job(job.job_id).state == JobState.DELIVERING


def sign_in(rig: Rig, user: str, password: str) -> tuple[str, str]:
    return sign_in_form(rig.url, user, password)


def test_a_signed_in_admin_acts_with_the_csrf_token_and_never_without(
    make_rig: Callable[..., Rig], dicom_factory: DicomFactory
) -> None:
    rig = make_rig(**AUTH)
    job = open_job(rig.ledger, receive_series(rig.ledger, dicom_factory.series(1)))
    rig.ledger.transition(job.job_id, JobState.FAILED, reason="broken")
    cookie, csrf = sign_in(rig, "alice", "alice-password")
    session = {"Cookie": f"pacs_ai_session={cookie}"}
    action = f"{rig.url}/jobs/{job.job_id}/retry"

    forged = call(action, method="POST", data={}, headers=session)
    wrong = call(action, method="POST", data={"csrf": csrf[:-1] + "x"}, headers=session)
    cross_site = call(
        action, method="POST", data={"csrf": csrf}, headers={**session, "Origin": "http://evil"}
    )
    assert (forged.status, wrong.status, cross_site.status) == (403, 403, 403)
    assert rig.ledger.get_job(job.job_id).state == JobState.FAILED

    done = call(action, method="POST", data={"csrf": csrf}, headers=session)

    assert done.status == 303
    assert done.headers["Location"] == f"/jobs/{job.job_id}?did=retry"
    assert rig.ledger.get_job(job.job_id).state == JobState.READY
    assert (
        call(f"{rig.url}/login", method="POST", data={"user": "alice", "password": "nope"}).status
        == 401
    )


def test_a_read_only_user_sees_no_action_buttons_and_is_refused_when_posting(
    make_rig: Callable[..., Rig], dicom_factory: DicomFactory
) -> None:
    rig = make_rig(**AUTH)
    job = open_job(rig.ledger, receive_series(rig.ledger, dicom_factory.series(1)))
    rig.ledger.transition(job.job_id, JobState.FAILED, reason="broken")
    cookie, csrf = sign_in(rig, "bob", "bob-password")
    session = {"Cookie": f"pacs_ai_session={cookie}"}

    page = call(f"{rig.url}/jobs/{job.job_id}", headers=session)
    posted = call(
        f"{rig.url}/jobs/{job.job_id}/retry", method="POST", data={"csrf": csrf}, headers=session
    )

    assert page.status == 200
    assert "action-retry" not in page.text
    assert posted.status == 403
    assert rig.ledger.get_job(job.job_id).state == JobState.FAILED


def test_identifiers_are_shown_to_authenticated_users_only(
    make_rig: Callable[..., Rig], dicom_factory: DicomFactory
) -> None:
    open_rig = make_rig()
    secured = make_rig(**AUTH)
    ds = dicom_factory.dataset()
    ds.AccessionNumber = "ACC-4711"
    path = dicom_factory.save(ds)
    for rig in (open_rig, secured):
        job = open_job(rig.ledger, receive_series(rig.ledger, [path]))
        rig.ledger.transition(
            job.job_id, JobState.FAILED, reason=f"cannot read {ds.SOPInstanceUID}: broken"
        )

    anonymous = call(f"{open_rig.url}/")
    cookie, _csrf = sign_in(secured, "bob", "bob-password")
    signed_in = call(f"{secured.url}/", headers={"Cookie": f"pacs_ai_session={cookie}"})

    assert anonymous.status == 200
    for secret in (
        str(ds.SeriesInstanceUID),
        str(ds.StudyInstanceUID),
        str(ds.SOPInstanceUID),
        "ACC-4711",
    ):
        assert secret not in anonymous.text
        assert secret in signed_in.text
    assert "cannot read [UID]: broken" in anonymous.text
    anonymous_json = call(f"{open_rig.url}/api/jobs").json()["jobs"][0]
    assert "series_uid" not in anonymous_json
    assert (
        call(f"{secured.url}/api/jobs", token=READER_TOKEN).json()["jobs"][0]["accession_number"]
        == "ACC-4711"
    )
    # Anonymous visitors cannot act either: there is no admin without authentication.
    assert call(f"{open_rig.url}/api/jobs/x/retry", method="POST", data={}).status == 403


def test_values_from_the_network_are_escaped_in_the_page(
    make_rig: Callable[..., Rig], dicom_factory: DicomFactory
) -> None:
    rig = make_rig()
    job = open_job(
        rig.ledger,
        receive_series(rig.ledger, dicom_factory.series(1), calling_ae="<script>x"),
    )
    rig.ledger.transition(job.job_id, JobState.FAILED, reason='<img src=x onerror="alert(1)">')

    page = call(f"{rig.url}/").text

    assert "<script>x" not in page
    assert "&lt;script&gt;x" in page
    assert "<img src=x" not in page
    assert call(f"{rig.url}/").headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_readyz_is_not_ready_until_a_live_worker_serves_every_routed_model(
    make_rig: Callable[..., Rig], redis_server: RedisServer
) -> None:
    rig = make_rig()

    before = call(f"{rig.url}/readyz")
    rig.ledger.worker_heartbeat("w1", host="h", pid=1, device="cpu", models=["other-model"])
    still = call(f"{rig.url}/readyz")
    rig.ledger.worker_heartbeat("w2", host="h", pid=2, device="cpu", models=["ct-lungs"])
    ready = call(f"{rig.url}/readyz")
    redis_server.stop()
    broker_gone = call(f"{rig.url}/readyz")

    assert before.status == still.status == 503
    checks = {c["name"]: c for c in still.json()["checks"]}
    assert checks["workers"]["detail"].startswith("no live worker serves ct-lungs")
    assert checks["ledger"]["ok"] and checks["broker"]["ok"] and checks["disk"]["ok"]
    assert ready.status == 200, ready.text
    assert ready.json()["ready"] is True
    assert broker_gone.status == 503
    assert not {c["name"]: c for c in broker_gone.json()["checks"]}["broker"]["ok"]
    assert call(f"{rig.url}/healthz").json()["status"] == "ok"


def test_the_dashboard_refuses_to_listen_beyond_localhost_without_authentication(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"monitor: the dashboard would listen on 0\.0\.0\.0"):
        validate_settings({"data_dir": str(tmp_path), "monitor": {"host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match=r"password_hash: missing; pacs-ai users add a --role"):
        validate_settings(
            {"monitor": {"host": "0.0.0.0", "users": [{"name": "a", "role": "admin"}]}}
        )
    settings = validate_settings(
        {"monitor": {"host": "0.0.0.0", "tokens": [{"name": "p", "token": READER_TOKEN}]}}
    )
    assert settings.monitor.requires_authentication


def test_a_taken_port_stops_the_monitor_from_starting_with_a_clear_message(
    make_rig: Callable[..., Rig], tmp_path: Path, redis_server: RedisServer
) -> None:
    rig = make_rig()
    settings = make_settings(tmp_path / "second", redis_server.url, port=rig.server.port)
    second = MonitorServer(settings, rig.ledger, inspector=None)

    with pytest.raises(ConfigError, match=r"monitor\.port: cannot listen on 127\.0\.0\.1"):
        second.start()


def test_status_prints_the_jobs_with_their_stage_timestamps_as_json(
    make_rig: Callable[..., Rig], dicom_factory: DicomFactory, tmp_path: Path
) -> None:
    from click.testing import CliRunner  # noqa: PLC0415

    rig = make_rig()
    job = open_job(rig.ledger, receive_series(rig.ledger, dicom_factory.series(2), at=500.0))
    rig.ledger.transition(job.job_id, JobState.QUEUED)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(rig.settings.model_dump(mode="json", exclude={"monitor"})))
    # Ready (status exits 0): a node and a worker for the routed model are alive.
    Presence(rig.ledger).node_heartbeat("node", host="h", pid=1, ae_title="PACSAI", port=1)
    rig.ledger.worker_heartbeat("w", host="h", pid=2, device="cpu", models=["ct-lungs"])

    as_json = CliRunner().invoke(main, ["status", "--config", str(config), "--json"])
    as_text = CliRunner().invoke(main, ["status", "--config", str(config)])

    assert as_json.exit_code == 0, as_json.output
    [shown] = json.loads(as_json.output)["jobs"]
    api = call(f"{rig.url}/api/jobs").json()["jobs"][0]
    assert (shown["job_id"], shown["state"], shown["route"], shown["model"]) == (
        job.job_id,
        "QUEUED",
        "chest-ct",
        "ct-lungs",
    )
    assert shown["stages"] == api["stages"]
    assert shown["stages"]["first_received"] == 500.0
    assert shown["stages"]["last_received"] == 501.0
    assert shown["durations"]["receive"] == 1.0
    assert as_text.exit_code == 0, as_text.output
    assert f"{job.job_id[:8]} QUEUED" in as_text.output
    assert "pacs_ai.model.ct-lungs" in as_text.output


def test_the_monitor_speaks_https_with_a_secure_session_cookie_when_given_a_certificate(
    make_rig: Callable[..., Rig], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    rig = make_rig(
        **AUTH,
        tls={
            "certificate": str(pki.server.certificate),
            "private_key": str(pki.server.private_key),
        },
    )
    context = ssl.create_default_context(cafile=str(pki.ca_certificate))
    base = f"https://127.0.0.1:{rig.server.port}"

    with urllib.request.urlopen(f"{base}/healthz", context=context, timeout=10) as health:  # noqa: S310
        health_status = health.status
    login = urllib.request.Request(  # noqa: S310
        f"{base}/login",
        data=b"user=alice&password=alice-password",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context), _NoRedirect()
    )
    with pytest.raises(urllib.error.HTTPError, match="303") as redirect:
        opener.open(login, timeout=10)

    with redirect.value as answer:
        assert "; secure" in answer.headers["Set-Cookie"].lower()
    assert health_status == 200
    with socket.create_connection(("127.0.0.1", rig.server.port), timeout=10) as plain:
        plain.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert not plain.recv(100).startswith(b"HTTP/"), "plain HTTP must not be answered"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def test_the_overview_shows_a_cleanly_stopped_worker_as_stopped_not_silent(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(**AUTH)
    rig.ledger.worker_heartbeat("gone", host="h", pid=1, device="cpu", models=["ct-lungs"])
    Presence(rig.ledger).worker_stopped("gone")

    page = call(f"{rig.url}/", token=READER_TOKEN)

    assert page.status == 200
    assert '<span class="stopped">stopped</span>' in page.text
    assert '<span class="silent">' not in page.text
