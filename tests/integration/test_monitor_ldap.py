"""Signing in to the monitor against a real OpenLDAP server (slapd started per test):
groups mapped to roles, refusals, the rate limit, and a directory that is down."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import ConfigError
from core.jobs import JobState
from core.ledger import Ledger
from core.queue import BrokerInspector, JobQueue, make_celery
from core.settings import validate_settings
from monitor.passwords import hash_password
from monitor.web.server import MonitorServer
from tests.conftest import DicomFactory
from tests.integration.test_monitor import Rig, make_settings, open_job, receive_series
from tests.support.ldap import (
    ADMINS_GROUP,
    BASE_DN,
    GROUPS,
    PASSWORDS,
    PEOPLE,
    READERS_GROUP,
    ROOT_DN,
    ROOT_PASSWORD,
    Slapd,
)
from tests.support.monitor import call, sign_in_form
from tests.support.peers import RedisServer, free_port
from tests.support.tls import make_pki

pytestmark = pytest.mark.peers

ROLE_GROUPS = {"admin": [ADMINS_GROUP], "read-only": [READERS_GROUP.upper()]}


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[Slapd]:
    server = Slapd(tmp_path / "slapd")
    server.start()
    try:
        server.load()
        yield server
    finally:
        server.stop()


def direct_bind(url: str) -> dict[str, Any]:
    return {
        "url": url,
        "bind_dn_template": f"uid={{user}},{PEOPLE}",
        "group_base": GROUPS,
        "role_groups": ROLE_GROUPS,
        "timeout_seconds": 3,
    }


def search_bind(url: str) -> dict[str, Any]:
    return {
        "url": url,
        "search_base": BASE_DN,
        "search_filter": "(&(objectClass=inetOrgPerson)(uid={user}))",
        "bind_dn": ROOT_DN,
        "bind_password": ROOT_PASSWORD,
        "group_base": GROUPS,
        "role_groups": ROLE_GROUPS,
    }


LOCAL_USER = {"name": "alice", "role": "admin", "password_hash": hash_password("alice-password")}


@pytest.fixture
def make_rig(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Rig]]:
    started: list[Rig] = []

    def make(ldap: dict[str, Any]) -> Rig:
        settings = make_settings(
            tmp_path / f"rig{len(started)}", redis_server.url, ldap=ldap, users=[LOCAL_USER]
        )
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


def failed_job(rig: Rig, dicom_factory: DicomFactory) -> str:
    job = open_job(rig.ledger, receive_series(rig.ledger, dicom_factory.series(1)))
    rig.ledger.transition(job.job_id, JobState.FAILED, reason="broken")
    return job.job_id


def login(rig: Rig, user: str, password: str) -> Any:
    return call(f"{rig.url}/login", method="POST", data={"user": user, "password": password})


def test_a_directory_user_in_the_admin_group_signs_in_and_retries_a_failed_job(
    make_rig: Callable[..., Rig], slapd: Slapd, dicom_factory: DicomFactory
) -> None:
    rig = make_rig(direct_bind(slapd.url))
    job_id = failed_job(rig, dicom_factory)

    cookie, csrf = sign_in_form(rig.url, "dana", PASSWORDS["dana"])
    done = call(
        f"{rig.url}/jobs/{job_id}/retry",
        method="POST",
        data={"csrf": csrf},
        headers={"Cookie": f"pacs_ai_session={cookie}"},
    )

    assert done.status == 303
    assert rig.ledger.get_job(job_id).state == JobState.READY
    rows = reversed(rig.ledger.audit_entries())
    assert [(r.actor, r.action, r.outcome) for r in rows] == [
        ("dana", "login", "ok"),
        ("dana", "retry", "ok"),
    ]


def test_a_directory_user_in_the_read_only_group_reads_but_may_not_act(
    make_rig: Callable[..., Rig], slapd: Slapd, dicom_factory: DicomFactory
) -> None:
    # Found by a search as a service account; the group DN is matched without case.
    rig = make_rig(search_bind(slapd.url))
    job_id = failed_job(rig, dicom_factory)

    cookie, csrf = sign_in_form(rig.url, "erin", PASSWORDS["erin"])
    session = {"Cookie": f"pacs_ai_session={cookie}"}
    page = call(f"{rig.url}/jobs/{job_id}", headers=session)
    posted = call(
        f"{rig.url}/jobs/{job_id}/retry", method="POST", data={"csrf": csrf}, headers=session
    )

    assert page.status == 200
    assert "action-retry" not in page.text
    assert posted.status == 403
    assert rig.ledger.get_job(job_id).state == JobState.FAILED


def test_a_directory_user_in_no_mapped_group_is_refused(
    make_rig: Callable[..., Rig], slapd: Slapd, caplog: pytest.LogCaptureFixture
) -> None:
    for rig in (make_rig(direct_bind(slapd.url)), make_rig(search_bind(slapd.url))):
        refused = login(rig, "carol", PASSWORDS["carol"])

        assert refused.status == 401
        assert "Wrong user name or password." in refused.text
        assert "Set-Cookie" not in refused.headers
    assert "directory user 'carol' is in no group of monitor.ldap.role_groups" in caplog.text


def test_a_wrong_directory_password_is_refused_and_counted_by_the_rate_limit(
    make_rig: Callable[..., Rig], slapd: Slapd, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(direct_bind(slapd.url))

    # An empty password would be an anonymous bind, which LDAP lets succeed.
    answers = [login(rig, "dana", p).status for p in ("", "wrong", "dana", "x", "y")]
    held = login(rig, "dana", PASSWORDS["dana"])

    assert answers == [401] * 5
    assert held.status == 429
    assert "Too many failed sign-ins" in held.text
    assert int(held.headers["Retry-After"]) >= 1
    assert "wrong" not in caplog.text and PASSWORDS["dana"] not in caplog.text


def test_a_directory_that_is_down_gives_a_clear_message_and_local_users_still_sign_in(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(direct_bind(f"ldap://127.0.0.1:{free_port()}"))

    down = login(rig, "dana", PASSWORDS["dana"])

    assert down.status == 503
    assert "The sign-in directory (LDAP) cannot be reached" in down.text
    assert "monitor: sign-in directory unavailable (ldap://127.0.0.1:" in caplog.text
    assert PASSWORDS["dana"] not in caplog.text
    assert login(rig, "alice", "alice-password").status == 303


def test_start_tls_signs_in_with_a_trusted_certificate_and_refuses_an_untrusted_one(
    make_rig: Callable[..., Rig], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path / "pki")
    server = Slapd(tmp_path / "slapd-tls", tls=pki.server)
    server.start()
    try:
        server.load()
        trusted = make_rig(
            {
                **direct_bind(server.url),
                "start_tls": True,
                "ca_certificates": str(pki.ca_certificate),
            }
        )
        # A certificate from another authority stands in for a CA that did not sign it.
        untrusted = make_rig(
            {
                **direct_bind(server.url),
                "start_tls": True,
                "ca_certificates": str(pki.stranger.certificate),
            }
        )

        assert login(trusted, "dana", PASSWORDS["dana"]).status == 303
        refused = login(untrusted, "dana", PASSWORDS["dana"])
    finally:
        server.stop()

    assert refused.status == 503
    assert "The sign-in directory (LDAP) cannot be reached" in refused.text
    assert "monitor: sign-in directory unavailable" in caplog.text


def test_a_directory_setting_that_cannot_work_is_refused_at_start_naming_the_key(
    tmp_path: Path,
) -> None:
    base: dict[str, Any] = {"url": "ldap://ldap.example.org", "role_groups": ROLE_GROUPS}
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, r"monitor\.ldap: .*give either bind_dn_template .* or search_base"),
        ({"bind_dn_template": "uid=x,dc=org"}, r"bind_dn_template: must contain \{user\}"),
        (
            {"bind_dn_template": "{user}@corp.example.org"},
            r"bind_dn_template: .* is not a DN, so the user's memberOf cannot be read",
        ),
        (
            {"bind_dn_template": "uid={user}", "role_groups": {"admin": []}},
            r"role_groups: no group given",
        ),
        (
            {"bind_dn_template": "uid={user}", "url": "ldaps://h", "start_tls": True},
            r"start_tls: ldaps:// is already TLS",
        ),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate_settings({"data_dir": str(tmp_path), "monitor": {"ldap": {**base, **extra}}})
