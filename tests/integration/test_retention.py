"""Retention removes finished work after its time and keeps failures for an operator."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from core.jobs import JobState, SeriesState
from core.ledger import Ledger
from core.quarantine import INSTANCE_FILE, Quarantine, QuarantineEntry
from core.settings import Settings, validate_settings
from node_services.retention import RetentionSweeper
from tests.conftest import DicomFactory
from tests.support.spooling import spool

DAY = 86_400.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def settings_for(tmp_path: Path, **extra: Any) -> Settings:
    return validate_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "retention": {"done_days": 30, "unrouted_days": 7},
            **extra,
        }
    )


def spooled(settings: Settings, ledger: Ledger, files: list[Path]) -> str:
    return spool(settings.spool_dir, ledger, files)


def finish(ledger: Ledger, series_uid: str, final: JobState) -> None:
    job = ledger.open_job(
        ledger.get_series(series_uid), route="r", model_id="m", destinations=[], priority=5
    )
    states = [JobState.QUEUED, JobState.RUNNING] + (
        [JobState.DELIVERING] if final is JobState.DONE else []
    )
    for state in [*states, final]:
        ledger.transition(job.job_id, state)
    ledger.set_series_state(series_uid, SeriesState.ROUTED)


def folder_of(settings: Settings, ledger: Ledger, series_uid: str) -> Path:
    return Path(ledger.series_instances(series_uid)[0].path).parent


def test_done_series_are_removed_after_done_days_and_failed_ones_kept(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    settings = settings_for(tmp_path)
    ledger = Ledger(settings.resolved_ledger_url)
    ledger.create_schema()
    done = spooled(settings, ledger, dicom_factory.series(2))
    failed = spooled(settings, ledger, dicom_factory.series(2))
    finish(ledger, done, JobState.DONE)
    finish(ledger, failed, JobState.FAILED)
    clock = Clock()
    sweeper = RetentionSweeper(settings, ledger, clock=clock)

    clock.now += 29 * DAY
    assert sweeper.run_once() == []
    clock.now += 2 * DAY
    removed = sweeper.run_once()

    assert removed == [done]
    assert not folder_of(settings, ledger, done).exists()
    assert ledger.get_series(done).state is SeriesState.PURGED
    assert folder_of(settings, ledger, failed).is_dir()
    assert ledger.get_series(failed).state is SeriesState.ROUTED
    ledger.close()


def test_unrouted_series_are_kept_unless_the_policy_says_discard(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    keep = settings_for(tmp_path / "keep")
    discard = settings_for(tmp_path / "discard", routing={"unrouted": "discard"})
    for settings, expected_removed in ((keep, False), (discard, True)):
        ledger = Ledger(settings.resolved_ledger_url)
        ledger.create_schema()
        series = spooled(settings, ledger, dicom_factory.series(1, modality="MR"))
        ledger.set_series_state(series, SeriesState.UNROUTED, "no rule")
        clock = Clock()
        clock.now += 8 * DAY

        removed = RetentionSweeper(settings, ledger, clock=clock).run_once()

        assert (removed == [series]) is expected_removed
        assert folder_of(settings, ledger, series).exists() is not expected_removed
        ledger.close()


def test_refused_instances_lose_their_bytes_after_quarantine_days_but_keep_the_reason(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    quarantine = Quarantine(settings.quarantine_dir)
    refused = quarantine.put(
        QuarantineEntry(stage="receive", error_type="InvalidInputError", message="truncated"),
        data=b"bytes as received",
    )
    failed_job = quarantine.put(
        QuarantineEntry(stage="volume", error_type="InvalidInputError", message="gap"),
        data=b"kept until acted on",
    )
    clock = Clock()
    ledger = Ledger(settings.resolved_ledger_url)
    ledger.create_schema()
    sweeper = RetentionSweeper(settings, ledger, clock=clock)

    clock.now += 29 * DAY
    sweeper.run_once()
    assert (refused / INSTANCE_FILE).exists()

    clock.now += 2 * DAY
    sweeper.run_once()
    assert not (refused / INSTANCE_FILE).exists()
    record = json.loads((refused / "error.json").read_text())
    assert (record["message"], record["not_kept"]) == (
        "truncated",
        "the instance's bytes were removed by retention.quarantine_days",
    )
    assert (failed_job / INSTANCE_FILE).exists()
