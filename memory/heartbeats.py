"""Heartbeats of jobs: a live worker touches its jobs; a job whose heartbeat stopped is stale.

:class:`~memory.jobs.SqlJobStore` moves jobs between states; this adds what several workers
behind one load balancer need to notice a dead one: each worker refreshes ``updated_at`` of the
jobs it holds (queued or running) every few seconds, and any worker may take the jobs nobody
refreshed for longer than a timeout and end them (see ``app/api/jobs.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select, update

from memory.database import Database
from memory.jobs import to_job
from memory.records import Job, JobStatus
from memory.tables import JobRow, utcnow

_OPEN = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


class SqlJobHeartbeat:
    """Refresh the jobs a worker holds; find the ones whose worker stopped refreshing them."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def touch(self, job_ids: Sequence[str], now: datetime | None = None) -> None:
        """Mark open jobs among ``job_ids`` as alive now (finished ones are left alone)."""
        if not job_ids:
            return
        with self.database.session() as session:
            session.execute(
                update(JobRow)
                .where(JobRow.id.in_(list(job_ids)), JobRow.status.in_(_OPEN))
                .values(updated_at=now or utcnow())
            )

    def stale(self, older_than: timedelta, now: datetime | None = None) -> list[Job]:
        """Open (queued or running) jobs with no heartbeat for ``older_than``, oldest first."""
        cutoff = (now or utcnow()) - older_than
        with self.database.session() as session:
            rows = session.scalars(
                select(JobRow)
                .where(JobRow.status.in_(_OPEN), JobRow.updated_at < cutoff)
                .order_by(JobRow.updated_at)
            )
            return [to_job(row) for row in rows]
