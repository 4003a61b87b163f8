"""Each model's results week by week (:mod:`core.ledger.drift`), on SQLite and on a real
PostgreSQL server: jobs finished across several ISO weeks, their volumes and probabilities
read back as weekly quartiles."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core.jobs import JobRecord, JobState
from core.ledger import Ledger
from core.ledger.drift import week_start
from tests.support import drift as support
from tests.support.databases import KINDS, throwaway_database
from tests.support.drift import classification, segmentation

WEEK = 7 * 86_400.0
#: Thursday 3 December 2026, noon UTC: ISO week 2026-W49, which began on Monday 30 November.
NOW = datetime(2026, 12, 3, 12, tzinfo=UTC).timestamp()


@pytest.fixture(params=KINDS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    with throwaway_database(request.param, tmp_path) as url:
        instance = Ledger(url)
        instance.create_schema()
        try:
            yield instance
        finally:
            instance.close()


def finished_job(
    ledger: Ledger, result: dict[str, Any], *, weeks_ago: int, **kwargs: Any
) -> JobRecord:
    """A job that ended on the Tuesday of the ISO week ``weeks_ago`` weeks before
    :data:`NOW`'s."""
    ended = week_start(NOW) - weeks_ago * WEEK + 86_400.0 + 3600.0
    return support.finished_job(ledger, result, ended=ended, **kwargs)


def test_volumes_are_read_back_as_quartiles_per_iso_week_and_a_shift_shows_in_the_median(
    ledger: Ledger,
) -> None:
    for liver in (1000.0, 1100.0, 1200.0, 1300.0, 1400.0):
        finished_job(ledger, segmentation(liver, 200.0), weeks_ago=3)
    for liver in (1500.0, 1600.0, 1700.0, 1800.0, 1900.0):
        finished_job(ledger, segmentation(liver, 200.0), weeks_ago=1)

    reading = ledger.model_drift(now=NOW, weeks=4)

    assert reading.week_names == ["2026-W46", "2026-W47", "2026-W48", "2026-W49"]
    assert (reading.jobs_read, reading.truncated) == (10, False)
    [model] = reading.models
    assert (model.model_id, model.version, model.shadow) == ("ct-organs", "1.0", False)
    assert [w.week for w in model.weeks] == ["2026-W46", "2026-W48"]
    assert model.segments == ["total", "liver", "spleen"]
    before, after = model.weeks
    assert before.volumes["total"].as_dict() == {
        "n": 5,
        "p5": 1220.0,
        "q1": 1300.0,
        "median": 1400.0,
        "q3": 1500.0,
        "p95": 1580.0,
        "min": 1200.0,
        "max": 1600.0,
    }
    assert (before.volumes["liver"].q1, before.volumes["liver"].median) == (1100.0, 1200.0)
    assert before.volumes["spleen"].median == 200.0
    assert after.volumes["total"].median - before.volumes["total"].median == 500.0
    assert (after.volumes["total"].q1, after.volumes["total"].q3) == (1800.0, 2000.0)


def test_classification_probabilities_and_the_top_class_share_are_per_week(
    ledger: Ledger,
) -> None:
    finished_job(ledger, classification(0.1, 0.2, 0.3, 0.9), weeks_ago=2, model="cxr")
    finished_job(ledger, classification(0.7, 0.8, 0.6, 0.95), weeks_ago=0, model="cxr")

    [model] = ledger.model_drift(now=NOW, weeks=3).models

    assert (model.model_id, model.version, model.classes) == ("cxr", "2.1", ["normal", "pneumonia"])
    early, late = model.weeks
    assert (early.week, early.jobs, early.images) == ("2026-W47", 1, 4)
    pneumonia = early.probabilities["pneumonia"]
    assert (pneumonia.q1, pneumonia.median, pneumonia.q3) == pytest.approx((0.175, 0.25, 0.45))
    assert early.top_class == {"normal": 0.75, "pneumonia": 0.25}
    assert late.top_class == {"normal": 0.0, "pneumonia": 1.0}
    assert late.probabilities["normal"].median == pytest.approx(0.25)
    assert early.volumes == {} and late.volumes == {}


def test_only_done_jobs_count_shadow_ones_apart_and_versions_apart_within_the_window(
    ledger: Ledger,
) -> None:
    finished_job(ledger, segmentation(1000.0, 100.0), weeks_ago=0)
    finished_job(ledger, segmentation(3000.0, 100.0), weeks_ago=0, shadow=True)
    finished_job(ledger, segmentation(2000.0, 100.0, version="1.1"), weeks_ago=0)
    finished_job(ledger, segmentation(9000.0, 100.0), weeks_ago=0, state=JobState.NEEDS_REVIEW)
    finished_job(ledger, segmentation(9000.0, 100.0), weeks_ago=0, state=JobState.FAILED)
    finished_job(ledger, segmentation(9000.0, 100.0), weeks_ago=5)

    reading = ledger.model_drift(now=NOW, weeks=4)

    shown = {(m.version, m.shadow): m.weeks[0].volumes["total"].median for m in reading.models}
    assert shown == {("1.0", False): 1100.0, ("1.0", True): 3100.0, ("1.1", False): 2100.0}
    assert reading.jobs_read == 3


def test_the_newest_jobs_are_read_up_to_the_cap_and_the_reading_says_it_was_cut(
    ledger: Ledger,
) -> None:
    for weeks_ago, liver in ((2, 1000.0), (1, 2000.0), (0, 3000.0)):
        finished_job(ledger, segmentation(liver, 0.0), weeks_ago=weeks_ago)

    reading = ledger.model_drift(now=NOW, weeks=4, max_jobs=2)
    complete = ledger.model_drift(now=NOW, weeks=4, max_jobs=3)

    assert (reading.jobs_read, reading.truncated) == (2, True)
    assert [w.week for w in reading.models[0].weeks] == ["2026-W48", "2026-W49"]
    assert (complete.jobs_read, complete.truncated) == (3, False)


def test_an_empty_ledger_reads_as_no_models_and_a_bad_window_is_refused(ledger: Ledger) -> None:
    reading = ledger.model_drift(now=NOW)

    assert reading.models == [] and reading.jobs_read == 0
    assert len(reading.week_names) == 12 and reading.week_names[-1] == "2026-W49"
    with pytest.raises(ValueError, match="weeks: 1 to 104, not 0"):
        ledger.model_drift(now=NOW, weeks=0)
