"""``pacs-ai status``: the dashboard at a glance in a terminal, or as JSON for scripts.

It reads the same ledger and broker as the dashboard (so it works on any machine that
reaches them) and uses the same stage definitions (:mod:`core.ledger.timeline`).
"""

from __future__ import annotations

import time
from typing import Any

from core.ledger import DISPLAY_STATES, STAGES, JobView, Ledger
from core.quarantine import DOOR_STAGES
from core.queue import BrokerInspector, make_celery
from core.settings import Settings
from monitor import api
from monitor.charts import Bucket
from monitor.formatting import seconds
from monitor.health import node_check, readiness
from monitor.pulls import Pulls, PullView
from monitor.readings import Readings
from monitor.set_aside import set_aside, set_aside_json


def status_data(settings: Settings, *, limit: int, states: list[str] | None) -> dict[str, Any]:
    """Everything ``status --json`` prints (job identifiers included: the caller can read
    the ledger anyway)."""
    ledger = Ledger(settings.resolved_ledger_url)
    app = make_celery(settings)
    try:
        ledger.require_current_schema()
        readings = Readings(settings, ledger, inspector=BrokerInspector(app, socket_timeout=3.0))
        now = readings.now()
        hours = settings.monitor.chart_hours
        # The node itself first: this command runs outside it, so its heartbeat tells.
        node = node_check(readings)
        checks = [node, *readiness(readings)]
        finished = readings.finished_since(now - hours * 3600)
        turnarounds = tuple(f.turnaround for f in finished if f.turnaround is not None)
        window = Bucket(now - hours * 3600, 0, 0, turnarounds)
        counts: dict[str, int] = dict.fromkeys(DISPLAY_STATES, 0)
        for (state, _model), count in readings.job_counts().items():
            counts[state] = counts.get(state, 0) + count
        jobs = readings.jobs(limit=limit, states=states)
        # Retrievals whose process died are ended here as interrupted, never shown RUNNING.
        pulls = Pulls(settings, ledger).recent(limit=5)
        return {
            "generated_at": now,
            "node": settings.node.ae_title,
            "node_status": {"up": node.ok, "detail": node.detail},
            "ready": all(c.ok for c in checks),
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
            "counts": counts,
            "window": {
                "hours": hours,
                "done": sum(1 for f in finished if f.state == "DONE"),
                "failed": sum(1 for f in finished if f.state != "DONE"),
                "turnaround_median": window.median,
                "turnaround_p90": window.p90,
            },
            **api.queues_json(readings.queues()),
            "workers": api.workers_json(readings.workers()),
            "destinations": api.destinations_json(readings.destinations(), identifiers=True),
            "jobs": [_job(job) for job in jobs],
            "set_aside": set_aside_json(set_aside(readings, limit=limit), identifiers=True),
            "pulls": [_pull(view) for view in pulls],
        }
    finally:
        app.close()
        ledger.close()


def _pull(view: PullView) -> dict[str, Any]:
    record, progress = view.retrieval, view.progress
    return {
        "retrieval_id": record.retrieval_id,
        "kind": record.kind,
        "source": record.source,
        "state": record.state.value,
        "reason": record.reason,
        "studies": progress.total,
        "pulled": progress.retrieved,
        "processed": progress.processed,
        "updated_at": record.updated_at,
    }


def _job(job: JobView) -> dict[str, Any]:
    data = api.job_json(job, identifiers=True)
    data.pop("accession_number", None)
    return data


def render_text(data: dict[str, Any]) -> str:
    """The same at a glance, for a terminal (about 120 columns)."""
    lines: list[str] = []
    now = float(data["generated_at"])
    ready = "ready" if data["ready"] else "NOT READY"
    lines.append(f"pacs-ai {data['node']}  {_clock(now)}  {ready}")
    lines.append(f"node  {data['node_status']['detail']}")
    lines.extend(
        f"  ! {c['name']}: {c['detail']}"
        for c in data["checks"]
        if not c["ok"] and c["name"] != "node"
    )
    counts = data["counts"]
    shown = "  ".join(f"{s} {counts[s]}" for s in counts if counts[s])
    lines.append(f"jobs  {shown or 'none yet'}")
    window = data["window"]
    lines.append(
        f"last {window['hours']:g} h: {window['done']} done, {window['failed']} failed; "
        f"turnaround median {seconds(window['turnaround_median']) or '-'}, "
        f"90th percentile {seconds(window['turnaround_p90']) or '-'}"
    )
    lines.append("")
    lines.append("queues" + (f"  (broker: {data['error']})" if data["error"] else ""))
    for q in data["queues"]:
        taken = data["unacked"].get(q["queue"], 0)
        lines.append(
            f"  {q['queue']:32} priority {q['priority']}  waiting {q['depth']:4}  oldest "
            f"{seconds(q['oldest_age_seconds']) or '-':>9}  taken by workers {taken}"
        )
    if not data["queues"]:
        lines.append("  (none)")
    lines.extend(_worker_lines(data["workers"], now))
    lines.extend(_destination_lines(data["destinations"]))
    lines.append("")
    header = f"{'job':8} {'state':14} {'route':14} {'model':12} " + " ".join(
        f"{s:>8}" for s in (*STAGES, "total")
    )
    lines.append(header + "  reason")
    for job in data["jobs"]:
        durations = job["durations"]
        cells = [seconds(durations[s]) or "-" for s in STAGES]
        cells.append(seconds(job["turnaround"]) or "-")
        route = job["route"] + (" (shadow)" if job.get("shadow") else "")
        name = f"{job['job_id'][:8]} {job['state']:14} {route[:14]:14} "
        name += f"{job['model'][:12]:12} "
        reason = f"  {job['reason']}" if job["reason"] else ""
        lines.append(name + " ".join(f"{c:>8}" for c in cells) + reason)
    if not data["jobs"]:
        lines.append("(no jobs yet)")
    lines.extend(_set_aside_lines(data["set_aside"]))
    if data["pulls"]:
        lines.append("")
        lines.append("pulls from a PACS (the most recent)")
    for pull in data["pulls"]:
        reason = f"  {pull['reason']}" if pull["reason"] else ""
        lines.append(
            f"  {pull['retrieval_id'][:8]} {pull['kind']:9} {pull['state']:8} from "
            f"{pull['source']}: {pull['pulled']}/{pull['studies']} pulled, "
            f"{pull['processed']} processed{reason}"
        )
    return "\n".join(lines)


def _worker_lines(workers: list[dict[str, Any]], now: float) -> list[str]:
    lines = ["workers"]
    for w in workers:
        state = {"alive": "alive", "stopped": "stopped"}.get(w["state"], "SILENT")
        device = w["gpu_name"] or w["device"]
        if w["gpu_memory_total"]:
            used, total = w["gpu_memory_used"] or 0, w["gpu_memory_total"]
            device += f" {used / 2**30:.1f}/{total / 2**30:.1f} GiB"
        doing = f"running {w['current_job'][:8]}" if w["current_job"] else "idle"
        if w["stopped_at"] is not None:
            when = f"at {_clock(w['stopped_at'])}"
            doing = "stopped cleanly"
        else:
            when = f"{seconds(now - w['heartbeat_at'])} ago"
        lines.append(
            f"  {w['name']:36} {state} {when}  {device}  "
            f"{','.join(w['models'])}  {doing}  jobs done {w['jobs_done']}"
        )
    if not workers:
        lines.append("  (none in the last hour)")
    return lines


def _destination_lines(destinations: list[dict[str, Any]]) -> list[str]:
    lines = ["destinations"]
    for d in destinations:
        last = _clock(d["last_success_at"]) if d["last_success_at"] else "-"
        error = ""
        if d["last_error"]:
            error = f"  last error {_clock(d['last_error_at'])}: {d['last_error']}"
        lines.append(
            f"  {d['name']:12} {d['address']:32} backlog {d['backlog']}  dead {d['dead']}  "
            f"rejected {d['rejected']}  last success {last}{error}"
        )
        if d["misconfigured"]:
            lines.append(
                f"    MISCONFIGURED since {_clock(d['problem_since'])}: {d['problem']}; "
                f"next attempt {_clock(d['next_attempt_at'])}"
            )
    if not destinations:
        lines.append("  (none)")
    return lines


def _set_aside_lines(aside: dict[str, Any]) -> list[str]:
    """What was received and did not become a result (:mod:`monitor.set_aside`)."""
    lines: list[str] = []
    counts = aside["series_counts"]
    not_routed = sum(counts.get(s, 0) for s in ("UNROUTED", "FAILED", "DISCARDED"))
    lines.append("")
    lines.append(f"series not routed: {not_routed} (UNROUTED, FAILED or DISCARDED), newest first")
    for s in aside["not_routed"]:
        lines.append(
            f"  {s['series_uid']} {s['state']} {s['modality'] or '?'} from {s['calling_ae']} "
            f"({s['instances']} instances, {_clock(s['last_received_at'])}): {s['reason'] or '-'}"
        )
    applicable = len(aside["not_applicable"])
    lines.append(f"jobs not applicable (NOT_APPLICABLE), newest {applicable}")
    for j in aside["not_applicable"]:
        lines.append(f"  {j['job_id'][:8]} {j['route']} -> {j['model']}: {j['reason'] or '-'}")
    quarantine: dict[str, int] = aside["quarantine_counts"]
    for title, records, door in (
        ("instances refused at the door", aside["refused_at_the_door"], True),
        ("quarantined by jobs and deliveries", aside["quarantined"], False),
    ):
        stages = {k: n for k, n in sorted(quarantine.items()) if (k in DOOR_STAGES) == door}
        by_stage = ", ".join(f"{stage} {n}" for stage, n in stages.items())
        total = sum(stages.values())
        lines.append(f"{title}: {total}{f' ({by_stage})' if total else ''}, newest first")
        for r in records:
            who = f" from {r['calling_ae']}" if r["calling_ae"] else ""
            job = f" job {r['job_id'][:8]}" if r["job_id"] else ""
            lines.append(f"  {_clock(r['at'])} {r['stage']}{who}{job}: {r['reason']}")
    return lines


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
