"""Row -> record mapping, in one place for the ledger's writers and its read models."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.engine import Row

from core.jobs import (
    JobRecord,
    JobState,
    SeriesRecord,
    SeriesState,
    StudyRecord,
    StudyState,
)


def _series_record(row: Row[Any]) -> SeriesRecord:
    return SeriesRecord(
        series_instance_uid=row.series_uid,
        study_instance_uid=row.study_uid,
        modality=row.modality,
        calling_ae=row.calling_ae,
        called_ae=row.called_ae,
        peer=row.peer,
        first_received_at=row.first_received_at,
        last_received_at=row.last_received_at,
        instance_count=row.instance_count,
        resent_count=row.resent_count,
        state=SeriesState(row.state),
        reason=row.reason,
        completed_at=row.completed_at,
        receiving_since=row.receiving_since,
    )


def _study_record(row: Row[Any]) -> StudyRecord:
    return StudyRecord(
        study_instance_uid=row.study_uid,
        first_received_at=row.first_received_at,
        last_received_at=row.last_received_at,
        last_new_series_at=row.last_new_series_at,
        series_count=row.series_count,
        state=StudyState(row.state),
        reason=row.reason,
        completed_at=row.completed_at,
    )


def _job_record(row: Row[Any]) -> JobRecord:
    return JobRecord(
        job_id=row.job_id,
        series_instance_uid=row.series_uid,
        study_instance_uid=row.study_uid,
        route=row.route,
        model_id=row.model_id,
        destinations=tuple(json.loads(row.destinations)),
        priority=row.priority,
        state=JobState(row.state),
        reason=row.reason,
        attempts=row.attempts,
        created_at=row.created_at,
        updated_at=row.updated_at,
        result=json.loads(row.result) if row.result else {},
        worker=row.worker,
        rerun_pending=bool(row.rerun_pending),
    )
