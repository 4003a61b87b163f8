"""The JSON shapes of the API (``/api/...``) and of ``pacs-ai status --json``.

Times are epoch seconds (UTC). ``stages`` holds the timestamps of the job's latest run,
``durations`` the seconds per stage and ``turnaround`` last image -> results accepted, as
defined in :mod:`core.ledger.timeline`. Identifiers (study and series UIDs, accession number)
are included only for authenticated callers; free-text reasons then keep their UIDs.
"""

from __future__ import annotations

from typing import Any

from core.ledger import AuditEntry, JobDetail, JobView, WorkerView
from monitor.formatting import redact
from monitor.readings import DestinationView, QueuesReading


def job_json(job: JobView, *, identifiers: bool, accession: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "job_id": job.job_id,
        "state": job.state,
        "route": job.route,
        "model": job.model_id,
        "priority": job.priority,
        "attempts": job.attempts,
        "reason": redact(job.reason, show=identifiers),
        "worker": job.worker,
        "destinations": list(job.destinations),
        # Shadow: results kept in the node, not delivered; origin: how the series came
        # (None: a sender stored it, "retrieved": pulled from a PACS).
        "shadow": job.shadow,
        "origin": job.origin,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "modality": job.modality,
        "calling_ae": job.calling_ae,
        "instances": job.instance_count,
        "stages": job.times.as_dict(),
        "durations": job.times.durations(),
        "turnaround": job.times.turnaround,
        "discarded": (
            {
                "at": job.discard.at,
                "by": job.discard.actor,
                "reason": redact(job.discard.reason, show=identifiers),
            }
            if job.discard
            else None
        ),
    }
    if identifiers:
        data["study_uid"] = job.study_uid
        data["series_uid"] = job.series_uid
        data["accession_number"] = accession
    return data


def job_detail_json(
    detail: JobDetail, *, identifiers: bool, accession: str | None = None
) -> dict[str, Any]:
    data = job_json(detail.job, identifiers=identifiers, accession=accession)
    data["events"] = [
        {
            "state": e.state.value,
            "kind": e.kind,
            "at": e.at,
            "reason": redact(e.reason, show=identifiers),
            "detail": e.detail if identifiers else _without_uids(e.detail),
        }
        for e in detail.events
    ]
    data["outbox"] = [
        {
            "destination": item.destination,
            "kind": item.kind.value,
            "state": item.state.value,
            "attempts": item.attempts,
            "last_status": item.last_status,
            "last_error": redact(item.last_error, show=identifiers),
            "sent_at": item.sent_at,
            **({"sop_instance_uid": item.sop_instance_uid} if identifiers else {}),
        }
        for item in detail.outbox
    ]
    data["quarantine"] = [
        {"at": q.at, "stage": q.stage, "reason": redact(q.reason, show=identifiers)}
        for q in detail.quarantine
    ]
    return data


def queues_json(reading: QueuesReading) -> dict[str, Any]:
    return {
        "queues": [
            {
                "queue": q.queue,
                "model": q.model_id,
                "priority": q.priority,
                "depth": q.depth,
                "oldest_job_id": q.oldest_job_id,
                "oldest_age_seconds": q.oldest_age,
            }
            for q in reading.queues
        ],
        "unacked": reading.unacked,
        "waiting_in_ledger": reading.waiting_in_ledger,
        "error": reading.error,
    }


def workers_json(workers: list[WorkerView]) -> list[dict[str, Any]]:
    return [
        {
            "name": w.name,
            "host": w.host,
            "pid": w.pid,
            "device": w.device,
            "models": list(w.models),
            "alive": w.alive,
            "state": w.state,
            "stopped_at": w.stopped_at,
            "started_at": w.started_at,
            "heartbeat_at": w.heartbeat_at,
            "gpu_name": w.status.gpu_name,
            "gpu_memory_used": w.status.gpu_memory_used,
            "gpu_memory_total": w.status.gpu_memory_total,
            "gpu_utilisation": w.status.gpu_utilisation,
            "current_job": w.status.current_job,
            "current_job_since": w.status.current_job_since,
            "jobs_done": w.status.jobs_done,
        }
        for w in workers
    ]


def destinations_json(views: list[DestinationView], *, identifiers: bool) -> list[dict[str, Any]]:
    return [
        {
            "name": d.name,
            "kind": d.kind,
            "address": d.address,
            "backlog": d.backlog,
            "dead": d.dead,
            "rejected": d.rejected,
            "last_success_at": d.last_success_at,
            "last_error": redact(d.last_error, show=identifiers),
            "last_error_at": d.last_error_at,
            "last_status": d.last_status,
            "misconfigured": d.misconfigured,
            "problem": redact(d.problem, show=identifiers),
            "problem_since": d.problem_since,
            "next_attempt_at": d.next_attempt_at,
        }
        for d in views
    ]


def audit_json(entries: list[AuditEntry]) -> list[dict[str, Any]]:
    return [
        {
            "at": e.at,
            "actor": e.actor,
            "role": e.role,
            "action": e.action,
            "job_id": e.job_id,
            "outcome": e.outcome,
            "detail": e.detail,
            "remote": e.remote,
        }
        for e in entries
    ]


def _without_uids(detail: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in detail.items()
        if "uid" not in k.lower() and k not in ("files", "deliveries")
    }
