"""The monitor against the probes of issue 12: malformed and oversized requests before
sign-in, header injection through ``next``, a poisoned instance, password guessing and
user enumeration, plaintext passwords, foreign Host headers."""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydicom import dcmread

from core.errors import ConfigError
from core.jobs import JobState, SeriesState
from core.settings import validate_settings
from monitor.web.views import UNREADABLE
from pacs_ai.cli import main
from tests.conftest import DicomFactory
from tests.integration.test_monitor import (  # noqa: F401 -- make_rig is a fixture
    AUTH,
    READER_TOKEN,
    Rig,
    make_rig,
    open_job,
    receive_series,
)
from tests.support.monitor import call

pytestmark = pytest.mark.peers


@pytest.fixture
def secured(make_rig: Callable[..., Rig]) -> Rig:  # noqa: F811 -- the imported fixture
    return make_rig(**AUTH)


def raw(port: int, request: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``request`` and read the answer without closing our side first."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer


def audit_rows(rig: Rig, action: str) -> list[tuple[str, str]]:
    return [(r.actor, r.outcome) for r in reversed(rig.ledger.audit_entries(action=action))]


def test_a_negative_or_huge_content_length_before_sign_in_is_refused_without_reading_a_body(
    secured: Rig,
) -> None:
    rig = secured
    port = rig.server.port
    head = f"POST /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"

    started = time.monotonic()
    negative = raw(port, (head + "Content-Length: -1\r\n\r\n").encode())
    huge = raw(port, (head + "Content-Length: 300000000\r\n\r\n").encode())
    chunked = raw(
        port,
        (head + "Transfer-Encoding: chunked\r\n"
         "Content-Type: application/x-www-form-urlencoded\r\n\r\n").encode()
        + b"10000\r\n" + b"a" * 0x10000 + b"\r\n" + b"10000\r\n" + b"a" * 0x10000 + b"\r\n",
    )  # fmt: skip

    # Answered while our side is still open: nothing waited for a body that never comes.
    assert time.monotonic() - started < 5
    assert negative.startswith(b"HTTP/1.1 400"), negative[:80]
    assert huge.startswith(b"HTTP/1.1 413"), huge[:80]
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:80]
    assert call(f"{rig.url}/healthz").status == 200


def test_cr_lf_in_next_cannot_add_a_header_and_the_redirect_stays_on_the_dashboard(
    secured: Rig,
) -> None:
    rig = secured
    injected = "/\r\nSet-Cookie: injected=1"

    answers = {
        next_path: call(
            f"{rig.url}/login",
            method="POST",
            data={"user": "alice", "password": "alice-password", "next": next_path},
        )
        for next_path in (injected, "//evil.example/x", "https://evil.example/", "/jobs/abc")
    }
    unsigned = call(f"{rig.url}/jobs/%0D%0ASet-Cookie:%20injected=1")

    locations = {k: a.headers["Location"] for k, a in answers.items()}
    assert locations == {
        injected: "/",
        "//evil.example/x": "/",
        "https://evil.example/": "/",
        "/jobs/abc": "/jobs/abc",
    }
    for answer in [*answers.values(), unsigned]:
        assert "injected" not in answer.headers.get("Set-Cookie", "")
        assert all("\r" not in v and "\n" not in v for v in answer.headers.values())
    assert unsigned.status == 303
    assert unsigned.headers["Location"].startswith("/login?next=/")


def nested_sequences(depth: int) -> bytes:
    """An undefined-length sequence nested ``depth`` deep (explicit VR little endian),
    tagged (0040,A730) so that it follows every attribute of a pixel-less image."""
    opening = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return opening * depth + closing * depth


def test_an_instance_with_ten_thousand_nested_sequences_marks_its_own_job_and_no_page_fails(
    secured: Rig, dicom_factory: DicomFactory
) -> None:
    rig = secured
    good = dicom_factory.dataset()
    good.AccessionNumber = "ACC-GOOD"
    bad = dicom_factory.dataset()
    bad.AccessionNumber = "ACC-BAD"
    del bad.PixelData
    bad_path = dicom_factory.save(bad)
    good_job = open_job(rig.ledger, receive_series(rig.ledger, [dicom_factory.save(good)]))
    bad_job = open_job(rig.ledger, receive_series(rig.ledger, [bad_path]))
    rig.ledger.transition(bad_job.job_id, JobState.QUEUED)
    with bad_path.open("ab") as poisoned:
        poisoned.write(nested_sequences(10_000))
    with pytest.raises(RecursionError):  # what the file does to a reader
        dcmread(bad_path, stop_before_pixels=True, specific_tags=["AccessionNumber"])

    overview = call(f"{rig.url}/", token=READER_TOKEN)
    listed = call(f"{rig.url}/api/jobs", token=READER_TOKEN)
    bad_page = call(f"{rig.url}/jobs/{bad_job.job_id}", token=READER_TOKEN)
    bad_json = call(f"{rig.url}/api/jobs/{bad_job.job_id}", token=READER_TOKEN)
    good_page = call(f"{rig.url}/jobs/{good_job.job_id}", token=READER_TOKEN)

    assert [a.status for a in (overview, listed, bad_page, bad_json, good_page)] == [200] * 5
    bad_row = overview.text.split(f'id="job-{bad_job.job_id}"')[1].split("</tr>")[0]
    good_row = overview.text.split(f'id="job-{good_job.job_id}"')[1].split("</tr>")[0]
    assert UNREADABLE in bad_row
    assert "ACC-GOOD" in good_row
    assert UNREADABLE not in good_row
    shown = {j["job_id"]: j for j in listed.json()["jobs"]}
    assert shown[bad_job.job_id]["trouble"] == UNREADABLE
    assert shown[good_job.job_id]["accession_number"] == "ACC-GOOD"
    assert "trouble" not in shown[good_job.job_id]
    assert UNREADABLE in bad_page.text
    assert bad_json.json()["trouble"] == UNREADABLE
    assert "ACC-GOOD" in good_page.text


def sign_in_attempt(rig: Rig, user: str, password: str) -> int:
    data = {"user": user, "password": password}
    return call(f"{rig.url}/login", method="POST", data=data).status


def test_failed_sign_ins_for_one_account_are_held_with_growing_delays_and_audited_once(
    secured: Rig,
) -> None:
    rig = secured
    now = [1000.0]
    rig.server.app.state.services.throttle.clock = lambda: now[0]

    guesses = [sign_in_attempt(rig, "alice", f"guess-{n}") for n in range(5)]
    held = call(
        f"{rig.url}/login", method="POST", data={"user": "alice", "password": "alice-password"}
    )
    now[0] += 1.5
    after_first_hold = sign_in_attempt(rig, "alice", "guess-6")
    second = call(f"{rig.url}/login", method="POST", data={"user": "alice", "password": "x"})
    other_account = sign_in_attempt(rig, "bob", "bob-password")
    now[0] += 2.5
    right = sign_in_attempt(rig, "alice", "alice-password")

    assert guesses == [401] * 5
    assert held.status == 429
    assert held.headers["Retry-After"] == "1"
    assert after_first_hold == 401
    assert (second.status, second.headers["Retry-After"]) == (429, "2")
    assert other_account == 303
    assert right == 303
    assert audit_rows(rig, "login-throttled") == [("alice", "held")]
    assert audit_rows(rig, "login").count(("alice", "failed")) == 6


def test_guessing_many_names_from_one_address_holds_that_address(
    secured: Rig,
) -> None:
    rig = secured
    rig.server.app.state.services.throttle.clock = lambda: 1000.0

    unknown = [sign_in_attempt(rig, f"user{n}", "password-guess") for n in range(10)]
    valid_but_held = sign_in_attempt(rig, "bob", "bob-password")

    assert unknown == [401] * 10
    assert valid_but_held == 429
    [row] = rig.ledger.audit_entries(action="login-throttled")
    assert '"held": "address"' in (row.detail or "")
    assert row.remote == "127.0.0.1"


def test_a_wrong_password_costs_as_long_for_an_unknown_name_as_for_a_known_one(
    secured: Rig,
) -> None:
    rig = secured

    def cost(user: str) -> float:
        started = time.perf_counter()
        assert sign_in_attempt(rig, user, "wrong-password") == 401
        return time.perf_counter() - started

    known, unknown = [], []
    for n in range(4):
        known.append(cost("alice" if n % 2 else "bob"))
        unknown.append(cost(f"nobody{n}"))

    # Both pay one scrypt check (tens of ms); a plaintext or skipped check would be ~1 ms.
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.5 < ratio < 2, (known, unknown)


def test_plaintext_passwords_are_refused_and_users_add_prints_a_hashed_entry(
    tmp_path: Path,
) -> None:
    import yaml  # noqa: PLC0415

    with pytest.raises(ConfigError, match=r"password: plaintext passwords are not accepted"):
        validate_settings(
            {"monitor": {"users": [{"name": "a", "role": "admin", "password": "secret-pass"}]}}
        )
    printed = CliRunner().invoke(
        main,
        ["users", "add", "carol", "--role", "admin", "--password-stdin"],
        input="long-secret\n",
    )

    assert printed.exit_code == 0, printed.output
    assert "long-secret" not in printed.output
    [entry] = yaml.safe_load(printed.output)
    settings = validate_settings({"data_dir": str(tmp_path), "monitor": {"users": [entry]}})
    [user] = settings.monitor.users
    assert (user.name, user.role) == ("carol", "admin")


def test_a_foreign_host_header_is_refused_and_the_api_schema_is_served(
    secured: Rig,
) -> None:
    rig = secured

    foreign = call(f"{rig.url}/healthz", headers={"Host": "evil.example"})
    schema = call(f"{rig.url}/api/openapi.json")
    docs = call(f"{rig.url}/api/docs")
    big_form = call(
        f"{rig.url}/login", method="POST", data={"user": "alice", "password": "x" * 100_000}
    )

    assert foreign.status == 400
    assert schema.status == 200
    assert {"/api/jobs", "/api/jobs/{job_id}", "/metrics"} <= set(schema.json()["paths"])
    assert docs.status == 200
    assert "/api/jobs/{job_id}/{action}" in docs.text
    assert big_form.status == 413


def test_series_not_routed_and_instances_refused_or_quarantined_are_on_the_dashboard_and_api(
    secured: Rig, dicom_factory: DicomFactory
) -> None:
    rig = secured
    ledger = rig.ledger
    mr = receive_series(ledger, dicom_factory.series(2, modality="MR"), calling_ae="MR1")
    ledger.set_series_state(mr, SeriesState.UNROUTED, "rule chest-ct: no match on Modality")
    ledger.record_quarantine(
        stage="receive", reason="malformed: no SOP Instance UID", path="/q/1", calling_ae="CT9"
    )
    ledger.record_quarantine(stage="infer", reason="worker crashed twice", path="/q/2")

    overview = call(f"{rig.url}/", token=READER_TOKEN)
    listed = call(f"{rig.url}/?filter=set-aside", token=READER_TOKEN)
    api = call(f"{rig.url}/api/set-aside", token=READER_TOKEN)

    assert overview.status == listed.status == api.status == 200
    for tile, count in (("tile-not-routed", 1), ("tile-refused", 1), ("tile-quarantined", 1)):
        assert f'id="{tile}"><div class="n">{count}</div>' in overview.text
    assert 'id="not-routed"' not in overview.text
    not_routed = listed.text.split('id="not-routed"')[1].split("</table>")[0]
    assert "rule chest-ct: no match on Modality" in not_routed
    assert mr in not_routed
    assert "malformed: no SOP Instance UID" in listed.text.split('id="refused"')[1]
    assert "worker crashed twice" in listed.text.split('id="quarantined"')[1]
    shown = api.json()
    assert [s["series_uid"] for s in shown["not_routed"]] == [mr]
    assert [q["reason"] for q in shown["refused_at_the_door"]] == ["malformed: no SOP Instance UID"]
