"""The JSON API (``/api/...``, schema at ``/api/openapi.json``, described at ``/api/docs``)
and ``/metrics``. Bearer token, or a session (and ``X-CSRF-Token`` for POST)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from core.ledger import DISPLAY_STATES, UnknownJobError
from monitor import api
from monitor.actions import ActionRefusedError
from monitor.auth import Principal
from monitor.health import readiness
from monitor.set_aside import set_aside, set_aside_json
from monitor.web.common import (
    ApiError,
    ApiPrincipal,
    Services,
    ServicesDep,
    csrf_refusal,
    form_of,
    remote,
)
from monitor.web.views import accessions_of

logger = logging.getLogger(__name__)
router = APIRouter()


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
def metrics(svc: ServicesDep, _principal: ApiPrincipal) -> Response:
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/api/metrics", include_in_schema=False)
def api_metrics(svc: ServicesDep, principal: ApiPrincipal) -> Response:
    return metrics(svc, principal)


@router.get("/api/jobs", summary="Jobs, newest first (state=FAILED&limit=50)")
def jobs(
    svc: ServicesDep,
    principal: ApiPrincipal,
    state: Annotated[list[str] | None, Query()] = None,
    limit: str = "50",
) -> dict[str, Any]:
    show = principal.authenticated
    states = [s for s in state or [] if s in DISPLAY_STATES] or None
    try:
        count = max(1, min(1000, int(limit)))
    except ValueError:
        raise ApiError(400, "limit: a number, please") from None
    found = svc.readings.jobs(limit=count, states=states)
    accessions, trouble = (
        accessions_of(svc.readings, (j.series_uid for j in found)) if show else ({}, {})
    )
    listed = []
    for job in found:
        shown = api.job_json(job, identifiers=show, accession=accessions.get(job.series_uid))
        if job.series_uid in trouble:
            shown["trouble"] = trouble[job.series_uid]
        listed.append(shown)
    return {"jobs": listed}


@router.get("/api/jobs/{job_id}", summary="One job: stages, history, outbox")
def job(job_id: str, svc: ServicesDep, principal: ApiPrincipal) -> dict[str, Any]:
    show = principal.authenticated
    detail = svc.readings.job(job_id)
    if detail is None:
        raise ApiError(404, f"no job {job_id}")
    uid = detail.job.series_uid
    accessions, trouble = accessions_of(svc.readings, [uid]) if show else ({}, {})
    shown = api.job_detail_json(detail, identifiers=show, accession=accessions.get(uid))
    if uid in trouble:
        shown["trouble"] = trouble[uid]
    return shown


@router.post(
    "/api/jobs/{job_id}/{action}", summary="retry, resend, discard (reason=...) or release"
)
async def act(
    request: Request, job_id: str, action: str, svc: ServicesDep, principal: ApiPrincipal
) -> dict[str, Any]:
    form = await form_of(request)
    refusal = csrf_refusal(request, principal, form)
    if refusal is not None:
        raise ApiError(403, refusal)
    return await run_in_threadpool(
        _act, svc, principal, job_id, action, form=form, peer=remote(request)
    )


def _act(
    svc: Services,
    principal: Principal,
    job_id: str,
    action: str,
    *,
    form: dict[str, str],
    peer: str,
) -> dict[str, Any]:
    try:
        result = svc.actions.perform(
            action, job_id, principal, reason=form.get("reason", ""), remote=peer
        )
    except PermissionError as exc:
        raise ApiError(403, str(exc)) from None
    except UnknownJobError as exc:
        raise ApiError(404, str(exc)) from None
    except ActionRefusedError as exc:
        raise ApiError(409, str(exc)) from None
    return {"ok": True, "action": action, "job_id": job_id, "message": result.message}


@router.get("/api/queues", summary="Queue depths per model and priority")
def queues(svc: ServicesDep, _principal: ApiPrincipal) -> dict[str, Any]:
    return api.queues_json(svc.readings.queues())


@router.get("/api/workers", summary="Workers and their heartbeats")
def workers(svc: ServicesDep, _principal: ApiPrincipal) -> dict[str, Any]:
    return {"workers": api.workers_json(svc.readings.workers())}


@router.get("/api/destinations", summary="Destinations: backlog, failures, last error")
def destinations(svc: ServicesDep, principal: ApiPrincipal) -> dict[str, Any]:
    views = svc.readings.destinations()
    return {"destinations": api.destinations_json(views, identifiers=principal.authenticated)}


@router.get("/api/summary", summary="Job counts per state and model; readiness")
def summary(svc: ServicesDep, _principal: ApiPrincipal) -> dict[str, Any]:
    counts = svc.readings.job_counts()
    checks = readiness(svc.readings)
    return {
        "jobs": [{"state": s, "model": m, "count": n} for (s, m), n in sorted(counts.items())],
        "ready": all(c.ok for c in checks),
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
    }


@router.get(
    "/api/set-aside",
    summary="Series not routed, NOT_APPLICABLE jobs, instances refused or quarantined",
)
def aside(
    svc: ServicesDep, principal: ApiPrincipal, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> dict[str, Any]:
    reading = set_aside(svc.readings, limit=limit)
    return set_aside_json(reading, identifiers=principal.authenticated)


@router.get("/api/audit", summary="The audit log (authenticated users only)")
def audit(svc: ServicesDep, principal: ApiPrincipal) -> dict[str, Any]:
    if not principal.authenticated:
        raise ApiError(403, "sign-in is not configured")
    return {"audit": api.audit_json(svc.readings.audit(limit=500))}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)
