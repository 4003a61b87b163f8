"""The dashboard's pages, rendered on the server: overview, one job, audit log, sign-in.

Identifiers (accession number, study/series/instance UIDs) appear only for authenticated
users; for anonymous visitors (no authentication configured, loopback only) UIDs in
failure reasons are replaced by ``[UID]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from monitor.actions import DISCARDABLE
from monitor.auth import Principal
from monitor.charts import buckets, throughput_svg, turnaround_svg
from monitor.health import Check
from monitor.html import (
    Fragment,
    Html,
    join,
    redact,
    seconds,
    size,
    table,
    tag,
    url,
    void,
    when,
)
from monitor.readings import (
    DISCARDED,
    AuditEntry,
    DestinationView,
    DiskReading,
    Finished,
    JobDetail,
    JobView,
    QueuesReading,
    WorkerView,
)
from monitor.timeline import STAGES

#: Job list filters: name -> display states.
FILTERS: dict[str, tuple[str, ...] | None] = {
    "all": None,
    "in-flight": ("RECEIVING", "READY", "QUEUED", "RUNNING", "DELIVERING", "RETRYING"),
    "failed": ("FAILED",),
    "needs-review": ("NEEDS_REVIEW",),
    "not-applicable": ("NOT_APPLICABLE",),
    "done": ("DONE",),
    "discarded": (DISCARDED,),
}
ACTION_DONE = {
    "retry": "Retried: the job is READY again and the node queues it.",
    "resend": "Results queued for delivery again.",
    "discard": "Job discarded.",
    "release": "Released: the held results are queued for delivery.",
}


@dataclass(frozen=True, slots=True)
class Context:
    """What every page needs: who asks, the node's name, the time, the refresh period."""

    principal: Principal
    title: str
    now: float
    refresh_seconds: float
    auth_required: bool


def page(ctx: Context, heading: str, *body: Fragment, refresh: bool = True) -> Html:
    user: Fragment = ""
    if ctx.principal.authenticated and ctx.principal.via == "session":
        user = join(
            [
                tag("span", f"{ctx.principal.name} ({ctx.principal.role})", id="user"),
                tag(
                    "form",
                    _csrf(ctx),
                    tag("button", "Sign out", type="submit"),
                    method="post",
                    action="/logout",
                ),
            ],
            " ",
        )
    elif not ctx.auth_required:
        user = tag("span", "anonymous, read-only (no authentication configured)", class_="muted")
    head = join(
        [
            Html("<!doctype html>"),
            tag(
                "head",
                void("meta", charset="utf-8"),
                void("meta", name="viewport", content="width=device-width, initial-scale=1"),
                tag("title", f"{heading} - pacs-ai {ctx.title}"),
                void("link", rel="stylesheet", href="/static/style.css"),
                tag("script", src="/static/refresh.js", defer=True),
            ),
        ]
    )
    header = tag(
        "header",
        tag("h1", tag("a", f"pacs-ai {ctx.title}", href="/")),
        tag("a", "Jobs", href="/"),
        tag("a", "Audit log", href="/audit") if ctx.principal.authenticated else "",
        tag("span", "", class_="spacer"),
        user,
    )
    refresh = refresh and ctx.refresh_seconds > 0
    footer = tag(
        "footer",
        "Updated ",
        when(ctx.now, now=ctx.now),
        f"; reloads every {ctx.refresh_seconds:g} s." if refresh else ".",
        " Stages: receive = first to last image; complete = last image to READY; "
        "queue = READY (or a retry) to RUNNING; infer = RUNNING to DELIVERING; "
        "deliver = DELIVERING to results accepted; "
        "turnaround = last image to results accepted by the PACS.",
    )
    return join(
        [
            head,
            tag(
                "body",
                header,
                tag("main", *body, footer),
                data_refresh=f"{ctx.refresh_seconds:g}" if refresh else "0",
            ),
        ]
    )


def _csrf(ctx: Context) -> Html:
    token = ctx.principal.csrf
    return void("input", type="hidden", name="csrf", value=token) if token else Html("")


def state_badge(state: str) -> Html:
    return tag("span", state, class_=f"state state-{state}")


# -- overview -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Overview:
    jobs: list[JobView]
    accessions: dict[str, str | None]
    counts: dict[tuple[str, str], int]
    queues: QueuesReading
    workers: list[WorkerView]
    destinations: list[DestinationView]
    finished: list[Finished]
    chart_hours: float
    readiness: list[Check]
    disk: DiskReading | None
    filter: str
    #: Jobs whose results are held for review (NEEDS_REVIEW), newest first.
    held: list[JobView] = field(default_factory=list)


def overview_page(ctx: Context, data: Overview) -> Html:
    show = ctx.principal.authenticated
    per_state: dict[str, int] = {}
    for (state, _model), count in data.counts.items():
        per_state[state] = per_state.get(state, 0) + count
    in_flight = sum(per_state.get(s, 0) for s in FILTERS["in-flight"] or ())
    series = buckets(data.finished, now=ctx.now, hours=data.chart_hours)
    done_window = [f for f in data.finished if f.state == "DONE"]
    turnarounds = sorted(f.turnaround for f in done_window if f.turnaround is not None)
    median = turnarounds[len(turnarounds) // 2] if turnarounds else None
    ready = all(c.ok for c in data.readiness)
    tiles = [
        _tile("Ready" if ready else "Not ready", "node", id_="tile-ready"),
        _tile(in_flight, "in flight", id_="tile-in-flight"),
        _tile(per_state.get("FAILED", 0), "failed", id_="tile-failed"),
        _tile(per_state.get("NEEDS_REVIEW", 0), "held for review", id_="tile-needs-review"),
        _tile(len(done_window), f"done, last {data.chart_hours:g} h", id_="tile-done"),
        _tile(seconds(median) or "-", f"median turnaround, {data.chart_hours:g} h"),
    ]
    if data.disk is not None:
        tiles.append(_tile(size(data.disk.free), "free on the spool disk"))
    not_ready = [c for c in data.readiness if not c.ok]
    body: list[Fragment] = [
        tag("div", *tiles, class_="tiles"),
        (
            tag(
                "div",
                "Not ready: ",
                join([f"{c.name}: {c.detail}" for c in not_ready], "; "),
                class_="flash error",
                id="not-ready",
            )
            if not_ready
            else ""
        ),
        tag(
            "div",
            tag("div", tag("h3", "Jobs finished"), throughput_svg(series), class_="chart"),
            tag(
                "div",
                tag("h3", "Turnaround (median line, 90th percentile dots)"),
                turnaround_svg(series),
                class_="chart",
            ),
            class_="charts",
        ),
        _held_section(ctx, data.held, show=show),
        tag("h2", "Jobs"),
        _filters(data.filter),
        _jobs_table(ctx, data.jobs, data.accessions, show=show),
        tag("h2", "Queues"),
        _queues_table(ctx, data.queues),
        tag("h2", "Workers"),
        _workers_table(ctx, data.workers),
        tag("h2", "Destinations"),
        _destinations_table(ctx, data.destinations, show=show),
    ]
    return page(ctx, "Overview", *body)


def _tile(value: Fragment, label: str, *, id_: str | None = None) -> Html:
    return tag(
        "div", tag("div", value, class_="n"), tag("div", label, class_="l"), class_="tile", id=id_
    )


def _filters(current: str) -> Html:
    links = [
        tag("a", name, href=url("/", filter=name if name != "all" else None),
            class_="on" if name == current else None)
        for name in FILTERS
    ]  # fmt: skip
    return tag("div", "Show: ", *links, class_="filters")


def _jobs_table(
    ctx: Context, jobs: Sequence[JobView], accessions: dict[str, str | None], *, show: bool
) -> Html:
    headers: list[Fragment] = ["Job", "Received", "From", "Series"]
    if show:
        headers.append("Accession / UIDs")
    headers += ["Route", "Model", "State", *STAGES, "Turnaround", "Reason", ""]
    rows = []
    for job in jobs:
        durations = job.times.durations()
        series = f"{job.modality or '?'}, {job.instance_count} images"
        row: list[Fragment] = [
            tag("a", job.job_id[:8], href=f"/jobs/{job.job_id}", class_="mono"),
            when(job.times.first_received, now=ctx.now),
            job.calling_ae,
            series,
        ]
        if show:
            row.append(
                tag(
                    "div",
                    tag("div", accessions.get(job.series_uid) or "-"),
                    tag("div", job.study_uid, class_="uid"),
                    tag("div", job.series_uid, class_="uid"),
                )
            )
        row += [job.route, job.model_id, state_badge(job.state)]
        row += [
            tag("span", seconds(durations[stage]), class_=f"stage stage-{stage}")
            for stage in STAGES
        ]
        row += [
            tag("span", seconds(job.times.turnaround), class_="turnaround"),
            tag("span", redact(job.reason, show=show), class_="reason") if job.reason else "",
            _retry_button(ctx, job) if job.failed else "",
        ]
        rows.append(row)
    return table(
        headers,
        rows,
        id_="jobs",
        empty="No jobs yet.",
        row_attrs=[{"id": f"job-{job.job_id}", "data_state": job.state} for job in jobs],
    )


def _retry_button(ctx: Context, job: JobView) -> Html:
    if not ctx.principal.is_admin:
        return Html("")
    return tag(
        "form",
        _csrf(ctx),
        tag("button", "Retry", type="submit", class_="act"),
        method="post",
        action=f"/jobs/{job.job_id}/retry",
    )


def _held_section(ctx: Context, held: Sequence[JobView], *, show: bool) -> Fragment:
    """Results outside what their model declares plausible, held until released or
    discarded (admins get the buttons)."""
    if not held:
        return ""
    rows: list[list[Fragment]] = [
        [
            tag("a", job.job_id[:8], href=f"/jobs/{job.job_id}", class_="mono"),
            when(job.updated_at, now=ctx.now),
            job.route,
            job.model_id,
            tag("span", redact(job.reason, show=show), class_="reason") if job.reason else "",
            join([_release_form(ctx, job.job_id), _discard_form(ctx, job.job_id)], " ")
            if ctx.principal.is_admin
            else "",
        ]
        for job in held
    ]
    return join(
        [
            tag("h2", "Held for review"),
            table(
                ["Job", "Held since", "Route", "Model", "Why", ""],
                rows,
                id_="held",
                empty="",
                row_attrs=[{"id": f"held-{job.job_id}"} for job in held],
            ),
        ]
    )


def _release_form(ctx: Context, job_id: str) -> Html:
    return tag(
        "form",
        _csrf(ctx),
        tag("button", "Release", type="submit", class_="act", id=f"action-release-{job_id}"),
        method="post",
        action=f"/jobs/{job_id}/release",
    )


def _discard_form(ctx: Context, job_id: str) -> Html:
    return tag(
        "form",
        _csrf(ctx),
        void(
            "input",
            type="text",
            name="reason",
            placeholder="why (recorded)",
            required=True,
            maxlength=500,
            aria_label="reason for discarding",
        ),
        " ",
        tag("button", "Discard", type="submit", class_="act danger"),
        method="post",
        action=f"/jobs/{job_id}/discard",
    )


def _queues_table(ctx: Context, reading: QueuesReading) -> Html:
    rows: list[list[Fragment]] = [
        [
            tag("span", q.queue, class_="mono"),
            q.priority,
            tag("span", q.depth, class_="depth"),
            seconds(q.oldest_age),
            tag("a", q.oldest_job_id[:8], href=f"/jobs/{q.oldest_job_id}", class_="mono")
            if q.oldest_job_id
            else "",
            reading.unacked.get(q.queue, 0),
            reading.waiting_in_ledger.get(q.model_id, 0),
        ]
        for q in reading.queues
    ]
    rendered = table(
        [
            "Queue",
            "Priority",
            "Waiting",
            "Oldest waits",
            "Oldest job",
            "Taken by a worker",
            "Queued in the ledger",
        ],
        rows,
        id_="queues",
        empty="No queue holds a job.",
    )
    if reading.error:
        return join([tag("div", f"Broker: {reading.error}", class_="flash error"), rendered])
    return rendered


def _meter(used: float | None, total: float | None) -> Html:
    if used is None or not total:
        return Html("")
    width = 90 * max(0.0, min(1.0, used / total))
    return tag(
        "svg",
        tag("rect", x=0, y=0, width=90, height=8, class_="back"),
        tag("rect", x=0, y=0, width=f"{width:.1f}", height=8, class_="fill"),
        class_="meter",
        viewBox="0 0 90 8",
        role="img",
        aria_label=f"{100 * used / total:.0f} %",
    )


def _liveness(worker: WorkerView) -> str:
    return "alive" if worker.alive else "silent"


def _workers_table(ctx: Context, workers: Sequence[WorkerView]) -> Html:
    rows: list[list[Fragment]] = []
    for w in workers:
        gpu: Fragment = w.gpu_name or w.device
        memory: Fragment = ""
        if w.gpu_memory_total:
            memory = join(
                [
                    _meter(w.gpu_memory_used, w.gpu_memory_total),
                    f" {size(w.gpu_memory_used)} / {size(w.gpu_memory_total)}",
                ]
            )
        utilisation = f"{100 * w.gpu_utilisation:.0f} %" if w.gpu_utilisation is not None else ""
        current: Fragment = (
            join(
                [
                    tag("a", w.current_job[:8], href=f"/jobs/{w.current_job}", class_="mono"),
                    f" for {seconds(ctx.now - w.current_job_since)}" if w.current_job_since else "",
                ]
            )
            if w.current_job
            else tag("span", "idle", class_="muted")
        )
        beat = join(
            [
                tag("span", "alive" if w.alive else "silent", class_=_liveness(w)),
                f", {seconds(max(0.0, ctx.now - w.heartbeat_at))} ago",
            ]
        )  # fmt: skip
        rows.append(
            [
                tag("span", w.name, class_="mono"),
                w.host,
                gpu,
                memory,
                utilisation,
                ", ".join(w.models),
                current,
                w.jobs_done,
                beat,
            ]
        )
    return table(
        ["Worker", "Host", "Device", "GPU memory", "GPU busy", "Models", "Now", "Jobs done",
         "Heartbeat"],
        rows,
        id_="workers",
        empty="No worker has reported in the last hour.",
    )  # fmt: skip


def _destinations_table(
    ctx: Context, destinations: Sequence[DestinationView], *, show: bool
) -> Html:
    rows: list[list[Fragment]] = [
        [
            d.name,
            tag("span", d.address, class_="mono"),
            d.backlog,
            d.dead,
            d.rejected,
            when(d.last_success_at, now=ctx.now),
            join(
                [
                    when(d.last_error_at, now=ctx.now),
                    " ",
                    tag("span", redact(d.last_error, show=show), class_="reason"),
                ]
            )
            if d.last_error
            else "",
        ]
        for d in destinations
    ]
    return table(
        ["Destination", "Address", "Backlog", "Dead", "Rejected", "Last success", "Last error"],
        rows,
        id_="destinations",
        empty="No destinations configured.",
    )


# -- one job --------------------------------------------------------------------------------


def job_page(
    ctx: Context,
    detail: JobDetail,
    *,
    accession: str | None,
    audit: Sequence[AuditEntry],
    flash: str | None = None,
    error: str | None = None,
) -> Html:
    job = detail.job
    show = ctx.principal.authenticated
    facts: list[tuple[str, Fragment]] = [
        ("State", state_badge(job.state)),
        ("Route / model", f"{job.route} / {job.model_id} (priority {job.priority})"),
        ("Sender", f"{job.calling_ae or '?'}: {job.modality or '?'}, {job.instance_count} images"),
        ("Attempts", job.attempts),
        ("Worker", job.worker or ""),
        ("Destinations", ", ".join(job.destinations) or "none (results kept)"),
    ]
    if show:
        facts += [
            ("Accession number", accession or "-"),
            ("Study UID", tag("span", job.study_uid, class_="uid")),
            ("Series UID", tag("span", job.series_uid, class_="uid")),
        ]
    if job.reason:
        facts.append(("Reason", tag("span", redact(job.reason, show=show), class_="reason")))
    if job.discard:
        facts.append(("Discarded", f"by {job.discard.actor}: {job.discard.reason}"))
    times = job.times
    durations = times.durations()
    stage_bounds = {
        "receive": (times.first_received, times.last_received),
        "complete": (times.last_received, times.completed),
        "queue": (times.ready, times.running),
        "infer": (times.running, times.delivering),
        "deliver": (times.delivering, times.accepted),
    }
    stage_rows: list[list[Fragment]] = [
        [stage, when(start, now=ctx.now), when(end, now=ctx.now), seconds(durations[stage])]
        for stage, (start, end) in stage_bounds.items()
    ]
    stage_rows.append(
        [
            tag("strong", "turnaround"),
            when(times.last_received, now=ctx.now),
            when(times.accepted, now=ctx.now),
            tag("strong", seconds(times.turnaround), id="turnaround"),
        ]
    )
    event_rows: list[list[Fragment]] = [
        [
            when(e.at, now=ctx.now),
            state_badge(e.state.value) if e.is_transition else tag("span", "note", class_="muted"),
            redact(e.reason, show=show),
            _timings(e.detail),
        ]
        for e in detail.events
    ]
    outbox_rows: list[list[Fragment]] = [
        [
            item.destination,
            item.kind.value,
            state_badge(item.state.value),
            item.attempts,
            item.last_status if item.last_status is not None else "",
            redact(item.last_error, show=show),
            when(item.sent_at, now=ctx.now),
            *([tag("span", item.sop_instance_uid, class_="uid")] if show else []),
        ]
        for item in detail.outbox
    ]
    body: list[Fragment] = [
        tag("div", flash, class_="flash", id="flash") if flash else "",
        tag("div", error, class_="flash error", id="flash-error") if error else "",
        tag("dl", *(join([tag("dt", k), tag("dd", v)]) for k, v in facts), class_="facts"),
        _actions(ctx, detail),
        tag("h2", "Stages (latest run)"),
        table(["Stage", "From", "To", "Took"], stage_rows, id_="stages", empty=""),
        tag("h2", "History"),
        table(["When", "State", "Reason", "Timings"], event_rows, id_="events", empty="None."),
        tag("h2", "Outbox"),
        table(
            [
                "Destination",
                "Kind",
                "State",
                "Attempts",
                "Status",
                "Last error",
                "Sent",
                *(["SOP Instance UID"] if show else []),
            ],
            outbox_rows,
            id_="outbox",
            empty="Nothing to deliver (yet).",
        ),
    ]
    if detail.quarantine:
        body += [
            tag("h2", "Quarantine"),
            table(
                ["When", "Stage", "Reason"],
                [
                    [when(q.at, now=ctx.now), q.stage, redact(q.reason, show=show)]
                    for q in detail.quarantine
                ],
                id_="quarantine",
                empty="",
            ),
        ]
    if show:
        body += [tag("h2", "Audit"), _audit_table(ctx, audit, id_="job-audit")]
    return page(ctx, f"Job {job.job_id[:8]}", tag("h2", f"Job {job.job_id}"), *body)


def _timings(detail: dict[str, object]) -> str:
    timings = detail.get("timings")
    if not isinstance(timings, dict):
        return ""
    return ", ".join(
        f"{k} {seconds(float(v))}" for k, v in timings.items() if isinstance(v, int | float)
    )


def _actions(ctx: Context, detail: JobDetail) -> Html:
    if not ctx.principal.is_admin:
        return Html("")
    job = detail.job
    forms: list[Fragment] = []
    if job.failed:
        forms.append(_action_form(ctx, job.job_id, "retry", "Retry"))
    if job.state == "NEEDS_REVIEW":
        forms.append(_action_form(ctx, job.job_id, "release", "Release held results"))
    undelivered = [i for i in detail.outbox if i.state.value in ("DEAD", "REJECTED")]
    if undelivered and job.state in ("FAILED", "DONE", DISCARDED):
        forms.append(_action_form(ctx, job.job_id, "resend", "Re-send results"))
    if job.state in {s.value for s in DISCARDABLE} and job.state != DISCARDED:
        forms.append(_discard_form(ctx, job.job_id))
    if not forms:
        return Html("")
    return tag("div", tag("h2", "Actions"), *forms, class_="actions", id="actions")


def _action_form(ctx: Context, job_id: str, action: str, label: str) -> Html:
    return tag(
        "form",
        _csrf(ctx),
        tag("button", label, type="submit", class_="act", id=f"action-{action}"),
        method="post",
        action=f"/jobs/{job_id}/{action}",
    )


# -- audit, sign-in, errors -------------------------------------------------------------------


def _audit_table(ctx: Context, entries: Sequence[AuditEntry], *, id_: str) -> Html:
    return table(
        ["When", "Who", "Role", "Action", "Job", "Outcome", "Detail", "From"],
        [
            [
                when(e.at, now=ctx.now),
                e.actor,
                e.role,
                e.action,
                tag("a", e.job_id[:8], href=f"/jobs/{e.job_id}", class_="mono") if e.job_id else "",
                e.outcome,
                e.detail,
                e.remote,
            ]
            for e in entries
        ],
        id_=id_,
        empty="Nothing recorded.",
    )


def audit_page(ctx: Context, entries: Sequence[AuditEntry]) -> Html:
    return page(ctx, "Audit log", tag("h2", "Audit log"), _audit_table(ctx, entries, id_="audit"))


def login_page(title: str, *, next_path: str, failed: bool) -> Html:
    form = tag(
        "form",
        tag("h2", f"pacs-ai {title}"),
        tag("div", "Wrong user name or password.", class_="flash error") if failed else "",
        tag("label", "User", for_="user"),
        void("input", id="user", name="user", autocomplete="username", required=True),
        tag("label", "Password", for_="password"),
        void(
            "input",
            id="password",
            name="password",
            type="password",
            autocomplete="current-password",
            required=True,
        ),
        void("input", type="hidden", name="next", value=next_path),
        tag("button", "Sign in", type="submit"),
        method="post",
        action="/login",
        class_="login",
    )
    return join(
        [
            Html("<!doctype html>"),
            tag(
                "head",
                void("meta", charset="utf-8"),
                tag("title", f"Sign in - pacs-ai {title}"),
                void("link", rel="stylesheet", href="/static/style.css"),
            ),
            tag("body", tag("main", form)),
        ]
    )


def message_page(ctx: Context, heading: str, message: str) -> Html:
    return page(ctx, heading, tag("h2", heading), tag("p", message), refresh=False)
