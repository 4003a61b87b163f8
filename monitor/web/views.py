"""The dashboard's pages: overview, one job, the audit log, and the job actions' forms."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from core.ledger import (
    DISCARDED,
    NOT_ROUTED_STATES,
    STAGES,
    JobDetail,
    JobView,
    UnknownJobError,
)
from monitor.actions import DISCARDABLE, ActionRefusedError
from monitor.auth import Principal
from monitor.charts import buckets, throughput_svg, turnaround_svg
from monitor.formatting import seconds, size
from monitor.health import readiness
from monitor.readings import Readings
from monitor.set_aside import set_aside
from monitor.web.common import (
    PageError,
    PagePrincipal,
    Services,
    ServicesDep,
    csrf_refusal,
    form_of,
    remote,
    render,
)

logger = logging.getLogger(__name__)
router = APIRouter()

#: Job list filters: name -> display states.
FILTERS: dict[str, tuple[str, ...] | None] = {
    "all": None,
    "in-flight": ("RECEIVING", "READY", "QUEUED", "RUNNING", "DELIVERING", "RETRYING"),
    "failed": ("FAILED",),
    "needs-review": ("NEEDS_REVIEW",),
    "not-applicable": ("NOT_APPLICABLE",),
    "done": ("DONE",),
    "discarded": (DISCARDED,),
    # NOT_APPLICABLE jobs, and below them the series and instances that became no job.
    "set-aside": ("NOT_APPLICABLE",),
}
ACTION_DONE = {
    "retry": "Retried: the job is READY again and the node queues it.",
    "resend": "Results queued for delivery again.",
    "discard": "Job discarded.",
    "release": "Released: the held results are queued for delivery.",
}
#: Shown on a job whose spool files cannot be read (the rest of the page is unaffected).
UNREADABLE = "its images cannot be read for the accession number; see the node log"


@dataclass(frozen=True, slots=True)
class Context:
    """What every page needs: who asks, the node's name, the time, the refresh period."""

    principal: Principal
    title: str
    now: float
    refresh_seconds: float
    auth_required: bool


@dataclass(frozen=True, slots=True)
class Tile:
    value: Any
    label: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class JobRow:
    job: JobView
    durations: dict[str, float | None]
    accession: str | None
    #: What went wrong computing this job's details, shown on its row only.
    trouble: str | None


def context(svc: Services, principal: Principal) -> Context:
    return Context(
        principal=principal,
        title=svc.title,
        now=svc.readings.now(),
        refresh_seconds=svc.settings.monitor.refresh_seconds,
        auth_required=svc.auth.required,
    )


def page(
    ctx: Context, template: str, heading: str, status: int = 200, **values: Any
) -> HTMLResponse:
    return render(
        template, status, ctx=ctx, heading=heading, refresh=values.pop("refresh", True), **values
    )


def message(ctx: Context, heading: str, text: str, status: int) -> HTMLResponse:
    return page(ctx, "message.html", heading, status, message=text, refresh=False)


def accessions_of(
    readings: Readings, series_uids: Iterable[str]
) -> tuple[dict[str, str | None], dict[str, str]]:
    """Accession numbers, and per series what stopped reading one: one bad file (10,000
    nested sequences, say) marks its own job and never fails the page."""
    uids = list(dict.fromkeys(series_uids))
    try:
        return readings.accession_numbers(uids), {}
    except Exception:
        logger.debug("accession numbers: one series at a time", exc_info=True)
    found: dict[str, str | None] = {}
    trouble: dict[str, str] = {}
    for uid in uids:
        try:
            found.update(readings.accession_numbers([uid]))
        except (Exception, RecursionError) as exc:  # noqa: BLE001 -- shown on that job
            logger.warning(
                "monitor: cannot read the accession number of a series: %s", type(exc).__name__
            )
            found[uid] = None
            trouble[uid] = UNREADABLE
    return found, trouble


def job_row(job: JobView, accessions: dict[str, str | None], trouble: dict[str, str]) -> JobRow:
    try:
        durations = job.times.durations()
        problem = trouble.get(job.series_uid)
    except Exception as exc:  # noqa: BLE001 -- one job's bad data never breaks the page
        logger.warning("monitor: job %s: cannot compute its stages: %s", job.job_id, exc)
        durations = dict.fromkeys(STAGES)
        problem = f"its stages cannot be computed ({type(exc).__name__}; see the node's log)"
    return JobRow(job, durations, accessions.get(job.series_uid), problem)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def overview(request: Request, svc: ServicesDep, principal: PagePrincipal) -> Response:
    ctx = context(svc, principal)
    readings, monitor = svc.readings, svc.settings.monitor
    chosen = request.query_params.get("filter", "all")
    chosen = chosen if chosen in FILTERS else "all"
    jobs = readings.jobs(limit=monitor.jobs_shown, states=FILTERS[chosen])
    show = principal.authenticated
    accessions, trouble = (
        accessions_of(readings, (j.series_uid for j in jobs)) if show else ({}, {})
    )
    counts = readings.job_counts()
    per_state: dict[str, int] = {}
    for (state, _model), count in counts.items():
        per_state[state] = per_state.get(state, 0) + count
    in_flight = sum(per_state.get(s, 0) for s in FILTERS["in-flight"] or ())
    finished = readings.finished_since(ctx.now - monitor.chart_hours * 3600)
    series = buckets(finished, now=ctx.now, hours=monitor.chart_hours)
    done_window = [f for f in finished if f.state == "DONE"]
    turnarounds = sorted(f.turnaround for f in done_window if f.turnaround is not None)
    median = turnarounds[len(turnarounds) // 2] if turnarounds else None
    checks = readiness(readings)
    ready = all(c.ok for c in checks)
    tiles = [
        Tile("Ready" if ready else "Not ready", "node", "tile-ready"),
        Tile(in_flight, "in flight", "tile-in-flight"),
        Tile(per_state.get("FAILED", 0), "failed", "tile-failed"),
        Tile(per_state.get("NEEDS_REVIEW", 0), "held for review", "tile-needs-review"),
        Tile(len(done_window), f"done, last {monitor.chart_hours:g} h", "tile-done"),
        Tile(seconds(median) or "-", f"median turnaround, {monitor.chart_hours:g} h"),
    ]
    aside_counts = set_aside(readings, limit=0)
    not_routed = sum(aside_counts.series_counts.get(s, 0) for s in NOT_ROUTED_STATES)
    tiles += [
        Tile(not_routed, "series not routed", "tile-not-routed"),
        Tile(aside_counts.refused_count, "refused at the door", "tile-refused"),
        Tile(aside_counts.quarantined_count, "quarantined", "tile-quarantined"),
    ]
    with contextlib.suppress(OSError):
        tiles.append(Tile(size(readings.disk().free), "free on the spool disk"))
    return page(
        ctx,
        "overview.html",
        "Overview",
        tiles=tiles,
        not_ready=[c for c in checks if not c.ok],
        throughput=throughput_svg(series),
        turnaround=turnaround_svg(series),
        held=readings.jobs(limit=monitor.jobs_shown, states=["NEEDS_REVIEW"]),
        show=show,
        filters=list(FILTERS),
        filter=chosen,
        stages=STAGES,
        jobs=[job_row(j, accessions, trouble) for j in jobs],
        queues=readings.queues(),
        workers=readings.workers(),
        destinations=readings.destinations(),
        aside=set_aside(readings, limit=monitor.jobs_shown) if chosen == "set-aside" else None,
        pulls=svc.pulls.recent(),
        pull_sources=svc.pulls.sources() if principal.is_admin else [],
        pull_destinations=list(svc.settings.destinations),
        pulled=request.query_params.get("pulled"),
    )


def _timings(detail: dict[str, object]) -> str:
    timings = detail.get("timings")
    if not isinstance(timings, dict):
        return ""
    return ", ".join(
        f"{k} {seconds(float(v))}" for k, v in timings.items() if isinstance(v, int | float)
    )


def _actions(principal: Principal, detail: JobDetail) -> list[tuple[str, str]]:
    if not principal.is_admin:
        return []
    job = detail.job
    actions: list[tuple[str, str]] = []
    if job.failed:
        actions.append(("retry", "Retry"))
    if job.state == "NEEDS_REVIEW":
        actions.append(("release", "Release held results"))
    undelivered = [i for i in detail.outbox if i.state.value in ("DEAD", "REJECTED")]
    if undelivered and job.state in ("FAILED", "DONE", DISCARDED):
        actions.append(("resend", "Re-send results"))
    elif job.shadow and job.state == "DONE" and job.destinations:
        sent = [i for i in detail.outbox if i.state.value == "SENT"]
        if not sent:
            actions.append(("resend", "Send the kept results"))
    waiting = [i for i in detail.outbox if i.state.value == "PENDING"]
    if waiting and job.state == "DELIVERING":
        # Waiting in its retry schedule (a PACS away, a destination misconfigured and
        # now fixed): the same action tries at once.
        actions.append(("resend", "Retry delivery now"))
    if job.state in {s.value for s in DISCARDABLE} and job.state != DISCARDED:
        actions.append(("discard", "Discard"))
    return actions


def job_page(
    svc: Services,
    ctx: Context,
    job_id: str,
    *,
    flash: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    detail = svc.readings.job(job_id)
    if detail is None:
        return message(ctx, "Not found", f"no job {job_id}", 404)
    job = detail.job
    show = ctx.principal.authenticated
    accessions, trouble = accessions_of(svc.readings, [job.series_uid]) if show else ({}, {})
    times = job.times
    stage_rows = [
        ("receive", times.first_received, times.last_received),
        ("complete", times.last_received, times.completed),
        ("queue", times.ready, times.running),
        ("infer", times.running, times.delivering),
        ("deliver", times.delivering, times.accepted),
    ]
    return page(
        ctx,
        "job.html",
        f"Job {job.job_id[:8]}",
        status,
        detail=detail,
        show=show,
        accession=accessions.get(job.series_uid),
        trouble=trouble.get(job.series_uid),
        audit=svc.readings.audit(job_id=job_id, limit=50) if show else [],
        flash=flash,
        error=error,
        actions=_actions(ctx.principal, detail),
        stage_rows=stage_rows,
        durations=times.durations(),
        timings=_timings,
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
def job(request: Request, job_id: str, svc: ServicesDep, principal: PagePrincipal) -> Response:
    ctx = context(svc, principal)
    return job_page(svc, ctx, job_id, flash=ACTION_DONE.get(request.query_params.get("did", "")))


@router.get("/audit", response_class=HTMLResponse, include_in_schema=False)
def audit(svc: ServicesDep, principal: PagePrincipal) -> Response:
    ctx = context(svc, principal)
    if not principal.authenticated:
        return message(ctx, "Audit log", "Sign-in is not configured.", 403)
    return page(ctx, "audit.html", "Audit log", entries=svc.readings.audit(limit=500))


@router.post("/jobs/{job_id}/{action}", include_in_schema=False)
async def act(
    request: Request, job_id: str, action: str, svc: ServicesDep, principal: PagePrincipal
) -> Response:
    form = await form_of(request)
    refusal = csrf_refusal(request, principal, form)
    if refusal is not None:
        raise PageError(403, refusal)
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
) -> Response:
    ctx = context(svc, principal)
    try:
        svc.actions.perform(action, job_id, principal, reason=form.get("reason", ""), remote=peer)
    except PermissionError as exc:
        return job_page(svc, ctx, job_id, error=str(exc), status=403)
    except UnknownJobError as exc:
        return message(ctx, "Not found", str(exc), 404)
    except ActionRefusedError as exc:
        return job_page(svc, ctx, job_id, error=str(exc), status=409)
    return RedirectResponse(f"/jobs/{job_id}?did={action}", status_code=303)
