"""The audit log (who did what, when, from where) and operators' discards of jobs."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import insert, select, update

from core.ledger.base import LedgerBase
from core.ledger.records import AuditEntry
from core.ledger.rows import _audit_entry
from core.ledger.schema import audit_table, job_discards_table


class AuditLedger(LedgerBase):
    """Operator actions and sign-ins, and the jobs operators discarded."""

    def record_audit(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        outcome: str,
        job_id: str | None = None,
        detail: dict[str, Any] | None = None,
        remote: str | None = None,
        at: float | None = None,
    ) -> None:
        """Add an entry to the audit log; empty values of ``detail`` are left out (it is
        stored as a JSON object, ``{}`` when nothing is left)."""
        kept = {key: value for key, value in (detail or {}).items() if value}
        with self._engine.begin() as conn:
            conn.execute(
                insert(audit_table).values(
                    at=time.time() if at is None else at,
                    actor=actor,
                    role=role,
                    action=action,
                    job_id=job_id,
                    outcome=outcome,
                    detail=json.dumps(kept),
                    remote=remote,
                )
            )

    def audit_entries(
        self, *, limit: int = 100, job_id: str | None = None, action: str | None = None
    ) -> list[AuditEntry]:
        """The newest ``limit`` entries, newest first, of one job or action if given."""
        query = select(audit_table).order_by(audit_table.c.audit_id.desc()).limit(limit)
        if job_id is not None:
            query = query.where(audit_table.c.job_id == job_id)
        if action is not None:
            query = query.where(audit_table.c.action == action)
        with self._engine.connect() as conn:
            return [_audit_entry(row) for row in conn.execute(query)]

    def record_discard(self, job_id: str, *, actor: str, reason: str, at: float) -> None:
        """Record that ``actor`` discarded the job: it is shown as DISCARDED while this is
        newer than the job's last change (:mod:`core.ledger.read_models`)."""
        values = {"at": at, "actor": actor, "reason": reason}
        with self._engine.begin() as conn:
            existing = conn.execute(
                select(job_discards_table.c.job_id).where(job_discards_table.c.job_id == job_id)
            ).first()
            if existing is None:
                conn.execute(insert(job_discards_table).values(job_id=job_id, **values))
            else:
                conn.execute(
                    update(job_discards_table)
                    .where(job_discards_table.c.job_id == job_id)
                    .values(**values)
                )
