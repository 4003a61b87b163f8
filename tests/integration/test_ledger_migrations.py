"""A site upgrading from the first release: its ledger, made and filled as that release
did (on SQLite and on a real PostgreSQL server), goes through ``pacs-ai db upgrade`` run
as an operator runs it, loses nothing, and the dashboard shows the old jobs.

``pacs-ai serve`` and ``pacs-ai worker`` refuse a ledger at an older revision, printing
the command that upgrades it; run as printed, it lets the node start.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import ColumnClause, column, insert, select, table, text

from core.jobs import JobState
from core.ledger import Ledger
from core.ledger.revision import head_revision
from core.settings import validate_settings
from monitor.web.server import MonitorServer
from tests.support.databases import KINDS, first_release_ledger, migrate, throwaway_database
from tests.support.monitor import call
from tests.support.peers import PeerProcess, RedisServer, free_port, port_open, wait_for

pytestmark = pytest.mark.peers

#: The installed console script, as an operator runs it.
PACS_AI = Path(sys.executable).with_name("pacs-ai")
#: An hour ago: the jobs are recent enough for the dashboard's lists.
T = round(time.time()) - 3600.0
STUDY = "1.2.826.0.1.3680043.10.9.1"
SERIES = "1.2.826.0.1.3680043.10.9.1.1"
OTHER_SERIES = "1.2.826.0.1.3680043.10.9.1.2"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"


def job_id(state: JobState) -> str:
    return f"{list(JobState).index(state):02d}" + "ab" * 15


def first_release_rows() -> dict[str, list[dict[str, Any]]]:
    """What a first-release node and its workers left in the ledger: jobs in every state
    with their history, quarantined instances, results to deliver, audit and discards."""
    jobs = []
    events = []
    for index, state in enumerate(JobState):
        done = state in {JobState.DONE, JobState.DELIVERING, JobState.NEEDS_REVIEW}
        failed = state in {JobState.FAILED, JobState.RETRYING, JobState.NOT_APPLICABLE}
        jobs.append(
            {
                "job_id": job_id(state),
                "series_uid": SERIES,
                "study_uid": STUDY,
                "route": "chest-ct",
                "model_id": f"model-{index}",
                "destinations": json.dumps(["pacs"]),
                "priority": 5 + index % 3,
                "state": state.value,
                "reason": f"{state.value.lower()}: reason {index}" if failed else None,
                "attempts": index % 4,
                "created_at": T + index,
                "updated_at": T + 100 + index,
                "result": json.dumps({"seg": f"/results/{index}.dcm"}) if done else None,
                "worker": "pacs-ai-gpu0@gpu-host:4242" if index > 2 else None,
                "rerun_pending": index % 2,
                "input_received_at": T - 10.5,
            }
        )
        events.append(
            {"job_id": job_id(state), "state": "READY", "kind": "transition", "at": T + index}
        )
        events.append(
            {
                "job_id": job_id(state),
                "state": state.value,
                "kind": "transition",
                "at": T + 100 + index,
                "reason": f"to {state.value}",
                "detail": json.dumps({"attempt": index}),
            }
        )
    events.append(
        {
            "job_id": job_id(JobState.RUNNING),
            "state": "RUNNING",
            "kind": "note",
            "at": T + 104.5,
            "reason": "slow volume",
        }
    )
    outbox = []
    for index, (item_state, owner) in enumerate(
        (("PENDING", JobState.DELIVERING), ("SENT", JobState.DONE), ("DEAD", JobState.FAILED))
    ):
        outbox.append(
            {
                "item_id": f"{index:02d}" + "cd" * 15,
                "destination": "pacs",
                "kind": "result",
                "job_id": job_id(owner),
                "series_uid": SERIES,
                "route": "chest-ct",
                "sop_instance_uid": f"1.2.826.0.1.3680043.10.9.2.{index}",
                "sop_class_uid": SEG,
                "path": f"/data/results/{index}.dcm",
                "state": item_state,
                "attempts": index,
                "last_status": 0xA700 if item_state == "DEAD" else None,
                "last_error": "out of resources" if item_state == "DEAD" else None,
                "next_attempt_at": T + 500,
                "created_at": T + 200,
                "updated_at": T + 300,
                "sent_at": T + 250 if item_state == "SENT" else None,
            }
        )
    outbox.append(
        {
            "item_id": "99" + "cd" * 15,
            "destination": "archive",
            "kind": "original",
            "job_id": None,
            "series_uid": OTHER_SERIES,
            "route": "forward-mr",
            "sop_instance_uid": "1.2.826.0.1.3680043.10.9.3.1",
            "sop_class_uid": CT_IMAGE,
            "path": "/data/spool/other/1.dcm",
            "state": "REJECTED",
            "attempts": 1,
            "last_status": 0xA900,
            "last_error": "refused",
            "next_attempt_at": T + 10,
            "created_at": T + 5,
            "updated_at": T + 6,
            "sent_at": None,
        }
    )
    series = {
        "study_uid": STUDY,
        "modality": "CT",
        "calling_ae": "CT1",
        "called_ae": "PACSAI",
        "peer": "10.0.0.5",
        "instance_count": 2,
        "resent_count": 1,
        "updated_at": T + 40,
    }
    return {
        "series": [
            {
                **series,
                "series_uid": SERIES,
                "first_received_at": T - 20,
                "last_received_at": T - 10.5,
                "state": "ROUTED",
                "completed_at": T + 20,
            },
            {
                **series,
                "series_uid": OTHER_SERIES,
                "modality": None,
                "first_received_at": T - 5,
                "last_received_at": T - 4,
                "state": "UNROUTED",
                "reason": "chest-ct: Modality is MR, not CT",
                "completed_at": None,
            },
        ],
        "studies": [
            {
                "study_uid": STUDY,
                "first_received_at": T - 20,
                "last_received_at": T - 4,
                "last_new_series_at": T - 5,
                "series_count": 2,
                "state": "ROUTED",
                "reason": None,
                "completed_at": T + 30,
                "updated_at": T + 30,
            }
        ],
        "instances": [
            {
                "sop_instance_uid": f"{SERIES}.{index}",
                "series_uid": SERIES,
                "study_uid": STUDY,
                "sop_class_uid": CT_IMAGE,
                "transfer_syntax_uid": EXPLICIT_LE,
                "path": f"/data/spool/{STUDY}/{SERIES}/{index}.dcm",
                "size": 526_000 + index,
                "received_at": T - 20 + index,
                "receive_count": 1 + index % 2,
            }
            for index in range(2)
        ],
        "jobs": jobs,
        "job_events": events,
        "quarantine": [
            {
                "quarantine_id": "q1" + "ef" * 15,
                "at": T - 3,
                "stage": "receive",
                "reason": "undecodable: truncated pixel data",
                "path": "/data/quarantine/q1/instance.dcm",
                "sop_instance_uid": "1.2.826.0.1.3680043.10.9.4.1",
                "series_uid": OTHER_SERIES,
                "job_id": None,
                "calling_ae": "CT1",
            },
            {
                "quarantine_id": "q2" + "ef" * 15,
                "at": T + 105,
                "stage": "model",
                "reason": "missing slices",
                "path": "/data/quarantine/q2",
                "sop_instance_uid": None,
                "series_uid": SERIES,
                "job_id": job_id(JobState.FAILED),
                "calling_ae": None,
            },
        ],
        "outbox": outbox,
        "workers": [
            {
                "name": "pacs-ai-gpu0@gpu-host:4242",
                "host": "gpu-host",
                "pid": 4242,
                "device": "cuda:0",
                "models": json.dumps(["model-3", "model-4"]),
                "started_at": T - 100,
                "heartbeat_at": T + 110,
            }
        ],
        "worker_status": [
            {
                "name": "pacs-ai-gpu0@gpu-host:4242",
                "gpu_name": "NVIDIA H200",
                "gpu_memory_used": 1.5e9,
                "gpu_memory_total": 1.4e11,
                "gpu_utilisation": 0.25,
                "current_job": job_id(JobState.RUNNING),
                "current_job_since": T + 104,
                "jobs_done": 7,
                "updated_at": T + 110,
            }
        ],
        "counters": [
            {
                "name": "instances_received",
                "labels": json.dumps({"calling_ae": "CT1", "sop_class": "CT"}),
                "value": 3.0,
            },
            {
                "name": "delivery_attempts",
                "labels": json.dumps({"destination": "pacs"}),
                "value": 4.0,
            },
        ],
        "audit_log": [
            {
                "at": T + 90,
                "actor": "alice",
                "role": "admin",
                "action": "login",
                "job_id": None,
                "outcome": "ok",
                "detail": None,
                "remote": "10.0.0.9",
            },
            {
                "at": T + 300,
                "actor": "alice",
                "role": "admin",
                "action": "discard",
                "job_id": job_id(JobState.FAILED),
                "outcome": "ok",
                "detail": json.dumps({"reason": "test series"}),
                "remote": "10.0.0.9",
            },
        ],
        "job_discards": [
            {
                "job_id": job_id(JobState.FAILED),
                "at": T + 300,
                "actor": "alice",
                "reason": "test series",
            }
        ],
    }


def fill(url: str, rows: dict[str, list[dict[str, Any]]]) -> None:
    """Insert ``rows`` with plain SQL of the first release's columns (not today's tables)."""
    ledger = Ledger(url)
    with ledger.engine.begin() as conn:
        for name, records in rows.items():
            for record in records:
                conn.execute(insert(table(name, *(column(key) for key in record))), record)
    ledger.close()


def contents(url: str, rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of each table in ``rows``, reading only the columns ``rows`` fills."""
    ledger = Ledger(url)
    found = {}
    with ledger.engine.connect() as conn:
        for name, records in rows.items():
            keys = sorted({key for record in records for key in record})
            columns: list[ColumnClause[Any]] = [column(key) for key in keys]
            query = select(*columns).select_from(table(name))
            found[name] = [tuple(row) for row in conn.execute(query)]
            found[name].sort(key=repr)
    ledger.close()
    return found


def operator_runs(argv: list[str], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``pacs-ai ...`` in a fresh process from ``cwd``, with no PACS_AI_ variable."""
    assert argv[0] == "pacs-ai"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_AI_")}
    return subprocess.run(
        [str(PACS_AI), *argv[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write_config(path: Path, **config: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(params=KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with throwaway_database(request.param, tmp_path) as url:
        yield url


def test_a_first_release_ledger_keeps_every_row_through_pacs_ai_db_upgrade(
    database_url: str, tmp_path: Path
) -> None:
    first_release_ledger(database_url)
    rows = first_release_rows()
    fill(database_url, rows)
    before = contents(database_url, rows)
    config = write_config(
        tmp_path / "etc" / "pacs-ai.yaml", data_dir=str(tmp_path / "data"), ledger_url=database_url
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    upgraded = operator_runs(["pacs-ai", "db", "upgrade", "--config", str(config)], cwd=elsewhere)
    again = operator_runs(["pacs-ai", "db", "upgrade", "--config", str(config)], cwd=elsewhere)
    current = operator_runs(["pacs-ai", "db", "current", "--config", str(config)], cwd=elsewhere)

    assert upgraded.returncode == 0, upgraded.stderr
    assert (
        f"upgraded from schema 1 of an earlier release (revision 0001) to {head_revision()} (head)"
        in upgraded.stdout
    )
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert current.returncode == 0 and f"revision {head_revision()} (head)" in current.stdout
    assert {len(found) for found in before.values()} != {0}
    # Nothing lost, nothing changed: every row, every value the first release wrote (a
    # revision may add rows of its own, such as counters it derives from the jobs).
    after = contents(database_url, rows)
    assert {name: Counter(found) - Counter(after[name]) for name, found in before.items()} == {
        name: Counter() for name in before
    }
    ledger = Ledger(database_url)
    with ledger.engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM schema_info")).scalars().all() == [2]
    # The columns schema 2 added stay empty in old rows, which the code reads as before.
    series = ledger.get_series(SERIES)
    assert series.receiving_since is None and series.run_started_at == T - 20
    assert {j.job_id: j.state for j in ledger.jobs()} == {job_id(s): s for s in JobState}
    assert ledger.get_job(job_id(JobState.DONE)).result == {"seg": "/results/5.dcm"}
    assert [e.state.value for e in ledger.events(job_id(JobState.RUNNING))] == [
        "READY",
        "RUNNING",
        "RUNNING",
    ]
    assert len(ledger.quarantined()) == 2
    ledger.close()


def test_the_dashboard_shows_the_jobs_of_an_upgraded_first_release_ledger(
    database_url: str, tmp_path: Path
) -> None:
    first_release_ledger(database_url)
    fill(database_url, first_release_rows())
    ledger = Ledger(database_url)
    ledger.create_schema()  # what `pacs-ai db upgrade` runs
    settings = validate_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "ledger_url": database_url,
            "broker_url": "redis://127.0.0.1:1/0",
            "monitor": {"host": "127.0.0.1", "port": free_port()},
        }
    )
    server = MonitorServer(settings, ledger, inspector=None)
    server.start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        listed = call(f"{url}/api/jobs?limit=100")
        failed = call(f"{url}/api/jobs/{job_id(JobState.FAILED)}")
        delivering = call(f"{url}/api/jobs/{job_id(JobState.DELIVERING)}")
        page = call(f"{url}/")
    finally:
        server.stop()
        ledger.close()

    assert listed.status == 200, listed.text
    shown = {job["job_id"]: job["state"] for job in listed.json()["jobs"]}
    expected = {job_id(s): s.value for s in JobState}
    expected[job_id(JobState.FAILED)] = "DISCARDED"  # an operator discarded it
    assert shown == expected
    assert failed.status == 200
    assert failed.json()["discarded"]["by"] == "alice"
    assert [q["stage"] for q in failed.json()["quarantine"]] == ["model"]
    assert [e["state"] for e in failed.json()["events"]] == ["READY", "FAILED"]
    assert [item["state"] for item in delivering.json()["outbox"]] == ["PENDING"]
    assert page.status == 200
    assert all(job[:8] in page.text for job in expected)


def test_serve_and_worker_refuse_an_older_ledger_and_the_printed_command_lets_serve_start(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    data_dir = tmp_path / "data"
    ledger_url = f"sqlite:///{data_dir / 'ledger.sqlite3'}"
    data_dir.mkdir()
    migrate(ledger_url, "0001")
    port = free_port()
    config = write_config(
        tmp_path / "etc" / "pacs ai.yaml",  # a space: the printed command quotes it
        data_dir=str(data_dir),
        broker_url=redis_server.url,
        node={"host": "127.0.0.1", "port": port},
        monitor={"enabled": False},
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    serve = operator_runs(["pacs-ai", "serve", "--config", str(config)], cwd=elsewhere)
    worker = operator_runs(["pacs-ai", "worker", "--config", str(config)], cwd=elsewhere)
    hint = re.search(r"`(pacs-ai [^`]+)`", serve.stderr)
    assert hint is not None, serve.stderr
    fixed = operator_runs(shlex.split(hint.group(1)), cwd=elsewhere)
    node = PeerProcess(
        "pacs-ai serve",
        [PACS_AI, "serve", "--config", config],
        log_path=tmp_path / "serve.log",
        env={k: v for k, v in os.environ.items() if not k.startswith("PACS_AI_")},
        cwd=elsewhere,
    )
    node.start()
    try:
        wait_for(lambda: port_open(port), 120, "pacs-ai serve", process=node)
    finally:
        node.stop(timeout=30)

    assert serve.returncode == 1
    assert f"the ledger {ledger_url} is at schema revision 0001" in serve.stderr
    assert f"this release of pacs-ai runs revision {head_revision()}" in serve.stderr
    assert hint.group(1) == f"pacs-ai db upgrade --config {shlex.quote(str(config))}"
    assert worker.returncode == 1 and f"`{hint.group(1)}`" in worker.stderr
    assert fixed.returncode == 0, fixed.stderr
    assert f"upgraded from revision 0001 to {head_revision()} (head)" in fixed.stdout
