"""Row -> record mapping, in one place for the ledger's writers and its read models."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.engine import Row

from core.jobs import (
    JobEvent,
    JobRecord,
    JobState,
    SeriesRecord,
    SeriesState,
    StudyRecord,
    StudyState,
)
from core.ledger.records import (
    AuditEntry,
    NodeRecord,
    QuarantineRecord,
    StoredInstance,
    WorkerRecord,
    WorkerStatus,
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
        origin=row.origin,
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
        shadow=bool(row.shadow),
        input_received_at=row.input_received_at,
    )


def _job_event(row: Row[Any]) -> JobEvent:
    return JobEvent(
        job_id=row.job_id,
        state=JobState(row.state),
        at=row.at,
        reason=row.reason,
        detail=json.loads(row.detail) if row.detail else {},
        kind=row.kind,
    )


def _stored_instance(row: Row[Any]) -> StoredInstance:
    return StoredInstance(
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        transfer_syntax_uid=row.transfer_syntax_uid,
        path=row.path,
        size=row.size,
        receive_count=row.receive_count,
        node=row.node,
    )


def _quarantine_record(row: Row[Any]) -> QuarantineRecord:
    return QuarantineRecord(
        quarantine_id=row.quarantine_id,
        at=row.at,
        stage=row.stage,
        reason=row.reason,
        path=row.path,
        sop_instance_uid=row.sop_instance_uid,
        series_uid=row.series_uid,
        job_id=row.job_id,
        calling_ae=row.calling_ae,
    )


def _worker_record(row: Row[Any]) -> WorkerRecord:
    """A row of ``workers`` outer-joined with ``worker_status`` (see
    :func:`core.ledger.workers.workers_query`): its status columns are empty for a worker
    that never reported one."""
    return WorkerRecord(
        name=row.name,
        host=row.host,
        pid=row.pid,
        device=row.device,
        models=tuple(json.loads(row.models)),
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        stopped_at=row.stopped_at,
        status=WorkerStatus(
            gpu_name=row.gpu_name,
            gpu_memory_used=row.gpu_memory_used,
            gpu_memory_total=row.gpu_memory_total,
            gpu_utilisation=row.gpu_utilisation,
            current_job=row.current_job,
            current_job_since=row.current_job_since,
            jobs_done=row.jobs_done or 0,
        ),
    )


def _node_record(row: Row[Any]) -> NodeRecord:
    return NodeRecord(
        name=row.name,
        host=row.host,
        pid=row.pid,
        ae_title=row.ae_title,
        port=row.port,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        stopped_at=row.stopped_at,
        node=row.node,
        dicomweb_url=row.dicomweb_url,
    )


def _audit_entry(row: Row[Any]) -> AuditEntry:
    return AuditEntry(
        at=row.at,
        actor=row.actor,
        role=row.role,
        action=row.action,
        job_id=row.job_id,
        outcome=row.outcome,
        detail=row.detail,
        remote=row.remote,
    )
