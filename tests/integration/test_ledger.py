"""The job ledger on SQLite (the default) and on a real PostgreSQL server."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from core.jobs import InstanceRecord, JobState, SeriesState
from core.ledger import InvalidTransitionError, Ledger, Presence, UnknownJobError
from tests.support.databases import migrate
from tests.support.missing import skip_locally_fail_in_ci

POSTGRES_ADMIN_URL = os.environ.get(
    "PACS_AI_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "sqlite":
        instance = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
        instance.create_schema()
        yield instance
        instance.close()
        return
    yield from _postgres_ledger()


def _postgres_ledger() -> Iterator[Ledger]:
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"pacs_ai_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        message = f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc.orig}"
        skip_locally_fail_in_ci(message)
    instance = Ledger(POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    instance.create_schema()
    try:
        yield instance
    finally:
        instance.close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def instance(sop: str, *, series: str = "1.2.3.2", at: float | None = None) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_instance_uid=series,
        study_instance_uid="1.2.3.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"/spool/{sop}.dcm",
        size=1000,
        received_at=time.time() if at is None else at,
        calling_ae="SCANNER",
        called_ae="PACSAI",
        peer="127.0.0.1:5000",
        modality="CT",
    )


def test_received_instances_form_a_series_that_counts_resends_separately(ledger: Ledger) -> None:
    ledger.record_instances([instance("1.2.3.3.1", at=100.0), instance("1.2.3.3.2", at=101.0)])
    ledger.record_instances([instance("1.2.3.3.2", at=102.0), instance("1.2.3.3.3", at=103.0)])

    series = ledger.get_series("1.2.3.2")
    assert (series.instance_count, series.resent_count) == (3, 1)
    assert (series.first_received_at, series.last_received_at) == (100.0, 103.0)
    assert series.state is SeriesState.RECEIVING
    stored = {i.sop_instance_uid: i.receive_count for i in ledger.series_instances("1.2.3.2")}
    assert stored == {"1.2.3.3.1": 1, "1.2.3.3.2": 2, "1.2.3.3.3": 1}


def test_a_series_is_quiet_only_after_its_last_instance(ledger: Ledger) -> None:
    ledger.record_instances([instance("1.2.3.3.1", at=100.0), instance("1.2.3.3.2", at=110.0)])

    assert ledger.quiet_series(last_received_before=105.0) == []
    assert [s.series_instance_uid for s in ledger.quiet_series(last_received_before=110.0)] == [
        "1.2.3.2"
    ]


def test_every_job_state_change_is_recorded_with_its_time_and_reason(ledger: Ledger) -> None:
    ledger.record_instances([instance("1.2.3.3.1", at=100.0)])
    series = ledger.get_series("1.2.3.2")

    job = ledger.open_job(
        series, route="chest-ct", model_id="ct-lungs", destinations=["pacs"], priority=5
    )
    for state in (JobState.QUEUED, JobState.RUNNING, JobState.DELIVERING, JobState.DONE):
        ledger.transition(job.job_id, state, reason=f"to {state}")

    events = ledger.events(job.job_id)
    assert [e.state for e in events] == [
        JobState.RECEIVING,
        JobState.READY,
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.DELIVERING,
        JobState.DONE,
    ]
    assert events[0].at == 100.0
    assert all(a.at <= b.at for a, b in pairwise(events))
    assert events[-1].reason == "to DONE"
    assert ledger.get_job(job.job_id).destinations == ("pacs",)


def test_a_job_refuses_a_transition_its_state_does_not_lead_to(ledger: Ledger) -> None:
    ledger.record_instances([instance("1.2.3.3.1")])
    job = ledger.open_job(
        ledger.get_series("1.2.3.2"), route="r", model_id="m", destinations=[], priority=5
    )

    with pytest.raises(InvalidTransitionError, match="cannot go from READY to DONE"):
        ledger.transition(job.job_id, JobState.DONE)
    with pytest.raises(UnknownJobError, match="no job nope"):
        ledger.transition("nope", JobState.QUEUED)


def test_a_series_received_again_reruns_its_job_instead_of_adding_one(ledger: Ledger) -> None:
    ledger.record_instances([instance("1.2.3.3.1")])
    first = ledger.open_job(
        ledger.get_series("1.2.3.2"), route="r", model_id="m", destinations=[], priority=5
    )
    for state in (JobState.QUEUED, JobState.RUNNING, JobState.FAILED):
        ledger.transition(first.job_id, state, reason="boom" if state is JobState.FAILED else None)

    ledger.record_instances([instance("1.2.3.3.2")])
    again = ledger.open_job(
        ledger.get_series("1.2.3.2"), route="r", model_id="m", destinations=[], priority=5
    )

    assert again.job_id == first.job_id
    assert again.state is JobState.READY
    assert again.reason is None
    assert len(ledger.jobs(series_uid="1.2.3.2")) == 1


def test_failed_data_is_listed_in_the_quarantine_with_its_reason(ledger: Ledger) -> None:
    ledger.record_quarantine(stage="receive", reason="truncated", path="/q/1", calling_ae="X")

    [entry] = ledger.quarantined()
    assert (entry.stage, entry.reason, entry.path, entry.calling_ae) == (
        "receive",
        "truncated",
        "/q/1",
        "X",
    )


def test_a_worker_heartbeat_lists_its_warm_models(ledger: Ledger) -> None:
    ledger.worker_heartbeat("w1", host="h", pid=1, device="cpu", models=["ct-lungs"])
    ledger.worker_heartbeat("w1", host="h", pid=1, device="cpu", models=["ct-lungs", "x"])

    [worker] = ledger.workers()
    assert worker.models == ("ct-lungs", "x")
    assert worker.heartbeat_at >= worker.started_at


def test_a_note_records_a_fact_without_being_mistaken_for_a_state_change(ledger: Ledger) -> None:
    ledger.record_instances([instance("1.2.3.3.1")])
    job = ledger.open_job(
        ledger.get_series("1.2.3.2"), route="r", model_id="m", destinations=[], priority=5
    )
    ledger.transition(job.job_id, JobState.QUEUED)

    ledger.note(job.job_id, "backend tensorrt/fp16 skipped: no GPU")

    *_, queued, note = ledger.events(job.job_id)
    assert (queued.state, queued.is_transition) == (JobState.QUEUED, True)
    assert (note.state, note.is_transition, note.reason) == (
        JobState.QUEUED,
        False,
        "backend tensorrt/fp16 skipped: no GPU",
    )
    assert ledger.get_job(job.job_id).state is JobState.QUEUED


def test_a_job_is_not_rerun_when_its_series_completes_again_without_new_instances(
    ledger: Ledger,
) -> None:
    ledger.record_instances([instance("1.2.3.3.1")])
    job = ledger.open_job(
        ledger.get_series("1.2.3.2"), route="r", model_id="m", destinations=[], priority=5
    )
    for state in (JobState.QUEUED, JobState.RUNNING, JobState.DELIVERING, JobState.DONE):
        ledger.transition(job.job_id, state)

    again = ledger.open_job(
        ledger.get_series("1.2.3.2"), route="r", model_id="m", destinations=[], priority=5
    )

    assert again.state is JobState.DONE
    assert [e.state for e in ledger.events(job.job_id)][-1] is JobState.DONE


def test_instances_arriving_while_a_job_runs_make_it_run_again_when_it_ends(ledger: Ledger) -> None:
    ledger.record_instances([instance("1.2.3.3.1", at=100.0)])
    job = ledger.open_job(
        ledger.get_series("1.2.3.2"), route="r", model_id="m", destinations=[], priority=5
    )
    ledger.transition(job.job_id, JobState.QUEUED)
    ledger.transition(job.job_id, JobState.RUNNING, detail={"worker": "w1"})
    ledger.record_instances([instance("1.2.3.3.2", at=200.0)])

    in_flight = ledger.open_job(
        ledger.get_series("1.2.3.2"), route="r", model_id="m", destinations=[], priority=5
    )
    assert (in_flight.state, in_flight.rerun_pending, in_flight.worker) == (
        JobState.RUNNING,
        True,
        "w1",
    )
    ledger.transition(job.job_id, JobState.DELIVERING)
    ended = ledger.transition(job.job_id, JobState.DONE)

    assert (ended.state, ended.rerun_pending) == (JobState.READY, False)
    transitions = [e.state for e in ledger.events(job.job_id) if e.is_transition]
    assert transitions[-2:] == [JobState.DONE, JobState.READY]


def test_studies_track_their_series_and_the_arrival_of_the_newest(ledger: Ledger) -> None:
    ledger.record_instances([instance("1.2.3.3.1", series="1.2.3.2", at=100.0)])
    ledger.record_instances(
        [
            instance("1.2.3.4.1", series="1.2.3.4", at=150.0),
            instance("1.2.3.3.2", series="1.2.3.2", at=160.0),
        ]
    )

    study = ledger.get_study("1.2.3.1")
    assert (
        study.series_count,
        study.first_received_at,
        study.last_new_series_at,
        study.last_received_at,
    ) == (2, 100.0, 150.0, 160.0)
    assert [s.series_instance_uid for s in ledger.series_of_study("1.2.3.1")] == [
        "1.2.3.2",
        "1.2.3.4",
    ]


def test_a_sop_instance_uid_reused_in_another_study_is_kept_apart_never_mixed(
    ledger: Ledger,
) -> None:
    first = instance("1.9.1", series="1.2.3.2")
    reused = dataclasses.replace(
        instance("1.9.1", series="1.2.4.2"), study_instance_uid="1.2.4.1", path="/spool/other.dcm"
    )
    neighbour = dataclasses.replace(
        instance("1.9.2", series="1.2.4.2"), study_instance_uid="1.2.4.1"
    )

    ledger.record_instances([first])
    ledger.record_instances([reused, neighbour])

    assert [(i.sop_instance_uid, i.path) for i in ledger.series_instances("1.2.3.2")] == [
        ("1.9.1", "/spool/1.9.1.dcm")
    ]
    assert [i.sop_instance_uid for i in ledger.series_instances("1.2.4.2")] == ["1.9.2"]
    (conflict,) = ledger.quarantined()
    assert (conflict.stage, conflict.path, conflict.series_uid) == (
        "identity",
        "/spool/other.dcm",
        "1.2.4.2",
    )
    assert "already received in study 1.2.3.1, series 1.2.3.2" in conflict.reason


def test_a_series_instance_uid_reused_in_another_study_is_kept_apart(ledger: Ledger) -> None:
    ledger.record_instances([instance("1.9.1", series="1.2.3.2")])
    intruder = dataclasses.replace(instance("1.9.2", series="1.2.3.2"), study_instance_uid="1.7")

    ledger.record_instances([intruder])

    assert [i.sop_instance_uid for i in ledger.series_instances("1.2.3.2")] == ["1.9.1"]
    (conflict,) = ledger.quarantined()
    assert "Series Instance UID 1.2.3.2 already belongs to study 1.2.3.1" in conflict.reason


def test_an_instance_sent_again_to_its_own_series_is_a_resend_not_a_conflict(
    ledger: Ledger,
) -> None:
    ledger.record_instances([instance("1.9.1")])
    ledger.record_instances([dataclasses.replace(instance("1.9.1"), path="/spool/again.dcm")])

    (stored,) = ledger.series_instances("1.2.3.2")
    assert (stored.receive_count, stored.path) == (2, "/spool/again.dcm")
    assert ledger.quarantined() == []


def test_an_identity_conflict_recorded_again_stays_one_quarantine_record(ledger: Ledger) -> None:
    ledger.record_instances([instance("1.9.1", series="1.2.3.2")])
    reused = dataclasses.replace(instance("1.9.1", series="1.2.3.5"), path="/spool/other.dcm")

    ledger.record_instances([reused])
    ledger.record_instances([reused])  # as the start-up recovery does after a restart

    assert len(ledger.quarantined()) == 1


def test_a_ledger_made_by_the_previous_release_is_upgraded_in_place(ledger: Ledger) -> None:
    ledger.record_instances([instance("1.9.1", at=100.0)])
    ledger.worker_heartbeat("w", host="h", pid=1, device="cpu", models=["m"])
    migrate(ledger.url, "0001", down=True)  # back to schema 1, the first release's
    with ledger.engine.begin() as conn:  # which had no Alembic revision
        conn.execute(text("DROP TABLE alembic_version"))

    upgraded = Ledger(ledger.url)
    upgraded.create_schema()
    upgraded.create_schema()  # idempotent
    Presence(upgraded).worker_stopped("w")
    Presence(upgraded).node_heartbeat("n", host="h", pid=2, ae_title="PACSAI", port=104)

    with upgraded.engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM schema_info")).scalar_one() == 2
    series = upgraded.get_series("1.2.3.2")
    assert series.receiving_since is None and series.run_started_at == 100.0
    assert [node.name for node in Presence(upgraded).nodes()] == ["n"]
    upgraded.close()
