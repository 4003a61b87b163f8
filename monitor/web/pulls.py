"""Studies pulled from a PACS: start a run for a study found by accession number (admin,
audited), and list retrievals with their progress (page form and JSON API).

================================ ====== ===================================================
``/pulls``                       POST   form: source, accession, models, destination|keep
``/api/pulls``                   GET    retrievals with their progress (JSON)
``/api/pulls``                   POST   start a run (JSON body as the form's fields)
================================ ====== ===================================================
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from monitor.auth import Principal
from monitor.pulls import PullRefusedError, PullView
from monitor.web.common import (
    ApiError,
    ApiPrincipal,
    PageError,
    PagePrincipal,
    Services,
    ServicesDep,
    csrf_refusal,
    form_of,
    remote,
)

router = APIRouter()

#: The destination choice that keeps the results in the node.
KEEP = "(keep in the node)"


@router.post("/pulls", include_in_schema=False)
async def start_page(request: Request, svc: ServicesDep, principal: PagePrincipal) -> Response:
    form = await form_of(request)
    refusal = csrf_refusal(request, principal, form)
    if refusal is not None:
        raise PageError(403, refusal)
    try:
        record_id = await run_in_threadpool(_start, svc, principal, form, remote(request))
    except PermissionError as exc:
        return _message(svc, principal, str(exc), 403)
    except PullRefusedError as exc:
        return _message(svc, principal, f"Not started: {exc}", 409)
    return RedirectResponse(f"/?pulled={record_id[:8]}#pulls", status_code=303)


@router.get("/api/pulls", summary="Retrievals from a PACS, with their progress")
def list_pulls(svc: ServicesDep, _principal: ApiPrincipal) -> dict[str, Any]:
    return {"pulls": [as_json(view) for view in svc.pulls.recent(limit=50)]}


@router.post("/api/pulls", summary="Start a run for a study found by accession (admin)")
async def start_api(request: Request, svc: ServicesDep, principal: ApiPrincipal) -> Response:
    form = await form_of(request)
    if principal.via == "session":
        refusal = csrf_refusal(request, principal, form)
        if refusal is not None:
            raise ApiError(403, refusal)
    try:
        record_id = await run_in_threadpool(_start, svc, principal, form, remote(request))
    except PermissionError as exc:
        raise ApiError(403, str(exc)) from None
    except PullRefusedError as exc:
        raise ApiError(409, str(exc)) from None
    return JSONResponse({"retrieval_id": record_id, "state": "QUEUED"}, status_code=202)


def _start(svc: Services, principal: Principal, form: dict[str, str], peer: str) -> str:
    destination = form.get("destination", "").strip()
    keep = form.get("keep", "") in ("1", "true", "on") or destination == KEEP
    record = svc.pulls.start_by_accession(
        principal,
        source=form.get("source", "").strip(),
        accession=form.get("accession", ""),
        models=[m.strip() for m in form.get("models", "").split(",") if m.strip()],
        destinations=[destination] if destination and destination != KEEP else [],
        keep=keep,
        remote=peer,
    )
    return record.retrieval_id


def _message(svc: Services, principal: Principal, text: str, status: int) -> Response:
    from monitor.web.views import context, message  # noqa: PLC0415 -- views imports us

    return message(context(svc, principal), "Run from a PACS", text, status)


def as_json(view: PullView) -> dict[str, Any]:
    record, progress = view.retrieval, view.progress
    return {
        "retrieval_id": record.retrieval_id,
        "kind": record.kind,
        "source": record.source,
        "models": list(record.models),
        "destinations": list(record.destinations),
        "kept": record.shadow,
        "state": record.state.value,
        "reason": record.reason,
        "actor": record.actor,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "studies": progress.total,
        "pulled": progress.retrieved,
        "processed": progress.processed,
        "failed_jobs": progress.failed_jobs,
        "by_state": {state.value: count for state, count in progress.by_state.items()},
    }
