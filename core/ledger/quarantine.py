"""Quarantined instances: what was set aside, where, and why."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import insert, select

from core.ledger.base import LedgerBase
from core.ledger.records import QuarantineRecord
from core.ledger.rows import _quarantine_record
from core.ledger.schema import (
    quarantine_table,
)


class QuarantineLedger(LedgerBase):
    """The quarantine's records."""

    def record_quarantine(
        self,
        *,
        stage: str,
        reason: str,
        path: str,
        sop_instance_uid: str | None = None,
        series_uid: str | None = None,
        job_id: str | None = None,
        calling_ae: str | None = None,
        quarantine_id: str | None = None,
        at: float | None = None,
    ) -> str:
        qid = quarantine_id or uuid.uuid4().hex
        with self._engine.begin() as conn:
            conn.execute(
                insert(quarantine_table).values(
                    quarantine_id=qid,
                    at=time.time() if at is None else at,
                    stage=stage,
                    reason=reason,
                    path=path,
                    sop_instance_uid=sop_instance_uid,
                    series_uid=series_uid,
                    job_id=job_id,
                    calling_ae=calling_ae,
                )
            )
        return qid

    def quarantined(self, *, series_uid: str | None = None) -> list[QuarantineRecord]:
        query = select(quarantine_table).order_by(quarantine_table.c.at)
        if series_uid is not None:
            query = query.where(quarantine_table.c.series_uid == series_uid)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_quarantine_record(row) for row in rows]
