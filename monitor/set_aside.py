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

from typing import Any

from core.ledger import QuarantineRecord, SetAside
from monitor.formatting import redact
from monitor.readings import Readings


def set_aside(readings: Readings, *, limit: int = 10) -> SetAside:
    """Read what was set aside from the ledger (see the module docstring), the newest
    ``limit`` of each kind."""
    return readings.ledger.set_aside(limit=limit)


def set_aside_json(reading: SetAside, *, identifiers: bool) -> dict[str, Any]:
    """The JSON shape (``pacs-ai status --json``, the API); UIDs only for ``identifiers``."""

    def uids(**values: str | None) -> dict[str, str | None]:
        return dict(values) if identifiers else {}

    return {
        "series_counts": reading.series_counts,
        "not_routed": [
            {
                "state": s.state.value,
                "modality": s.modality,
                "calling_ae": s.calling_ae,
                "instances": s.instance_count,
                "last_received_at": s.last_received_at,
                "completed_at": s.completed_at,
                "reason": redact(s.reason, show=identifiers),
                **uids(series_uid=s.series_instance_uid, study_uid=s.study_instance_uid),
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


def _quarantined_json(record: QuarantineRecord, identifiers: bool) -> dict[str, Any]:
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
