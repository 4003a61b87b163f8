"""Stage times and turnaround (one definition for the dashboard, status and /metrics)."""

from __future__ import annotations

import pytest

from core.jobs import JobEvent, JobState
from core.ledger import Delivery, Finished, stage_times
from monitor.charts import buckets, throughput_svg, turnaround_svg
from monitor.formatting import redact, seconds, when
from monitor.web.common import ENVIRONMENT

S = JobState


def events(*steps: tuple[JobState, float] | tuple[JobState, float, str]) -> list[JobEvent]:
    return [
        JobEvent("j", step[0], step[1], None, kind=step[2] if len(step) > 2 else "transition")
        for step in steps
    ]


def test_each_stage_runs_from_one_recorded_moment_to_the_next() -> None:
    history = events(
        (S.RECEIVING, 100.0),
        (S.READY, 112.0),
        (S.QUEUED, 112.1),
        (S.RUNNING, 113.0),
        (S.RUNNING, 113.5, "note"),
        (S.DELIVERING, 120.0),
        (S.DONE, 121.0),
    )

    times = stage_times(
        history,
        first_received=100.0,
        last_received=110.0,
        deliveries=[Delivery("SENT", 120.5), Delivery("SENT", 120.8)],
    )

    assert times.durations() == {
        "receive": 10.0,
        "complete": 2.0,
        "queue": 1.0,
        "infer": 7.0,
        "deliver": pytest.approx(0.8),
    }
    assert times.turnaround == 120.8 - 110.0
    assert times.finished == 121.0


def test_nothing_is_accepted_until_every_result_is_sent() -> None:
    history = events((S.READY, 1.0), (S.RUNNING, 2.0), (S.DELIVERING, 3.0))

    times = stage_times(
        history,
        first_received=0.0,
        last_received=0.5,
        deliveries=[Delivery("SENT", 3.5), Delivery("PENDING", None)],
    )

    assert times.accepted is None
    assert times.turnaround is None
    assert times.durations()["deliver"] is None
    assert times.finished is None


def test_a_retry_starts_a_new_run_but_keeps_the_original_completion() -> None:
    history = events(
        (S.RECEIVING, 0.0),
        (S.READY, 12.0),
        (S.QUEUED, 12.0),
        (S.RUNNING, 13.0),
        (S.FAILED, 14.0),
        (S.READY, 500.0),
        (S.QUEUED, 500.5),
        (S.RUNNING, 501.0),
        (S.DELIVERING, 510.0),
        (S.DONE, 511.0),
    )

    times = stage_times(
        history, first_received=0.0, last_received=10.0, deliveries=[Delivery("SENT", 510.5)]
    )

    assert (times.completed, times.ready, times.running) == (12.0, 500.0, 501.0)
    assert times.durations()["complete"] == 2.0
    assert times.durations()["queue"] == 1.0
    assert times.turnaround == 500.5


def test_results_sent_in_an_earlier_run_do_not_count_for_the_current_one() -> None:
    history = events(
        (S.READY, 10.0),
        (S.RUNNING, 11.0),
        (S.DELIVERING, 12.0),
        (S.DONE, 13.0),
        (S.READY, 100.0),
        (S.QUEUED, 100.0),
    )

    times = stage_times(
        history, first_received=0.0, last_received=99.0, deliveries=[Delivery("SENT", 12.5)]
    )

    assert times.ready == 100.0
    assert times.running is None
    assert times.accepted is None


def test_a_broker_refusal_within_a_run_does_not_start_a_new_one() -> None:
    history = events((S.READY, 10.0), (S.QUEUED, 10.0), (S.READY, 11.0), (S.QUEUED, 15.0))

    times = stage_times(history, first_received=0.0, last_received=5.0)

    assert (times.ready, times.queued) == (10.0, 10.0)


def test_values_are_escaped_and_uids_redacted_for_anonymous_visitors() -> None:
    page = ENVIRONMENT.from_string('<td title="{{ t }}">{{ v }}</td>{{ at }}')
    rendered = page.render(t='"><script>', v="<b>", at=when(0.0, now=0.0))
    assert rendered.startswith('<td title="&#34;&gt;&lt;script&gt;">&lt;b&gt;</td><time ')
    reason = "refused 1.2.840.113619.2.55.3 (see /spool/1.2.3.4/1.2.3.4.5/x.dcm)"
    assert redact(reason, show=False) == "refused [UID] (see /spool/[UID]/[UID]/x.dcm)"
    assert redact(reason, show=True) == reason
    assert [seconds(v) for v in (0.42, 5.0, 42.0, 200.0, 7300.0)] == [
        "0.42 s",
        "5.0 s",
        "42 s",
        "3 m 20 s",
        "2 h 01 m",
    ]


def test_the_charts_count_finished_runs_per_interval() -> None:
    now = 36_300.0  # in the middle of the last interval
    finished = [
        Finished(now - 30, "DONE", 10.0),
        Finished(now - 40, "DONE", 20.0),
        Finished(now - 50, "FAILED", None),
        Finished(now - 7 * 3600, "DONE", 5.0),  # outside the window
    ]

    series = buckets(finished, now=now, hours=6)

    assert len(series) == 36
    assert (series[-1].done, series[-1].failed) == (2, 1)
    assert series[-1].median == 15.0
    assert series[-1].p90 == 20.0
    assert sum(b.done for b in series) == 2
    assert "<rect" in throughput_svg(series)
    assert "<circle" in turnaround_svg(series)


def test_a_cpu_worker_reports_no_gpu_in_its_heartbeat() -> None:
    from core.ledger import WorkerStatus  # noqa: PLC0415
    from workers.runtime import gpu_status  # noqa: PLC0415

    assert gpu_status("cpu") == WorkerStatus()


def test_a_held_result_run_again_starts_a_new_run() -> None:
    history = events(
        (S.RECEIVING, 0.0),
        (S.READY, 12.0),
        (S.QUEUED, 12.0),
        (S.RUNNING, 13.0),
        (S.NEEDS_REVIEW, 14.0),
        (S.READY, 300.0),
        (S.QUEUED, 300.5),
        (S.RUNNING, 301.0),
        (S.DELIVERING, 310.0),
    )

    times = stage_times(history, first_received=0.0, last_received=10.0)

    assert (times.ready, times.running, times.delivering) == (300.0, 301.0, 310.0)
    assert times.durations()["infer"] == 9.0
