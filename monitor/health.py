"""``/healthz`` (the process answers) and ``/readyz`` (it can do its work).

Ready means all of:

* ``broker``: Redis answers PING (jobs can be queued);
* ``ledger``: the database answers a query;
* ``disk``: the spool's file system has more free space than ``node.min_free_disk_mb``
  (below it the node answers Out of Resources);
* ``workers``: every model that a route names is served by at least one worker whose
  heartbeat is younger than ``worker.lost_after_seconds``.

``pacs-ai status`` adds ``node`` (:func:`node_check`): a ``pacs-ai serve`` process whose
heartbeat is younger than ``worker.lost_after_seconds`` and that has not stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from core.errors import TransientError
from core.ledger import Presence
from core.presence import node_state
from monitor.readings import Readings


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


def readiness(readings: Readings) -> list[Check]:
    """Every readiness check, each with what it found."""
    checks = [_broker(readings), _ledger(readings), _disk(readings)]
    checks.append(_workers(readings) if checks[1].ok else Check("workers", False, "no ledger"))
    return checks


def node_check(readings: Readings) -> Check:
    """``node``: a ``pacs-ai serve`` process records its heartbeat (for ``pacs-ai status``,
    which runs elsewhere; inside the node the answer is the node itself)."""
    try:
        nodes = Presence(readings.ledger).nodes()
    except SQLAlchemyError as exc:
        return Check("node", False, f"cannot read its heartbeat: {type(exc).__name__}")
    state = node_state(
        nodes, now=readings.now(), lost_after=readings.settings.worker.lost_after_seconds
    )
    return Check("node", state.up, state.detail)


def _broker(readings: Readings) -> Check:
    if readings.inspector is None:
        return Check("broker", False, "no broker configured for the monitor")
    try:
        readings.inspector.ping()
    except TransientError as exc:
        return Check("broker", False, str(exc))
    return Check("broker", True, "answers")


def _ledger(readings: Readings) -> Check:
    try:
        readings.ledger.ping()
    except SQLAlchemyError as exc:
        return Check("ledger", False, f"does not answer: {type(exc).__name__}: {exc}")
    return Check("ledger", True, "answers")


def _disk(readings: Readings) -> Check:
    try:
        disk = readings.disk()
    except OSError as exc:
        return Check("disk", False, f"cannot read the spool's file system: {exc}")
    mib = 1024 * 1024
    detail = f"{disk.free // mib} MiB free on {disk.path}, reserve {disk.reserve // mib} MiB"
    return Check("disk", disk.free > disk.reserve, detail)


def _workers(readings: Readings) -> Check:
    routed = sorted({m for route in readings.settings.routes for m in route.models})
    if not routed:
        return Check("workers", True, "no route names a model")
    live = readings.live_models()
    missing = [m for m in routed if m not in live]
    if missing:
        return Check(
            "workers",
            False,
            f"no live worker serves {', '.join(missing)} (heartbeat within "
            f"{readings.settings.worker.lost_after_seconds:g} s)",
        )
    return Check("workers", True, f"live workers serve {', '.join(routed)}")
