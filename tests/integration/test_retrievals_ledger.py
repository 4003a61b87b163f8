"""Retrievals in the ledger, on SQLite and PostgreSQL: their studies in order, one runner
at a time, a stopped one resumable, and progress counted from the jobs."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from core.jobs import InstanceRecord, JobState
from core.ledger import (
    Ledger,
    RetrievalBusyError,
    RetrievalRecord,
    RetrievalState,
    StudyPull,
)
from core.ledger.retrievals import LEASE_SECONDS, runner_name
from core.ledger.schema import retrievals_table
from core.settings import validate_settings
from monitor.pulls import Pulls
from tests.support.databases import KINDS, throwaway_database

pytestmark = pytest.mark.peers


@pytest.fixture(params=KINDS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    with throwaway_database(request.param, tmp_path) as url:
        instance = Ledger(url)
        instance.create_schema()
        yield instance
        instance.close()


def backfill(ledger: Ledger, studies: list[str]) -> RetrievalRecord:
    record = ledger.create_retrieval(
        kind="backfill",
        source="pacs",
        models=["ct-lungs"],
        destinations=[],
        shadow=True,
        query={"study_date": "20240101-20240131"},
        actor="cli:test",
        key="k1",
        state=RetrievalState.STOPPED,
    )
    ledger.add_retrieval_studies(record.retrieval_id, studies)
    return record


def pulled_series(ledger: Ledger, study: str, series: str) -> None:
    ledger.record_instances(
        [
            InstanceRecord(
                sop_instance_uid=f"{series}.{n}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                series_instance_uid=series,
                study_instance_uid=study,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=f"/spool/{study}/{series}/{n}.dcm",
                size=100,
                received_at=time.time(),
                calling_ae="PACS",
                called_ae="PACSAI",
                peer="pacs",
                modality="CT",
            )
            for n in range(3)
        ],
        origin="retrieved",
    )


def test_studies_keep_their_order_and_are_added_once(ledger: Ledger) -> None:
    record = backfill(ledger, ["1.1", "1.2", "1.1"])
    assert ledger.add_retrieval_studies(record.retrieval_id, ["1.2", "1.3"]) == 1
    studies = ledger.retrieval_studies(record.retrieval_id)
    assert [(s.study_uid, s.position, s.state) for s in studies] == [
        ("1.1", 0, StudyPull.PENDING),
        ("1.2", 1, StudyPull.PENDING),
        ("1.3", 2, StudyPull.PENDING),
    ]
    assert ledger.retrievals(kinds=["backfill"], key="k1")[0].query == {
        "study_date": "20240101-20240131"
    }


def test_one_process_runs_a_retrieval_and_takes_over_from_one_that_died(ledger: Ledger) -> None:
    record = backfill(ledger, ["1.1"])
    ledger.claim_retrieval(record.retrieval_id, "host:1", stale_after=60)

    with pytest.raises(RetrievalBusyError, match="being run by host:1"):
        ledger.claim_retrieval(record.retrieval_id, "host:2", stale_after=60)
    taken = ledger.claim_retrieval(record.retrieval_id, "host:2", stale_after=0)

    assert (taken.state, taken.runner) == (RetrievalState.RUNNING, "host:2")


def test_a_study_stopped_mid_pull_is_pulled_again_from_its_start(ledger: Ledger) -> None:
    record = backfill(ledger, ["1.1", "1.2"])
    ledger.claim_retrieval(record.retrieval_id, "host:1", stale_after=60)
    ledger.set_retrieval_study(record.retrieval_id, "1.1", StudyPull.RETRIEVED, series_count=1)
    ledger.set_retrieval_study(record.retrieval_id, "1.2", StudyPull.RETRIEVING)
    assert ledger.studies_in_retrieval() == (frozenset({"1.2"}), frozenset({"1.1"}))

    ledger.finish_retrieval(record.retrieval_id, RetrievalState.STOPPED, "stopped")

    states = {s.study_uid: s.state for s in ledger.retrieval_studies(record.retrieval_id)}
    assert states == {"1.1": StudyPull.RETRIEVED, "1.2": StudyPull.PENDING}
    assert ledger.get_retrieval(record.retrieval_id).state == RetrievalState.STOPPED


def run_retrieval(ledger: Ledger, studies: list[str]) -> RetrievalRecord:
    record = ledger.create_retrieval(
        kind="run",
        source="pacs",
        models=["ct-lungs"],
        destinations=["pacs"],
        shadow=False,
        query={"by": "study"},
        actor="cli:test",
    )
    ledger.add_retrieval_studies(record.retrieval_id, studies)
    return record


def test_a_running_retrieval_whose_lease_lapsed_is_ended_as_interrupted_with_the_reason(
    ledger: Ledger,
) -> None:
    resumable = backfill(ledger, ["1.1", "1.2"])
    one_off = run_retrieval(ledger, ["2.1"])
    live = run_retrieval(ledger, ["3.1"])
    ledger.claim_retrieval(resumable.retrieval_id, "elsewhere:1", stale_after=60)
    ledger.claim_retrieval(one_off.retrieval_id, "elsewhere:2", stale_after=60)
    ledger.set_retrieval_study(resumable.retrieval_id, "1.1", StudyPull.RETRIEVING)
    ledger.set_retrieval_study(one_off.retrieval_id, "2.1", StudyPull.RETRIEVING)
    with ledger.engine.begin() as conn:  # their processes went silent 61 s ago
        conn.execute(update(retrievals_table).values(heartbeat_at=time.time() - 61))
    ledger.claim_retrieval(live.retrieval_id, "elsewhere:3", stale_after=60)

    ended = ledger.interrupt_stale_retrievals(stale_after=60)

    assert {r.retrieval_id: r.state for r in ended} == {
        resumable.retrieval_id: RetrievalState.STOPPED,
        one_off.retrieval_id: RetrievalState.FAILED,
    }
    stopped = ledger.get_retrieval(resumable.retrieval_id)
    assert stopped.runner is None
    assert stopped.reason is not None
    assert stopped.reason.startswith("interrupted: its process elsewhere:1 stopped renewing")
    assert stopped.reason.endswith("run again to resume")
    assert {
        (s.study_uid, s.state, s.reason) for s in ledger.retrieval_studies(resumable.retrieval_id)
    } == {
        ("1.1", StudyPull.PENDING, "interrupted while being pulled"),
        ("1.2", StudyPull.PENDING, None),
    }
    assert ledger.studies_in_retrieval() == (frozenset(), frozenset())
    assert ledger.get_retrieval(live.retrieval_id).state == RetrievalState.RUNNING
    assert not ledger.retrieval_heartbeat(resumable.retrieval_id, "elsewhere:1")
    assert not ledger.finish_retrieval(
        resumable.retrieval_id, RetrievalState.DONE, runner="elsewhere:1"
    )
    assert ledger.get_retrieval(resumable.retrieval_id).state == RetrievalState.STOPPED


def test_a_retrieval_whose_process_on_this_host_ended_is_taken_over_at_once(
    ledger: Ledger,
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record = backfill(ledger, ["1.1"])
    ledger.claim_retrieval(record.retrieval_id, runner_name(pid=gone.pid), stale_after=60)

    taken = ledger.claim_retrieval(record.retrieval_id, "elsewhere:9", stale_after=3600)

    assert (taken.state, taken.runner) == (RetrievalState.RUNNING, "elsewhere:9")


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(f"{socket.gethostname()}:pidns-1", id="another-pid-namespace"),
        pytest.param(socket.gethostname(), id="namespace-unknown"),
    ],
)
def test_a_runner_of_this_host_name_but_not_of_this_pid_namespace_is_judged_by_its_lease(
    ledger: Ledger, where: str
) -> None:
    # A container with host networking: the host's name, its own process ids. The pid
    # is of no process here, which says nothing of the process it names there.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record = backfill(ledger, ["1.1"])
    ledger.claim_retrieval(record.retrieval_id, f"{where}:{gone.pid}", stale_after=60)

    with pytest.raises(RetrievalBusyError, match="being run by"):
        ledger.claim_retrieval(record.retrieval_id, "elsewhere:9", stale_after=3600)
    assert ledger.interrupt_stale_retrievals(stale_after=3600) == []
    assert ledger.get_retrieval(record.retrieval_id).runner == f"{where}:{gone.pid}"


def test_a_runner_that_lost_its_lease_writes_nothing_of_the_study_it_was_pulling(
    ledger: Ledger,
) -> None:
    record = backfill(ledger, ["1.1"])
    rid = record.retrieval_id
    ledger.claim_retrieval(rid, "elsewhere:1", stale_after=60)
    ledger.set_retrieval_study(rid, "1.1", StudyPull.RETRIEVING, runner="elsewhere:1")
    ledger.claim_retrieval(rid, "elsewhere:2", stale_after=0)  # found stale, taken over
    ledger.set_retrieval_study(rid, "1.1", StudyPull.RETRIEVING, runner="elsewhere:2")

    written = ledger.set_retrieval_study(rid, "1.1", StudyPull.PENDING, runner="elsewhere:1")

    assert not written
    [study] = ledger.retrieval_studies(rid)
    assert study.state == StudyPull.RETRIEVING
    assert ledger.get_retrieval(rid).runner == "elsewhere:2"


def test_a_failed_study_is_pulled_again_on_resume_until_the_bound_with_its_reason_kept(
    ledger: Ledger,
) -> None:
    record = backfill(ledger, ["1.1", "1.2"])
    rid = record.retrieval_id

    def attempt(outcome: StudyPull, reason: str | None = None) -> None:
        ledger.claim_retrieval(rid, "elsewhere:1", stale_after=60, max_attempts=2)
        for study in ledger.retrieval_studies(rid, states=[StudyPull.PENDING]):
            ledger.set_retrieval_study(rid, study.study_uid, StudyPull.RETRIEVING)
            state = outcome if study.study_uid == "1.1" else StudyPull.RETRIEVED
            ledger.set_retrieval_study(rid, study.study_uid, state, reason=reason)
        ledger.finish_retrieval(rid, RetrievalState.DONE, runner="elsewhere:1")

    attempt(StudyPull.FAILED, "the PACS refused")
    ledger.claim_retrieval(rid, "elsewhere:1", stale_after=60, max_attempts=2)
    [again] = ledger.retrieval_studies(rid, states=[StudyPull.PENDING])
    assert (again.study_uid, again.attempts, again.reason) == ("1.1", 1, "the PACS refused")
    ledger.finish_retrieval(rid, RetrievalState.STOPPED, runner="elsewhere:1")
    attempt(StudyPull.FAILED, "refused again")
    attempt(StudyPull.FAILED, "never")

    studies = {s.study_uid: s for s in ledger.retrieval_studies(rid)}
    assert (studies["1.1"].state, studies["1.1"].attempts, studies["1.1"].reason) == (
        StudyPull.FAILED,
        2,
        "refused again",
    )
    assert (studies["1.2"].state, studies["1.2"].attempts) == (StudyPull.RETRIEVED, 0)


def test_only_failures_count_against_a_studys_retries_not_stops_or_interruptions(
    ledger: Ledger,
) -> None:
    record = backfill(ledger, ["1.1"])
    rid = record.retrieval_id
    for _interrupted in range(2):  # its process killed mid-pull, found stale
        ledger.claim_retrieval(rid, "elsewhere:1", stale_after=60, max_attempts=3)
        ledger.set_retrieval_study(rid, "1.1", StudyPull.RETRIEVING, runner="elsewhere:1")
        with ledger.engine.begin() as conn:
            conn.execute(update(retrievals_table).values(heartbeat_at=time.time() - 61))
        assert [r.retrieval_id for r in ledger.interrupt_stale_retrievals(stale_after=60)] == [rid]
    ledger.claim_retrieval(rid, "elsewhere:1", stale_after=60, max_attempts=3)
    ledger.set_retrieval_study(rid, "1.1", StudyPull.RETRIEVING, runner="elsewhere:1")
    ledger.set_retrieval_study(rid, "1.1", StudyPull.PENDING, runner="elsewhere:1")  # Ctrl-C
    ledger.finish_retrieval(rid, RetrievalState.STOPPED, runner="elsewhere:1")
    ledger.claim_retrieval(rid, "elsewhere:1", stale_after=60, max_attempts=3)
    ledger.set_retrieval_study(rid, "1.1", StudyPull.RETRIEVING, runner="elsewhere:1")
    ledger.set_retrieval_study(rid, "1.1", StudyPull.FAILED, reason="refused", runner="elsewhere:1")
    ledger.finish_retrieval(rid, RetrievalState.DONE, runner="elsewhere:1")

    ledger.claim_retrieval(rid, "elsewhere:1", stale_after=60, max_attempts=3)

    [study] = ledger.retrieval_studies(rid)
    assert (study.state, study.attempts, study.reason) == (StudyPull.PENDING, 1, "refused")


def test_a_routed_study_is_processed_once_all_its_jobs_have_ended(ledger: Ledger) -> None:
    record = backfill(ledger, ["1.1", "1.2"])
    for study in ("1.1", "1.2"):
        pulled_series(ledger, study, f"{study}.9")
        ledger.set_retrieval_study(record.retrieval_id, study, StudyPull.RETRIEVED)
    assert ledger.retrieval_claim("1.1") is not None
    for study in ("1.1", "1.2"):
        ledger.retrieval_study_routed(study)
        ledger.open_job(
            ledger.get_series(f"{study}.9"),
            route="backfill",
            model_id="ct-lungs",
            destinations=[],
            priority=9,
            shadow=True,
        )
    [job] = ledger.jobs(series_uid="1.1.9")
    for state in (JobState.QUEUED, JobState.RUNNING, JobState.DELIVERING, JobState.DONE):
        ledger.transition(job.job_id, state)

    progress = ledger.retrieval_progress(record.retrieval_id)

    assert (progress.total, progress.retrieved, progress.processed) == (2, 2, 1)
    assert progress.by_state == {StudyPull.ROUTED: 2}
    assert ledger.retrieval_claim("1.1") is None, "routed: the watcher is done with it"
    assert ledger.get_series("1.1.9").origin == "retrieved"
    assert ledger.get_job(job.job_id).shadow


def test_the_dashboard_and_status_never_show_a_retrieval_whose_process_died_as_running(
    ledger: Ledger, tmp_path: Path
) -> None:
    record = backfill(ledger, ["1.1"])
    ledger.claim_retrieval(record.retrieval_id, "elsewhere:1", stale_after=60)
    with ledger.engine.begin() as conn:  # its process went silent past the lease
        conn.execute(update(retrievals_table).values(heartbeat_at=time.time() - LEASE_SECONDS - 1))

    [shown] = Pulls(validate_settings({"data_dir": str(tmp_path)}), ledger).recent()

    assert shown.retrieval.state == RetrievalState.STOPPED
    assert shown.retrieval.reason is not None
    assert "interrupted: its process elsewhere:1 stopped renewing its lease" in (
        shown.retrieval.reason
    )
