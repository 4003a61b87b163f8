"""The dashboard in a real browser while the real pipeline runs.

DCMTK sends a synthetic chest CT, an MR series and a CT with missing slices to ``pacs-ai
serve``; a ``pacs-ai worker`` runs ct-lungs; Orthanc is the PACS. The MR series is routed
to ct-lungs too, by mistake, and is NOT_APPLICABLE from its headers (never queued); the CT
with a gap passes the headers and fails in the worker. Headless Chromium (Debian's, driven
by Playwright) signs in, watches the CT job appear and its stages fill in, sees the other
jobs' reasons and retries the failed one from the page. The metrics are
scraped and checked against the ledger, and ``/readyz`` turns not-ready when the worker
stops. The page's self-refresh is checked on Playwright's clock: it never reloads over a
click on a link, an action being sent or a reason being typed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread

from core.jobs import JobState
from core.ledger import Outbox
from monitor.passwords import hash_password
from pacs_ai.phantom import write_chest_ct_series
from tests.conftest import DicomFactory
from tests.support.monitor import call
from tests.support.pacs_ai import PacsAiDeployment
from tests.support.peers import Orthanc, RedisServer, storescu, tool_or_skip, wait_for

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(900)]

# Test credentials for a monitor on 127.0.0.1.
READER_TOKEN = "e2e-reader-token-0123456789"  # noqa: S105
ADMIN_PASSWORD = "admin-password-e2e"  # noqa: S105
READER_PASSWORD = "reader-password-e2e"  # noqa: S105
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def deployment(
    tmp_path: Path, redis_server: RedisServer, orthanc: Orthanc
) -> Iterator[PacsAiDeployment]:
    config: dict[str, Any] = {
        "broker_url": redis_server.url,
        "node": {"ae_title": "PACSAI"},
        "completion": {"series_quiet_seconds": 2, "check_interval_seconds": 0.2},
        "destinations": {
            "pacs": {"host": "127.0.0.1", "port": orthanc.dicom_port, "ae_title": "ORTHANC"}
        },
        "routes": [
            {
                "name": "chest-ct",
                "match": {"Modality": "CT"},
                "models": ["ct-lungs"],
                "send_results_to": ["pacs"],
            },
            {
                "name": "mr-by-mistake",
                "match": {"Modality": "MR"},
                "models": ["ct-lungs"],
                "send_results_to": ["pacs"],
            },
        ],
        "delivery": {"poll_interval_seconds": 0.2},
        "worker": {"heartbeat_seconds": 0.5, "lost_after_seconds": 3, "max_attempts": 2},
        "monitor": {
            "refresh_seconds": 1,
            "users": [
                {"name": "admin", "role": "admin", "password_hash": hash_password(ADMIN_PASSWORD)},
                {
                    "name": "reader",
                    "role": "read-only",
                    "password_hash": hash_password(READER_PASSWORD),
                },
            ],
            "tokens": [{"name": "prometheus", "role": "read-only", "token": READER_TOKEN}],
        },
    }
    running = PacsAiDeployment(tmp_path / "pacs-ai", config)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = tool_or_skip("chromium", native=False)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def sign_in(browser: Any, base_url: str, user: str, password: str) -> Any:
    # A context of its own (one user's cookies) that can hold more than one tab.
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    page.goto(base_url + "/")
    assert "/login" in page.url, "the dashboard should ask to sign in first"
    page.fill("#user", user)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(base_url + "/")
    return page


def open_page(signed_in: Any, url: str) -> Any:
    """A new tab of the signed-in browser context at ``url``.

    The dashboard reloads itself every second; a ``goto`` or a link click on a page whose
    reload timer runs can be cancelled by that reload (net::ERR_ABORTED). A new tab has no
    timer until its page has loaded, so navigating in one never races a reload.
    """
    page = signed_in.context.new_page()
    page.goto(url)
    return page


def job_of(deployment: PacsAiDeployment, series_uid: str, timeout: float) -> str:
    wait_for(
        lambda: bool(deployment.ledger.jobs(series_uid=series_uid)),
        timeout,
        f"a job for series {series_uid}",
        process=deployment.node,
    )
    return deployment.ledger.jobs(series_uid=series_uid)[0].job_id


def test_the_dashboard_shows_jobs_flowing_and_retries_a_failed_one(
    deployment: PacsAiDeployment,
    browser: Any,
    dicom_factory: DicomFactory,
    tmp_path: Path,
    artifacts_dir: Path,
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    base = deployment.monitor_url
    ledger = deployment.ledger
    page = sign_in(browser, base, "admin", ADMIN_PASSWORD)
    expect(page.locator("#user")).to_have_text("admin (admin)")

    ct = write_chest_ct_series(tmp_path / "ct", slices=48, size=160, seed=3)
    mr_files = dicom_factory.series(20, modality="MR")
    # A CT whose headers ct-lungs accepts, and whose stack the worker refuses: five slices
    # missing in a row.
    gap_files = dicom_factory.series(30)
    del gap_files[10:15]
    for files in (list(ct.paths), mr_files, gap_files):
        sent = storescu(files, "127.0.0.1", deployment.port, "PACSAI", "MODALITY")
        assert sent.returncode == 0, sent.stdout + sent.stderr
    mr_series = str(dcmread(mr_files[0], stop_before_pixels=True).SeriesInstanceUID)
    gap_series = str(dcmread(gap_files[0], stop_before_pixels=True).SeriesInstanceUID)

    # The CT job appears on the page (it reloads itself) and its stages fill in.
    ct_job = job_of(deployment, ct.series_instance_uid, timeout=60)
    row = page.locator(f"#job-{ct_job}")
    expect(row).to_be_visible(timeout=30_000)
    expect(row).to_have_attribute("data-state", "DONE", timeout=240_000)
    for stage in ("receive", "complete", "queue", "infer", "deliver"):
        expect(row.locator(f".stage-{stage}")).to_have_text(re.compile(r"\d"), timeout=10_000)
    expect(row.locator(".turnaround")).to_have_text(re.compile(r"\d"))

    # The MR series is not one ct-lungs accepts: NOT_APPLICABLE, with the reason.
    mr_job = job_of(deployment, mr_series, timeout=60)
    mr_row = page.locator(f"#job-{mr_job}")
    expect(mr_row).to_have_attribute("data-state", "NOT_APPLICABLE", timeout=60_000)
    expect(mr_row.locator(".reason")).to_contain_text("modality MR is not one the model accepts")
    assert [e.state for e in ledger.events(mr_job)] == [
        JobState.RECEIVING,
        JobState.NOT_APPLICABLE,
    ]
    # The CT with a gap failed in the worker; its reason is on the page.
    failed_job = job_of(deployment, gap_series, timeout=60)
    failed_row = page.locator(f"#job-{failed_job}")
    expect(failed_row).to_have_attribute("data-state", "FAILED", timeout=120_000)
    expect(failed_row.locator(".reason")).to_contain_text("missing slices")
    expect(page.locator("#workers")).to_contain_text("ct-lungs")
    expect(page.locator("#destinations")).to_contain_text("ORTHANC@127.0.0.1")
    page.screenshot(path=str(artifacts_dir / "dashboard.png"), full_page=True)

    # Retry it from its page: back to READY, queued and run again by the real pipeline.
    retried_at = time.time()
    expect(page.locator(f"#job-{failed_job} a[href='/jobs/{failed_job}']")).to_be_visible()
    page = open_page(page, f"{base}/jobs/{failed_job}")
    expect(page.locator("#stages")).to_be_visible()
    page.click("#action-retry")
    expect(page.locator("#flash")).to_contain_text("Retried")
    page.screenshot(path=str(artifacts_dir / "job-retried.png"), full_page=True)

    def ran_again() -> bool:
        events = ledger.events(failed_job)
        after = [e for e in events if e.at >= retried_at and e.is_transition]
        states = [e.state for e in after]
        return states[:1] == [JobState.READY] and JobState.FAILED in states[1:]

    wait_for(ran_again, 120, "the retried CT job to run again", process=deployment.node)
    retry_event = next(e for e in ledger.events(failed_job) if e.at >= retried_at)
    assert retry_event.reason == "retried by admin"
    audit = call(f"{base}/api/audit", token=READER_TOKEN).json()["audit"]
    assert any(
        (a["actor"], a["action"], a["job_id"], a["outcome"]) == ("admin", "retry", failed_job, "ok")
        for a in audit
    )
    page = open_page(page, f"{base}/jobs/{failed_job}")
    expect(page.locator("#events")).to_contain_text("retried by admin")

    # A read-only user sees the same, without the actions.
    reader = sign_in(browser, base, "reader", READER_PASSWORD)
    reader = open_page(reader, f"{base}/jobs/{failed_job}")
    expect(reader.locator("#events")).to_contain_text("retried by admin")
    assert reader.locator("#action-retry").count() == 0
    denied = call(f"{base}/api/jobs/{failed_job}/retry", method="POST", token=READER_TOKEN, data={})
    assert denied.status == 403

    # Metrics, scraped and parsed, agree with the ledger.
    scraped = call(f"{base}/metrics", token=READER_TOKEN)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
    }
    assert samples[("pacs_ai_jobs", (("model", "ct-lungs"), ("state", "DONE")))] == 1
    assert samples[("pacs_ai_jobs", (("model", "ct-lungs"), ("state", "FAILED")))] == 1
    assert samples[("pacs_ai_jobs", (("model", "ct-lungs"), ("state", "NOT_APPLICABLE")))] == 1
    received = (("calling_ae", "MODALITY"), ("sop_class", "CT Image Storage"))
    assert samples[("pacs_ai_instances_received_total", received)] == len(ct.paths) + len(gap_files)
    mr_received = (("calling_ae", "MODALITY"), ("sop_class", "MR Image Storage"))
    assert samples[("pacs_ai_instances_received_total", mr_received)] == len(mr_files)
    assert samples[("pacs_ai_node_associations_total", (("outcome", "accepted"),))] >= 2
    items = Outbox(ledger).items(job_id=ct_job)
    last_sent = max(i.sent_at or 0.0 for i in items)
    expected = last_sent - ledger.get_series(ct.series_instance_uid).last_received_at
    labels = (("model", "ct-lungs"), ("route", "chest-ct"))
    assert samples[("pacs_ai_turnaround_seconds_count", labels)] == 1
    assert samples[("pacs_ai_turnaround_seconds_sum", labels)] == pytest.approx(expected)
    attempts = sum(i.attempts for i in items)
    assert samples[("pacs_ai_delivery_attempts_total", (("destination", "pacs"),))] == attempts

    # `pacs-ai status --json` gives the same stage timestamps as the dashboard's API.
    status = subprocess.run(
        [sys.executable, "-m", "pacs_ai", "status", "--config", str(deployment.config_path),
         "--json"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    by_id = {j["job_id"]: j for j in json.loads(status.stdout)["jobs"]}
    api_job = call(f"{base}/api/jobs/{ct_job}", token=READER_TOKEN).json()
    assert by_id[ct_job]["stages"] == api_job["stages"]
    assert by_id[ct_job]["turnaround"] == pytest.approx(expected)

    # Ready while the worker lives; not ready once no worker serves ct-lungs.
    assert call(f"{base}/readyz").status == 200
    deployment.worker.stop(timeout=30)
    wait_for(lambda: call(f"{base}/readyz").status == 503, 30, "/readyz to turn not-ready")
    checks = {c["name"]: c for c in call(f"{base}/readyz").json()["checks"]}
    assert checks["workers"]["detail"].startswith("no live worker serves ct-lungs")
    page = open_page(page, base + "/")
    expect(page.locator("#not-ready")).to_contain_text("no live worker serves ct-lungs")


REFRESH_PAGE = """
<body data-refresh="1">
  <a id="job-link" href="/jobs/1">a job</a>
  <a id="anchor" href="#events">events</a>
  <form id="retry" action="/jobs/1/retry" method="post"><button id="retry-button">Retry</button></form>
  <input id="reason">
</body>
"""


def test_the_self_refreshing_page_never_reloads_over_a_click_or_a_form_being_sent(
    browser: Any,
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    from monitor.assets import REFRESH_SCRIPT  # noqa: PLC0415

    page = browser.new_page()
    page.clock.install()
    page.set_content(REFRESH_PAGE)
    # Count reloads instead of doing them (a reload would end the test's page), and stop
    # the links and the form at the page (as a slow server would): only the script's own
    # decisions are under test, on Playwright's clock instead of the wall clock.
    call_to_reload = "window.location.reload()"
    assert call_to_reload in REFRESH_SCRIPT
    page.evaluate(
        "() => { window.reloads = 0;"
        " document.addEventListener('click', e => { if (e.target.closest('a')) e.preventDefault(); });"
        " document.addEventListener('submit', e => e.preventDefault()); }"
    )
    page.add_script_tag(content=REFRESH_SCRIPT.replace(call_to_reload, "window.reloads++"))

    def reloads_after(milliseconds: int) -> int:
        page.clock.run_for(milliseconds)
        return int(page.evaluate("window.reloads"))

    assert reloads_after(1_000) == 1, "the page reloads itself every data-refresh seconds"
    page.click("#anchor")
    assert reloads_after(1_000) == 2, "a link within the page is no navigation"
    page.click("#job-link")
    assert reloads_after(5_000) == 2, "no reload once a link has been followed"
    assert reloads_after(6_000) > 2, "a navigation that never came must not stop the refresh"
    page.click("#retry-button")
    before = int(page.evaluate("window.reloads"))
    assert reloads_after(5_000) == before, "no reload over an action being sent"
    page.clock.run_for(6_000)
    page.focus("#reason")
    before = int(page.evaluate("window.reloads"))
    assert reloads_after(3_000) == before, "no reload while the user types a reason"
    expect(page.locator("#reason")).to_be_focused()
