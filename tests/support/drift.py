"""Jobs that ended weeks ago with given results, for the weekly read model of each model's
results (:mod:`core.ledger.drift`) and the dashboard's Models page."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import update

from core.jobs import InstanceRecord, JobRecord, JobState, SeriesState
from core.ledger import Ledger
from core.ledger.schema import jobs_table

CT = "1.2.840.10008.5.1.4.1.1.2"
_series_numbers = itertools.count(1)


def finished_job(
    ledger: Ledger,
    result: dict[str, Any],
    *,
    ended: float,
    model: str = "ct-organs",
    state: JobState = JobState.DONE,
    shadow: bool = False,
) -> JobRecord:
    """A job of ``model`` run through the ledger to ``state`` with ``result``, ended at
    ``ended`` (epoch seconds)."""
    series = f"1.2.826.0.1.{next(_series_numbers)}"
    ledger.record_instances(
        [
            InstanceRecord(
                sop_instance_uid=f"{series}.1",
                sop_class_uid=CT,
                series_instance_uid=series,
                study_instance_uid=f"{series}.0",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=f"/spool/{series}/1.dcm",
                size=1000,
                received_at=100.0,
                calling_ae="SCANNER",
                called_ae="PACSAI",
                peer="127.0.0.1:5000",
                modality="CT",
            )
        ]
    )
    ledger.set_series_state(series, SeriesState.ROUTED, completed_at=110.0)
    job = ledger.open_job(
        ledger.get_series(series),
        route="abdomen",
        model_id=model,
        destinations=["pacs"],
        priority=5,
        shadow=shadow,
    )
    ledger.transition(job.job_id, JobState.QUEUED)
    ledger.transition(job.job_id, JobState.RUNNING)
    if state is JobState.DONE:
        ledger.transition(job.job_id, JobState.DELIVERING, result=result)
        ledger.transition(job.job_id, JobState.DONE)
    else:
        ledger.transition(job.job_id, state, result=result, reason="held")
    # The ledger stamps changes with its own clock; a job that ended weeks ago is one whose
    # row says so.
    with ledger.engine.begin() as conn:
        conn.execute(
            update(jobs_table).where(jobs_table.c.job_id == job.job_id).values(updated_at=ended)
        )
    return job


def segmentation(liver: float, spleen: float, version: str = "1.0") -> dict[str, Any]:
    """A segmentation result measuring a liver and a spleen (mL)."""
    return {"model_version": version, "measurements_ml": {"liver": liver, "spleen": spleen}}


def classification(*pneumonia: float) -> dict[str, Any]:
    """A classification result of one film per probability of pneumonia."""
    return {
        "model_version": "2.1",
        "measurements_ml": {},
        "images": [
            {"instance_number": n, "probabilities": {"normal": 1 - p, "pneumonia": p}}
            for n, p in enumerate(pneumonia, start=1)
        ],
    }
