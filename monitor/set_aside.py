"""What was received but did not become a result, so that none of it goes unseen:

* series **not routed**: UNROUTED (no rule matched; the reason names each rule and the
  condition that failed), and series completed with nothing done (FAILED) or discarded
  by ``completion.force_policy`` (DISCARDED);
* jobs **not applicable**: a routed model cannot accept the series (NOT_APPLICABLE);
* instances **refused at the door**: answered a failure status and kept in quarantine
  with the reason (malformed, reusing another series' UIDs:
  :data:`core.quarantine.DOOR_STAGES`);
* **quarantined** jobs' inputs and results (a job's failure, a delivery refused).

``pacs-ai status``, the dashboard and the API show them; ``/metrics`` counts them
(``pacs_ai_series{state}``, ``pacs_ai_jobs{state="NOT_APPLICABLE"}``,
``pacs_ai_quarantine_records{stage}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from core.jobs import JobState, SeriesState
from core.ledger.schema import quarantine_table, series_table
from core.quarantine import DOOR_STAGES
from monitor.formatting import redact
from monitor.readings import JobView, Readings

#: Series states that mean "received, completed, and nothing was run on it".
NOT_ROUTED_STATES: tuple[str, ...] = (
    SeriesState.UNROUTED.value,
    SeriesState.FAILED.value,
    SeriesState.DISCARDED.value,
)


@dataclass(frozen=True, slots=True)
class NotRoutedSeries:
    series_uid: str
    study_uid: str
    state: str
    modality: str | None
    calling_ae: str
    instance_count: int
    last_received_at: float
    completed_at: float | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class QuarantinedView:
    at: float
    stage: str
    reason: str
    calling_ae: str | None
    series_uid: str | None
    sop_instance_uid: str | None
    job_id: str | None

    @property
    def at_the_door(self) -> bool:
        return self.stage in DOOR_STAGES


@dataclass(frozen=True, slots=True)
class SetAside:
    """The newest of each kind (``limit`` each) and the counts of all."""

    series_counts: dict[str, int]
    not_routed: list[NotRoutedSeries]
    not_applicable: list[JobView]
    quarantine_counts: dict[str, int]
    refused: list[QuarantinedView]
    quarantined: list[QuarantinedView]

    @property
    def refused_count(self) -> int:
        return sum(n for stage, n in self.quarantine_counts.items() if stage in DOOR_STAGES)

    @property
    def quarantined_count(self) -> int:
        return sum(n for stage, n in self.quarantine_counts.items() if stage not in DOOR_STAGES)


def set_aside(readings: Readings, *, limit: int = 10) -> SetAside:
    """Read what was set aside from the ledger (see the module docstring)."""
    with readings.ledger.engine.connect() as conn:
        series_counts = {
            str(state): int(count)
            for state, count in conn.execute(
                select(series_table.c.state, func.count()).group_by(series_table.c.state)
            )
        }
        not_routed = [
            NotRoutedSeries(
                series_uid=row.series_uid,
                study_uid=row.study_uid,
                state=row.state,
                modality=row.modality,
                calling_ae=row.calling_ae,
                instance_count=row.instance_count,
                last_received_at=row.last_received_at,
                completed_at=row.completed_at,
                reason=row.reason,
            )
            for row in conn.execute(
                select(series_table)
                .where(series_table.c.state.in_(NOT_ROUTED_STATES))
                .order_by(series_table.c.updated_at.desc())
                .limit(limit)
            )
        ]
        quarantine_counts = {
            str(stage): int(count)
            for stage, count in conn.execute(
                select(quarantine_table.c.stage, func.count()).group_by(quarantine_table.c.stage)
            )
        }
        door = quarantine_table.c.stage.in_(sorted(DOOR_STAGES))
        refused = [
            _quarantined(row)
            for row in conn.execute(
                select(quarantine_table)
                .where(door)
                .order_by(quarantine_table.c.at.desc())
                .limit(limit)
            )
        ]
        quarantined = [
            _quarantined(row)
            for row in conn.execute(
                select(quarantine_table)
                .where(~door)
                .order_by(quarantine_table.c.at.desc())
                .limit(limit)
            )
        ]
    return SetAside(
        series_counts=series_counts,
        not_routed=not_routed,
        not_applicable=readings.jobs(limit=limit, states=[JobState.NOT_APPLICABLE.value]),
        quarantine_counts=quarantine_counts,
        refused=refused,
        quarantined=quarantined,
    )


def _quarantined(row: Any) -> QuarantinedView:
    return QuarantinedView(
        at=row.at,
        stage=row.stage,
        reason=row.reason,
        calling_ae=row.calling_ae,
        series_uid=row.series_uid,
        sop_instance_uid=row.sop_instance_uid,
        job_id=row.job_id,
    )


def set_aside_json(reading: SetAside, *, identifiers: bool) -> dict[str, Any]:
    """The JSON shape (``pacs-ai status --json``, the API); UIDs only for ``identifiers``."""

    def uids(**values: str | None) -> dict[str, str | None]:
        return dict(values) if identifiers else {}

    return {
        "series_counts": reading.series_counts,
        "not_routed": [
            {
                "state": s.state,
                "modality": s.modality,
                "calling_ae": s.calling_ae,
                "instances": s.instance_count,
                "last_received_at": s.last_received_at,
                "completed_at": s.completed_at,
                "reason": redact(s.reason, show=identifiers),
                **uids(series_uid=s.series_uid, study_uid=s.study_uid),
            }
            for s in reading.not_routed
        ],
        "not_applicable": [
            {
                "job_id": j.job_id,
                "route": j.route,
                "model": j.model_id,
                "modality": j.modality,
                "updated_at": j.updated_at,
                "reason": redact(j.reason, show=identifiers),
                **uids(series_uid=j.series_uid),
            }
            for j in reading.not_applicable
        ],
        "quarantine_counts": reading.quarantine_counts,
        "refused_at_the_door": [_quarantined_json(q, identifiers) for q in reading.refused],
        "quarantined": [_quarantined_json(q, identifiers) for q in reading.quarantined],
    }


def _quarantined_json(record: QuarantinedView, identifiers: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "at": record.at,
        "stage": record.stage,
        "calling_ae": record.calling_ae,
        "job_id": record.job_id,
        "reason": redact(record.reason, show=identifiers),
    }
    if identifiers:
        data["series_uid"] = record.series_uid
        data["sop_instance_uid"] = record.sop_instance_uid
    return data
