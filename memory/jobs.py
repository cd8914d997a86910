"""Jobs in SQL: long work whose progress any worker can report and that survives restarts."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from memory.database import Database
from memory.errors import InvalidRecord, NotFound
from memory.records import Job, JobStatus
from memory.tables import JobRow, utcnow

_FINISHED = (JobStatus.DONE.value, JobStatus.FAILED.value)


def to_job(row: JobRow) -> Job:
    return Job(
        id=row.id,
        namespace_id=row.namespace_id,
        kind=row.kind,
        status=JobStatus(row.status),
        progress=row.progress,
        done=row.done,
        total=row.total,
        error=row.error,
        payload=dict(row.payload),
        result=None if row.result is None else dict(row.result),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class SqlJobStore:
    """Create jobs, move them queued → running → done | failed, report progress."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def create(
        self,
        kind: str,
        *,
        namespace_id: int | None = None,
        total: int = 0,
        payload: Mapping[str, Any] | None = None,
    ) -> Job:
        with self.database.session() as session:
            row = JobRow(
                id=str(uuid.uuid4()),
                namespace_id=namespace_id,
                kind=kind,
                status=JobStatus.QUEUED.value,
                progress=0.0,
                done=0,
                total=total,
                payload=dict(payload or {}),
            )
            session.add(row)
            session.flush()
            return to_job(row)

    def get(self, job_id: str) -> Job:
        with self.database.session() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"job {job_id!r} does not exist")
            return to_job(row)

    def recent(self, *, namespace_id: int | None = None, limit: int = 100) -> list[Job]:
        with self.database.session() as session:
            query = select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)
            if namespace_id is not None:
                query = query.where(JobRow.namespace_id == namespace_id)
            return [to_job(row) for row in session.scalars(query)]

    def _move(self, job_id: str, allowed_from: tuple[str, ...], **values: Any) -> Job:
        """Update a job only if it is in one of ``allowed_from`` states (atomic across workers)."""
        with self.database.session() as session:
            result = session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status.in_(allowed_from))
                .values(updated_at=utcnow(), **values)
            )
            row = session.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"job {job_id!r} does not exist")
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise InvalidRecord(
                    f"job {job_id!r} is {row.status}; it can change only from {allowed_from}"
                )
            session.refresh(row)
            return to_job(row)

    def start(self, job_id: str) -> Job:
        """Claim a queued job; only one worker can win the claim."""
        return self._move(job_id, (JobStatus.QUEUED.value,), status=JobStatus.RUNNING.value)

    def report(self, job_id: str, done: int, total: int | None = None) -> Job:
        """Record progress on a running job (``done`` of ``total`` units)."""
        if done < 0 or (total is not None and total < 0):
            raise InvalidRecord(f"progress {done}/{total} is negative")
        values: dict[str, Any] = {"done": done}
        with self.database.session() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"job {job_id!r} does not exist")
            total = row.total if total is None else total
        values["total"] = total
        values["progress"] = min(1.0, done / total) if total else 0.0
        return self._move(job_id, (JobStatus.RUNNING.value,), **values)

    def finish(self, job_id: str, result: Mapping[str, Any] | None = None) -> Job:
        return self._move(
            job_id,
            (JobStatus.RUNNING.value,),
            status=JobStatus.DONE.value,
            progress=1.0,
            result=dict(result or {}),
        )

    def fail(self, job_id: str, error: str) -> Job:
        return self._move(
            job_id,
            (JobStatus.QUEUED.value, JobStatus.RUNNING.value),
            status=JobStatus.FAILED.value,
            error=error,
        )

    def note(self, job_id: str, payload: Mapping[str, Any]) -> Job:
        """Replace a running job's payload (what it has produced so far, for others to read);
        :class:`InvalidRecord` once the job has ended (stopped elsewhere, say)."""
        return self._move(job_id, (JobStatus.RUNNING.value,), payload=dict(payload))

    def running(
        self, kind: str, *, namespace_id: int | None = None, queued: bool = False
    ) -> list[Job]:
        """Running jobs of ``kind`` (in ``namespace_id``, when given), oldest first; queued
        ones too when ``queued``."""
        states = [JobStatus.RUNNING.value] + ([JobStatus.QUEUED.value] if queued else [])
        with self.database.session() as session:
            query = (
                select(JobRow)
                .where(JobRow.kind == kind, JobRow.status.in_(states))
                .order_by(JobRow.created_at)
            )
            if namespace_id is not None:
                query = query.where(JobRow.namespace_id == namespace_id)
            return [to_job(row) for row in session.scalars(query)]

    def fail_stale(self, older_than: timedelta, now: datetime | None = None) -> list[str]:
        """Fail running jobs with no progress for ``older_than`` (their worker died).

        Called at start-up so an interrupted job never hangs at "running"; returns their ids.
        """
        cutoff = (now or utcnow()) - older_than
        with self.database.session() as session:
            ids = list(
                session.scalars(
                    select(JobRow.id).where(
                        JobRow.status == JobStatus.RUNNING.value, JobRow.updated_at < cutoff
                    )
                )
            )
            if ids:
                session.execute(
                    update(JobRow)
                    .where(JobRow.id.in_(ids), JobRow.status == JobStatus.RUNNING.value)
                    .values(
                        status=JobStatus.FAILED.value,
                        error="interrupted: the worker stopped before the job finished; retry it",
                        updated_at=utcnow(),
                    )
                )
            return ids
