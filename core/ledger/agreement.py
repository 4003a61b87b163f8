"""The finished jobs of a model, for agreement reports (``pacs-ai compare``).

A job is finished when its results were written: DONE (delivered, kept by a shadow route,
or delivered flagged) or NEEDS_REVIEW (held, results written but not delivered). Read
through ``ix_jobs_state_updated_at``, newest first, bounded by ``limit``.
"""

from __future__ import annotations

from sqlalchemy import select

from core.jobs import JobRecord, JobState
from core.ledger.base import LedgerBase
from core.ledger.rows import _job_record
from core.ledger.schema import jobs_table

#: States in which a job's results exist.
FINISHED_STATES = (JobState.DONE, JobState.NEEDS_REVIEW)


class Agreement(LedgerBase):
    def finished_jobs(
        self, model_id: str, *, since: float | None = None, limit: int = 10_000
    ) -> list[JobRecord]:
        """The finished jobs of ``model_id`` (last changed at or after ``since``, a Unix
        time), newest first; of several on one series, each is returned."""
        query = (
            select(jobs_table)
            .where(jobs_table.c.model_id == model_id)
            .where(jobs_table.c.state.in_([s.value for s in FINISHED_STATES]))
            .order_by(jobs_table.c.updated_at.desc())
            .limit(limit)
        )
        if since is not None:
            query = query.where(jobs_table.c.updated_at >= since)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_job_record(row) for row in rows]
