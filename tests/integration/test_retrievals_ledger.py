"""Retrievals in the ledger, on SQLite and PostgreSQL: their studies in order, one runner
at a time, a stopped one resumable, and progress counted from the jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.jobs import InstanceRecord, JobState
from core.ledger import (
    Ledger,
    RetrievalBusyError,
    RetrievalRecord,
    RetrievalState,
    StudyPull,
)
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
