"""Worker processes: heartbeats and what they report."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, insert, select, update
from sqlalchemy.engine import Connection

from core.ledger.base import LedgerBase
from core.ledger.records import WorkerRecord, WorkerStatus
from core.ledger.rows import _worker_record
from core.ledger.schema import (
    worker_status_table,
    workers_table,
)


class WorkerLedger(LedgerBase):
    """Worker heartbeats."""

    def worker_heartbeat(
        self,
        name: str,
        *,
        host: str,
        pid: int,
        device: str,
        models: Sequence[str],
        status: WorkerStatus | None = None,
    ) -> None:
        """Record that worker ``name`` is alive with ``models`` warm (and its ``status``)."""
        now = time.time()
        with self._engine.begin() as conn:
            if status is not None:
                _put_worker_status(conn, name, status, now)
            exists = conn.execute(
                select(workers_table.c.name).where(workers_table.c.name == name)
            ).first()
            values = {
                "host": host,
                "pid": pid,
                "device": device,
                "models": json.dumps(list(models)),
                "heartbeat_at": now,
            }
            if exists is None:
                conn.execute(insert(workers_table).values(name=name, started_at=now, **values))
            else:
                conn.execute(
                    update(workers_table).where(workers_table.c.name == name).values(**values)
                )

    def workers(self, *, seen_since: float = 0.0) -> list[WorkerRecord]:
        """Workers whose heartbeat is not older than ``seen_since``, with their status."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                workers_query().where(workers_table.c.heartbeat_at >= seen_since)
            ).all()
        return [_worker_record(row) for row in rows]


def workers_query() -> Select[Any]:
    """``workers`` with the status each reported (empty columns where it reported none),
    in the shape :func:`core.ledger.rows._worker_record` maps."""
    status = [c for c in worker_status_table.c if c.name not in ("name", "updated_at")]
    return select(workers_table, *status).select_from(
        workers_table.outerjoin(
            worker_status_table, worker_status_table.c.name == workers_table.c.name
        )
    )


def _put_worker_status(conn: Connection, name: str, status: WorkerStatus, now: float) -> None:
    values = {
        "gpu_name": status.gpu_name,
        "gpu_memory_used": status.gpu_memory_used,
        "gpu_memory_total": status.gpu_memory_total,
        "gpu_utilisation": status.gpu_utilisation,
        "current_job": status.current_job,
        "current_job_since": status.current_job_since,
        "jobs_done": status.jobs_done,
        "updated_at": now,
    }
    changed = conn.execute(
        update(worker_status_table).where(worker_status_table.c.name == name).values(**values)
    ).rowcount
    if not changed:
        conn.execute(insert(worker_status_table).values(name=name, **values))
