"""What an admin may do to a job from the dashboard, each audit-logged in the ledger.

* **retry** a FAILED (or discarded) job: back to READY with its attempts reset; the node
  queues it again at its next round, and the results replace the earlier ones (their UIDs
  are derived from the job's inputs).
* **re-send** a job's results: its DEAD and REJECTED outbox items go back to PENDING and
  the job to DELIVERING (``pacs-ai resend`` performs this same action, audited as ``cli:``);
  a shadow job's kept results, never delivered, go to its destinations' outboxes.
* **release** a result held for review (NEEDS_REVIEW: outside what its model declares
  plausible): its results, written when the job ran, go to the outbox as they are and the
  job to DELIVERING, then DONE as any other (``pacs-ai release`` does the same).
* **discard** a job that failed, is held for review (NEEDS_REVIEW) or has not started to
  run (READY, QUEUED, RETRYING): one not failed ends FAILED with the reason "discarded by
  <who>: <why>" (a held result is then never delivered); a FAILED one keeps
  its failure reason and gets the discard as a note. Either is shown as DISCARDED. A
  message still in the broker is ignored by the worker (the job is finished). Its data
  stays in the spool (retention keeps series with a FAILED job until removed by hand).

Every attempt is written to ``audit_log``: who, which action, which job, when, from
where, and whether it was done (``ok``), impossible in the job's state (``refused``) or
not allowed to the user's role (``denied``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.jobs import JobRecord, JobState
from core.ledger import (
    DeliveryState,
    InvalidTransitionError,
    ItemKind,
    Ledger,
    NewItem,
    Outbox,
)
from monitor.auth import Principal

logger = logging.getLogger(__name__)

#: Why a released shadow job ends DONE undelivered.
SHADOW_RELEASED = "released; shadow: results kept in the node, not delivered"

ACTIONS = ("retry", "resend", "discard", "release")
#: States a job may be discarded from: failed, held for review, or not yet running.
DISCARDABLE = frozenset(
    {
        JobState.FAILED,
        JobState.NEEDS_REVIEW,
        JobState.READY,
        JobState.QUEUED,
        JobState.RETRYING,
    }
)


class ActionRefusedError(Exception):
    """The action is not possible for this job now (the message says why)."""


@dataclass(frozen=True, slots=True)
class ActionResult:
    action: str
    job_id: str
    message: str


class JobActions:
    def __init__(
        self,
        ledger: Ledger,
        *,
        node: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``node``: the node on whose machine this runs (``node.name``); result files on
        another node's disk are checked by that node when it delivers them."""
        self.ledger = ledger
        self.node = node
        self._clock = clock

    def perform(
        self,
        action: str,
        job_id: str,
        principal: Principal,
        *,
        reason: str = "",
        remote: str | None = None,
    ) -> ActionResult:
        """Do ``action`` on ``job_id`` for ``principal`` and audit it.

        Raises:
            PermissionError: the principal is not an admin (audited as ``denied``).
            UnknownJobError: no such job.
            ActionRefusedError: not possible in the job's state (audited as ``refused``).
        """
        if action not in ACTIONS:
            raise ActionRefusedError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
        if not principal.is_admin:
            self.audit(
                principal, action, job_id, "denied", detail={"reason": reason}, remote=remote
            )
            raise PermissionError(f"{action} needs the admin role; {principal.name} is read-only")
        self.ledger.get_job(job_id)  # UnknownJobError
        try:
            if action == "retry":
                message = self._retry(job_id, principal)
            elif action == "resend":
                message = self._resend(job_id, principal)
            elif action == "release":
                message = self._release(job_id, principal)
            else:
                message = self._discard(job_id, principal, reason)
        except ActionRefusedError as exc:
            detail = {"why": str(exc), "reason": reason}
            self.audit(principal, action, job_id, "refused", detail=detail, remote=remote)
            raise
        detail = {"result": message, "reason": reason}
        self.audit(principal, action, job_id, "ok", detail=detail, remote=remote)
        logger.info("%s by %s on job %s: %s", action, principal.name, job_id, message)
        return ActionResult(action, job_id, message)

    def audit(
        self,
        principal: Principal,
        action: str,
        job_id: str | None,
        outcome: str,
        *,
        detail: dict[str, Any] | None = None,
        remote: str | None = None,
    ) -> None:
        self.ledger.record_audit(
            actor=principal.name,
            role=principal.role,
            action=action,
            job_id=job_id,
            outcome=outcome,
            detail=detail,
            remote=remote,
            at=self._clock(),
        )

    def _retry(self, job_id: str, principal: Principal) -> str:
        try:
            self.ledger.transition(
                job_id,
                JobState.READY,
                event_reason=f"retried by {principal.name}",
                detail={"by": principal.name},
                expected={JobState.FAILED},
                reset_attempts=True,
            )
        except InvalidTransitionError as exc:
            raise ActionRefusedError(f"only a FAILED job can be retried: {exc}") from exc
        return "back to READY: the node queues it again"

    def _resend(self, job_id: str, principal: Principal) -> str:
        job = self.ledger.get_job(job_id)
        outbox = Outbox(self.ledger)
        if job.shadow and job.state == JobState.DONE:
            delivered = self._deliver_kept(job, outbox, principal)
            if delivered is not None:
                return delivered
        if not outbox.items(job_id=job_id):
            raise ActionRefusedError(
                f"the job ({job.state}) has no results in the outbox: it did not get as far "
                "as delivery"
            )
        if job.state is JobState.DELIVERING:
            # Waiting in its retry schedule: try now (as ``pacs-ai resend`` does).
            due = outbox.retry_now(job_id=job_id)
            if due == 0:
                raise ActionRefusedError("nothing is waiting for delivery: try again shortly")
            return f"{due} result(s) to be delivered now"
        if job.state not in (JobState.FAILED, JobState.DONE):
            raise ActionRefusedError(f"the job is {job.state}: re-send once it has ended")
        again = outbox.resend(job_id=job_id)
        if again == 0:
            raise ActionRefusedError("nothing to re-send: every result was accepted")
        try:
            self.ledger.transition(
                job_id,
                JobState.DELIVERING,
                reason=f"re-send requested by {principal.name}",
                detail={"by": principal.name},
            )
        except InvalidTransitionError as exc:  # changed meanwhile
            raise ActionRefusedError(str(exc)) from exc
        return f"{again} result(s) queued for delivery again"

    def _deliver_kept(self, job: JobRecord, outbox: Outbox, principal: Principal) -> str | None:
        """Deliver a shadow job's kept results (those not yet accepted) to its
        destinations; ``None`` when every one was delivered already."""
        if not job.destinations:
            raise ActionRefusedError(
                "a shadow job without destinations (pacs-ai run --keep alone): its results "
                "have nowhere to go; run it again with --send-results-to"
            )
        sent = {
            (item.destination, item.sop_instance_uid)
            for item in outbox.items(job_id=job.job_id, states=[DeliveryState.SENT])
        }
        items = [
            item
            for item in _kept_items(job, what="kept", here=self.node)
            if (item.destination, item.sop_instance_uid) not in sent
        ]
        if not items:
            return None
        try:
            self.ledger.transition(
                job.job_id,
                JobState.DELIVERING,
                reason=f"shadow results sent on request of {principal.name}",
                detail={"by": principal.name},
                expected={JobState.DONE},
            )
        except InvalidTransitionError as exc:
            raise ActionRefusedError(f"the job changed meanwhile: {exc}") from exc
        outbox.add(items)
        return f"{len(items)} kept result(s) of the shadow job queued for delivery"

    def _release(self, job_id: str, principal: Principal) -> str:
        job = self.ledger.get_job(job_id)
        if job.state != JobState.NEEDS_REVIEW:
            raise ActionRefusedError(
                f"only a result held for review (NEEDS_REVIEW) can be released; the job is "
                f"{job.state}"
            )
        items = _kept_items(job, what="held", here=self.node)
        detail = {"by": principal.name}
        try:
            # The transition first, checked in its transaction: a release cannot race a
            # discard or a re-run into delivering what they ended.
            self.ledger.transition(
                job_id,
                JobState.DELIVERING,
                reason=f"released by {principal.name}",
                detail=detail,
                expected={JobState.NEEDS_REVIEW},
            )
        except InvalidTransitionError as exc:
            raise ActionRefusedError(f"the job changed meanwhile: {exc}") from exc
        if not job.destinations:
            self.ledger.transition(job_id, JobState.DONE, reason="no destinations: results kept")
            return "released: no destinations, results kept"
        if job.shadow:
            self.ledger.transition(job_id, JobState.DONE, reason=SHADOW_RELEASED)
            return "released: a shadow job's results are kept (re-send delivers them)"
        Outbox(self.ledger).add(items)
        return f"released: {len(items)} result(s) queued for delivery"

    def _discard(self, job_id: str, principal: Principal, reason: str) -> str:
        why = " ".join(reason.split())
        if not why:
            raise ActionRefusedError("say why the job is discarded (the reason is recorded)")
        text = f"discarded by {principal.name}: {why}"
        detail = {"discarded_by": principal.name}
        job = self.ledger.get_job(job_id)
        if job.state == JobState.FAILED:
            self.ledger.note(job_id, text, detail)
        else:
            try:
                self.ledger.transition(
                    job_id, JobState.FAILED, reason=text, detail=detail, expected=DISCARDABLE
                )
            except InvalidTransitionError as exc:
                raise ActionRefusedError(
                    f"a {job.state} job cannot be discarded; wait until it has ended"
                ) from exc
        # Taken after the job's own event: the dashboard shows a job DISCARDED while its
        # discard is its newest change.
        self.ledger.record_discard(job_id, actor=principal.name, reason=why, at=self._clock())
        return "discarded"


def _kept_items(job: JobRecord, *, what: str, here: str | None) -> list[NewItem]:
    """The outbox items of the results a job wrote and kept (held for review, or a
    shadow job's), for each of its destinations, each delivered by the node whose disk
    holds its file (``result["node"]``; none recorded: any node).

    Raises:
        ActionRefusedError: some of the files are gone (retention, by hand); checked on
            this machine (``here``) unless another node holds them.
    """
    deliveries: dict[str, list[list[str]]] = job.result.get("deliveries", {})
    node: str | None = job.result.get("node")
    items = [
        NewItem(
            destination=name,
            kind=ItemKind.RESULT,
            job_id=job.job_id,
            series_uid=job.series_instance_uid,
            route=job.route,
            sop_instance_uid=uid,
            sop_class_uid=sop_class,
            path=path,
            node=node,
        )
        for name in job.destinations
        for _kind, uid, sop_class, path in deliveries.get(name, [])
    ]
    elsewhere = node is not None and node != here
    gone = [] if elsewhere else [item.path for item in items if not Path(item.path).is_file()]
    if gone:
        raise ActionRefusedError(
            f"{len(gone)} {what} result file(s) are gone (first: {gone[0]}); retry the job "
            "to make them again"
        )
    return items
