"""Jobs: status moves, single claim, progress, stale jobs failed at start-up."""

from __future__ import annotations

from datetime import timedelta

import pytest

from memory import Database, InvalidRecord, JobStatus, NotFound
from memory.jobs import SqlJobStore
from memory.tables import utcnow


def test_job_lifecycle(database: Database) -> None:
    jobs = SqlJobStore(database)
    job = jobs.create("ingest", total=10, payload={"document_id": 3})
    assert (job.status, job.progress, job.payload) == (JobStatus.QUEUED, 0.0, {"document_id": 3})
    assert jobs.start(job.id).status is JobStatus.RUNNING
    with pytest.raises(InvalidRecord, match="running"):
        jobs.start(job.id)  # a second worker cannot claim it
    assert jobs.report(job.id, 4).progress == pytest.approx(0.4)
    assert jobs.report(job.id, 5, total=20).progress == pytest.approx(0.25)
    done = jobs.finish(job.id, {"episodes": 42})
    assert (done.status, done.progress, done.result) == (JobStatus.DONE, 1.0, {"episodes": 42})
    with pytest.raises(InvalidRecord):
        jobs.fail(job.id, "too late")
    assert jobs.get(job.id) == done
    assert [j.id for j in jobs.recent()] == [job.id]


def test_unknown_job_and_bad_progress(database: Database) -> None:
    jobs = SqlJobStore(database)
    with pytest.raises(NotFound):
        jobs.get("nope")
    job = jobs.start(jobs.create("ingest").id)
    with pytest.raises(InvalidRecord, match="negative"):
        jobs.report(job.id, -1)


def test_stale_running_jobs_are_failed_not_left_hanging(database: Database) -> None:
    jobs = SqlJobStore(database)
    stale = jobs.start(jobs.create("ingest").id)
    fresh_queued = jobs.create("ingest")
    failed = jobs.fail_stale(timedelta(minutes=5), now=utcnow() + timedelta(minutes=10))
    assert failed == [stale.id]
    got = jobs.get(stale.id)
    assert got.status is JobStatus.FAILED and "interrupted" in (got.error or "")
    assert jobs.get(fresh_queued.id).status is JobStatus.QUEUED
    assert jobs.fail_stale(timedelta(minutes=5)) == []
