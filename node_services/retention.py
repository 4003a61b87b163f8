"""Retention: spool data of finished work is removed after a while; failures are kept.

Every ``retention.sweep_interval_seconds`` the node removes the spool folder of

* a series whose jobs all ended DONE (or NOT_APPLICABLE: the model was not to run on it),
  and whose forwarded originals were all sent, more than ``retention.done_days`` ago (and
  the results those jobs wrote);
* an UNROUTED or DISCARDED series older than ``retention.unrouted_days``, when
  ``routing.unrouted`` is ``discard``.

A series with a FAILED job, anything in quarantine, and anything still in flight are
never removed: they wait for an operator. Removed series stay in the ledger as PURGED.

The bytes of instances refused at the door (quarantined by the receivers: malformed,
too large, reusing another series' UIDs) are removed ``retention.quarantine_days`` after
they arrived; their ``error.json`` and ledger row stay, so the refusal remains on record.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from core.files import atomic_write
from core.jobs import JobState, SeriesRecord, SeriesState
from core.ledger import DeliveryState, Ledger, Outbox
from core.periodic import Periodic
from core.quarantine import INSTANCE_FILE
from core.settings import Settings

logger = logging.getLogger(__name__)

_DAY = 86_400.0
#: Quarantine stages of instances refused at the door (see the module docstring).
_DOOR_STAGES = frozenset({"receive", "identity"})


class RetentionSweeper:
    def __init__(
        self, settings: Settings, ledger: Ledger, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self._outbox = Outbox(ledger)
        self._clock = clock
        self._loop = Periodic("retention", settings.retention.sweep_interval_seconds, self.run_once)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def run_once(self) -> list[str]:
        """Remove what the policy allows; return the Series Instance UIDs removed."""
        now = self._clock()
        retention = self.settings.retention
        removed: list[str] = []
        for series in self.ledger.list_series(
            states=[SeriesState.ROUTED],
            updated_before=now - retention.done_days * _DAY,
            limit=10_000,
        ):
            if self._finished(series, before=now - retention.done_days * _DAY):
                removed.append(self._remove(series, "all jobs done"))
        if self.settings.routing.unrouted == "discard":
            for series in self.ledger.list_series(
                states=[SeriesState.UNROUTED, SeriesState.DISCARDED],
                updated_before=now - retention.unrouted_days * _DAY,
                limit=10_000,
            ):
                removed.append(self._remove(series, "unrouted, routing.unrouted is discard"))
        # Nodes sharing the ledger each hold their own part of a series: the node whose
        # sweep purged it removed its part; each other node removes its own when it sees it.
        for series in self.ledger.list_series(states=[SeriesState.PURGED], limit=10_000):
            if self._folder(series).exists():
                self._remove_files(series)
        self._expire_refused_instances(before=now - retention.quarantine_days * _DAY)
        return removed

    def _expire_refused_instances(self, *, before: float) -> None:
        for kept in self.settings.quarantine_dir.glob(f"*/{INSTANCE_FILE}"):
            error_file = kept.parent / "error.json"
            try:
                record = json.loads(error_file.read_text())
            except (OSError, ValueError):
                continue  # not one of ours, or being written: leave it alone
            if record.get("stage") not in _DOOR_STAGES or float(record.get("at", 0.0)) >= before:
                continue
            kept.unlink(missing_ok=True)
            record["not_kept"] = "the instance's bytes were removed by retention.quarantine_days"
            atomic_write(error_file, json.dumps(record, indent=2, sort_keys=True).encode())
            logger.info("retention removed the bytes of refused instance %s", kept.parent.name)

    def _finished(self, series: SeriesRecord, *, before: float) -> bool:
        jobs = self.ledger.jobs(series_uid=series.series_instance_uid, limit=1000)
        # NOT_APPLICABLE: the model was never to run on the series; nothing is pending.
        settled = (JobState.DONE, JobState.NOT_APPLICABLE)
        if any(job.state not in settled or job.updated_at >= before for job in jobs):
            return False
        if self.ledger.quarantined(series_uid=series.series_instance_uid):
            return False
        forwards = self._outbox.items(series_uid=series.series_instance_uid)
        return all(
            item.state == DeliveryState.SENT and item.updated_at < before for item in forwards
        )

    def _folder(self, series: SeriesRecord) -> Path:
        return self.settings.spool_dir / series.study_instance_uid / series.series_instance_uid

    def _remove_files(self, series: SeriesRecord) -> None:
        """This node's spool folder of the series, and its jobs' results on this node."""
        folder = self._folder(series)
        shutil.rmtree(folder, ignore_errors=True)
        for job in self.ledger.jobs(series_uid=series.series_instance_uid, limit=1000):
            shutil.rmtree(self.settings.results_dir / job.job_id, ignore_errors=True)
        _remove_if_empty(folder.parent)

    def _remove(self, series: SeriesRecord, why: str) -> str:
        self._remove_files(series)
        self.ledger.set_series_state(
            series.series_instance_uid, SeriesState.PURGED, f"spool data removed: {why}"
        )
        logger.info("retention removed series %s (%s)", series.series_instance_uid, why)
        return series.series_instance_uid


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        # Not empty (other series of the study) or already gone: nothing to do.
        return
