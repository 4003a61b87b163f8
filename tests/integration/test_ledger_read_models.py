"""The ledger's read models (what the dashboard, ``pacs-ai status``, the API and /metrics
show), on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.jobs import InstanceRecord, JobRecord, JobState, SeriesState
from core.ledger import (
    DISCARDED,
    DeliveryState,
    ItemKind,
    Ledger,
    NewItem,
    Outbox,
    Presence,
    WorkerStatus,
    counter_key,
    result_items,
)
from tests.support.databases import KINDS, throwaway_database

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(params=KINDS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    with throwaway_database(request.param, tmp_path) as url:
        instance = Ledger(url)
        instance.create_schema()
        try:
            yield instance
        finally:
            instance.close()


def receive(
    ledger: Ledger, series: str, *, count: int = 3, at: float = 100.0, modality: str = "CT"
) -> None:
    """``count`` instances of ``series`` arriving one second apart from ``at``."""
    ledger.record_instances(
        [
            InstanceRecord(
                sop_instance_uid=f"{series}.{n}",
                sop_class_uid=CT,
                series_instance_uid=series,
                study_instance_uid=f"{series}.0",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=f"/spool/{series}/{n}.dcm",
                size=1000,
                received_at=at + n,
                calling_ae="SCANNER",
                called_ae="PACSAI",
                peer="127.0.0.1:5000",
                modality=modality,
            )
            for n in range(count)
        ]
    )


def routed_job(ledger: Ledger, series: str, *, model: str = "ct-lungs") -> JobRecord:
    receive(ledger, series)
    ledger.set_series_state(series, SeriesState.ROUTED, completed_at=110.0)
    return ledger.open_job(
        ledger.get_series(series), route="chest", model_id=model, destinations=["pacs"], priority=5
    )


def delivered(ledger: Ledger, job: JobRecord) -> None:
    """Run ``job`` to DONE, its one result accepted by its destination."""
    for state in (JobState.QUEUED, JobState.RUNNING):
        ledger.transition(job.job_id, state, detail={"worker": "gpu0"})
    outbox = Outbox(ledger)
    files = [(f"{job.series_instance_uid}.9", CT, Path("/results/seg.dcm"))]
    outbox.add(
        result_items(
            job_id=job.job_id,
            series_uid=job.series_instance_uid,
            route=job.route,
            destinations=job.destinations,
            files=files,
        )
    )
    ledger.transition(job.job_id, JobState.DELIVERING)
    outbox.mark_sent([item.item_id for item in outbox.items(job_id=job.job_id)], status=0)
    ledger.transition(job.job_id, JobState.DONE)


def test_jobs_are_shown_newest_change_first_with_their_series_and_stage_times(
    ledger: Ledger,
) -> None:
    first = routed_job(ledger, "1.1")
    second = routed_job(ledger, "1.2")
    delivered(ledger, first)

    views = ledger.job_views()

    assert [v.job_id for v in views] == [first.job_id, second.job_id]
    done = views[0]
    assert (done.state, done.worker, done.route, done.model_id) == (
        "DONE",
        "gpu0",
        "chest",
        "ct-lungs",
    )
    assert (done.modality, done.calling_ae, done.instance_count) == ("CT", "SCANNER", 3)
    assert (done.series_uid, done.study_uid) == ("1.1", "1.1.0")
    assert done.times.durations()["receive"] == 2.0
    assert done.times.running is not None and done.times.accepted is not None
    assert done.times.turnaround is not None
    assert views[1].state == "READY" and views[1].times.running is None
    assert [v.job_id for v in ledger.job_views(states=["READY"])] == [second.job_id]


def test_a_discarded_failed_job_is_shown_discarded_until_it_changes_again(ledger: Ledger) -> None:
    job = routed_job(ledger, "2.1")
    ledger.transition(job.job_id, JobState.FAILED, reason="missing slices")
    failed_at = ledger.get_job(job.job_id).updated_at
    ledger.record_discard(job.job_id, actor="ops", reason="bad scan", at=failed_at)

    [view] = ledger.job_views()
    [only_discarded] = ledger.job_views(states=[DISCARDED])
    counted = ledger.job_counts()
    ledger.transition(job.job_id, JobState.READY, reset_attempts=True)
    [retried] = ledger.job_views()

    assert view.state == DISCARDED and view.failed
    assert view.discard is not None and (view.discard.actor, view.discard.reason) == (
        "ops",
        "bad scan",
    )
    assert view.reason == "missing slices"
    assert counted == {(DISCARDED, "ct-lungs"): 1}
    assert only_discarded.job_id == job.job_id
    assert ledger.job_views(states=[JobState.FAILED.value, DISCARDED]) == []
    assert retried.state == "READY" and retried.discard is None
    assert ledger.job_counts() == {("READY", "ct-lungs"): 1}


def test_a_jobs_detail_has_its_events_its_outbox_items_and_its_own_quarantine_records(
    ledger: Ledger,
) -> None:
    job = routed_job(ledger, "3.1")
    other = routed_job(ledger, "3.2", model="other")
    delivered(ledger, job)
    ledger.record_quarantine(
        stage="job", reason="r1", path="/q/1", series_uid="3.1", job_id=job.job_id
    )
    ledger.record_quarantine(
        stage="job", reason="r2", path="/q/2", series_uid="3.2", job_id=other.job_id
    )

    detail = ledger.job_detail(job.job_id)

    assert detail is not None
    assert detail.job.job_id == job.job_id and detail.job.state == "DONE"
    assert [e.state for e in detail.events if e.is_transition] == [
        JobState.RECEIVING,
        JobState.READY,
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.DELIVERING,
        JobState.DONE,
    ]
    assert [(i.destination, i.state) for i in detail.outbox] == [("pacs", DeliveryState.SENT)]
    assert [q.reason for q in detail.quarantine] == ["r1"]
    assert ledger.job_detail("0" * 32) is None


def test_waiting_jobs_and_when_they_were_queued_are_read_per_model_and_job(ledger: Ledger) -> None:
    queued = routed_job(ledger, "4.1")
    routed_job(ledger, "4.2")
    ledger.transition(queued.job_id, JobState.QUEUED)
    updated = ledger.get_job(queued.job_id).updated_at

    assert ledger.waiting_jobs() == {"ct-lungs": 1}
    assert ledger.jobs_updated_at([queued.job_id, "0" * 32]) == {queued.job_id: updated}
    assert ledger.first_instance_paths(["4.1", "9.9"]) == {"4.1": "/spool/4.1/0.dcm"}


def test_workers_are_shown_alive_silent_or_stopped_with_what_they_last_reported(
    ledger: Ledger,
) -> None:
    status = WorkerStatus(gpu_name="H200", gpu_memory_used=1e9, current_job="j", jobs_done=4)
    for name in ("busy", "gone"):
        ledger.worker_heartbeat(
            name, host="h", pid=1, device="cuda:0", models=["ct-lungs"], status=status
        )
    ledger.worker_heartbeat("quiet", host="h", pid=2, device="cpu", models=["ct-lungs"])
    Presence(ledger).worker_stopped("gone")
    now = max(w.heartbeat_at for w in ledger.workers())

    shown = {w.name: w for w in ledger.worker_views(now=now, lost_after=60.0)}
    later = {w.name: w.state for w in ledger.worker_views(now=now + 61.0, lost_after=60.0)}

    assert {name: w.state for name, w in shown.items()} == {
        "busy": "alive",
        "quiet": "alive",
        "gone": "stopped",
    }
    assert later == {"busy": "silent", "quiet": "silent", "gone": "stopped"}
    assert shown["busy"].status == status and shown["busy"].models == ("ct-lungs",)
    assert shown["quiet"].status == WorkerStatus()
    assert shown["gone"].status.current_job is None, "a stopped worker runs nothing"
    assert [w.name for w in ledger.worker_views(now=now, lost_after=60.0)][-1] == "gone"
    assert ledger.worker_views(now=now + 2 * 86_400, lost_after=60.0) == []


def test_destination_activity_counts_waiting_and_given_up_items_and_keeps_the_last_error(
    ledger: Ledger,
) -> None:
    outbox = Outbox(ledger)
    outbox.add(
        NewItem(
            destination="pacs",
            kind=ItemKind.RESULT,
            series_uid="5.1",
            route="chest",
            sop_instance_uid=f"5.1.{n}",
            sop_class_uid=CT,
            path=f"/r/{n}",
        )
        for n in range(4)
    )
    sent, dead, rejected, _waiting = (i.item_id for i in outbox.items(destination="pacs"))
    outbox.mark_sent([sent], status=0, now=200.0)
    outbox.mark_failed(dead, state=DeliveryState.DEAD, status=None, error="refused", now=300.0)
    outbox.mark_failed(
        rejected, state=DeliveryState.REJECTED, status=0xA900, error="bad class", now=400.0
    )

    [pacs, viewer] = ledger.destination_activity(["viewer"])

    assert (pacs.name, pacs.backlog, pacs.dead, pacs.rejected) == ("pacs", 1, 1, 1)
    assert pacs.last_success_at == 200.0
    assert (pacs.last_error, pacs.last_status, pacs.last_error_at) == ("bad class", 0xA900, 400.0)
    assert (viewer.name, viewer.backlog, viewer.last_success_at, viewer.last_error) == (
        "viewer",
        0,
        None,
        None,
    )


def test_finished_runs_carry_their_turnaround_and_done_runs_their_stage_times(
    ledger: Ledger,
) -> None:
    done = routed_job(ledger, "6.1")
    failed = routed_job(ledger, "6.2")
    delivered(ledger, done)
    ledger.transition(failed.job_id, JobState.FAILED, reason="no lungs")

    finished = ledger.finished_since(0.0)
    transitions = ledger.done_transitions(after=0.0)
    [run] = ledger.done_runs(transitions)

    assert sorted(f.state for f in finished) == ["DONE", "FAILED"]
    [turnaround] = [f.turnaround for f in finished if f.state == "DONE"]
    assert turnaround is not None and turnaround > 0
    assert [job_id for job_id, _at in transitions] == [done.job_id]
    assert (run.job_id, run.model_id, run.route) == (done.job_id, "ct-lungs", "chest")
    assert run.times.turnaround == turnaround
    assert ledger.done_runs([("0" * 32, 1.0)]) == []
    assert ledger.done_transitions(after=transitions[0][1]) == []


def test_what_was_set_aside_is_listed_newest_first_and_counted_by_kind(ledger: Ledger) -> None:
    receive(ledger, "7.1", modality="MR")
    ledger.set_series_state("7.1", SeriesState.UNROUTED, "no rule matched MR")
    receive(ledger, "7.2")
    ledger.set_series_state("7.2", SeriesState.ROUTED)
    ledger.record_not_applicable(
        ledger.get_series("7.2"),
        route="chest",
        model_id="ct-lungs",
        destinations=[],
        priority=5,
        reason="too few slices",
    )
    ledger.record_quarantine(stage="receive", reason="malformed", path="/q/a", at=1.0)
    ledger.record_quarantine(stage="identity", reason="reused UID", path="/q/b", at=2.0)
    ledger.record_quarantine(stage="job", reason="model crashed", path="/q/c", at=3.0)

    aside = ledger.set_aside(limit=10)

    assert aside.series_counts == {"UNROUTED": 1, "ROUTED": 1}
    assert [(s.series_instance_uid, s.state, s.reason) for s in aside.not_routed] == [
        ("7.1", SeriesState.UNROUTED, "no rule matched MR")
    ]
    assert [(j.series_uid, j.state, j.reason) for j in aside.not_applicable] == [
        ("7.2", "NOT_APPLICABLE", "too few slices")
    ]
    assert aside.quarantine_counts == {"receive": 1, "identity": 1, "job": 1}
    assert [q.reason for q in aside.refused] == ["reused UID", "malformed"]
    assert all(q.at_the_door for q in aside.refused)
    assert [q.reason for q in aside.quarantined] == ["model crashed"]
    assert (aside.refused_count, aside.quarantined_count) == (2, 1)


def test_audit_entries_are_read_newest_first_by_job_or_by_action(ledger: Ledger) -> None:
    ledger.record_audit(actor="ana", role="admin", action="login", outcome="ok", at=1.0)
    ledger.record_audit(
        actor="ana",
        role="admin",
        action="retry",
        outcome="refused",
        job_id="j1",
        detail={"why": "not failed", "reason": ""},
        remote="10.0.0.5",
        at=2.0,
    )

    entries = ledger.audit_entries()

    assert [(e.actor, e.action, e.outcome) for e in entries] == [
        ("ana", "retry", "refused"),
        ("ana", "login", "ok"),
    ]
    assert json.loads(entries[0].detail or "") == {"why": "not failed"}
    assert entries[0].remote == "10.0.0.5" and entries[0].job_id == "j1"
    assert [e.action for e in ledger.audit_entries(job_id="j1")] == ["retry"]
    assert [e.action for e in ledger.audit_entries(action="login")] == ["login"]
    assert len(ledger.audit_entries(limit=1)) == 1


def test_counters_and_series_counts_are_read_for_metrics(ledger: Ledger) -> None:
    receive(ledger, "8.1", count=2)
    receive(ledger, "8.1", count=1)  # the first instance again

    counters = ledger.counters(["instances_received", "bytes_received"])

    labels = {"calling_ae": "SCANNER", "sop_class_uid": CT}
    assert counters == {
        counter_key("instances_received", **labels): 3.0,
        counter_key("bytes_received", **labels): 3000.0,
    }
    assert ledger.series_counts() == {"RECEIVING": 1}
    assert ledger.quarantine_counts() == {}


def test_the_counts_kept_with_each_change_match_a_count_of_the_rows(ledger: Ledger) -> None:
    done = routed_job(ledger, "9.1")
    delivered(ledger, done)
    rerun = routed_job(ledger, "9.2")
    ledger.transition(rerun.job_id, JobState.QUEUED)
    ledger.transition(rerun.job_id, JobState.RUNNING)
    receive(ledger, "9.2", count=1, at=500.0)  # late: the job runs again when it ends
    ledger.open_job(
        ledger.get_series("9.2"), route="chest", model_id="ct-lungs", destinations=[], priority=5
    )
    ledger.transition(rerun.job_id, JobState.FAILED, reason="out of memory")
    receive(ledger, "9.1", count=4, at=600.0)  # sent again: the DONE job is re-opened
    ledger.set_series_state("9.1", SeriesState.ROUTED)
    ledger.open_job(
        ledger.get_series("9.1"), route="chest", model_id="ct-lungs", destinations=[], priority=5
    )
    ledger.record_not_applicable(
        ledger.get_series("9.1"),
        route="chest",
        model_id="other",
        destinations=[],
        priority=5,
        reason="no lungs",
    )
    receive(ledger, "9.3", modality="MR")
    ledger.set_series_state("9.3", SeriesState.UNROUTED, "no rule")
    kept = (ledger.job_counts(), ledger.series_counts())

    ledger.recount_states()

    assert kept == (ledger.job_counts(), ledger.series_counts())
    assert kept == (
        {("READY", "ct-lungs"): 2, ("NOT_APPLICABLE", "other"): 1},
        {"ROUTED": 1, "RECEIVING": 1, "UNROUTED": 1},
    )
