"""Jobs whose worker died are ended by any other worker: failed, or done when the document was
stored before the crash; a live worker's heartbeats keep its jobs from being taken."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import numpy as np
from sqlalchemy import update

from app.api.admission import Gate
from app.api.worker import INTERRUPTED, JobWorker, Progress
from app.reading import Reading
from memory import JobStatus, NewEpisode
from memory.tables import JobRow, utcnow


def _age(reading: Reading, job_id: str, seconds: float) -> None:
    with reading.store.database.session() as session:
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )


def worker(reading: Reading, stale_s: float = 5.0) -> JobWorker:
    return JobWorker(reading.store, heartbeat_s=0.1, stale_s=stale_s)


def test_abandoned_jobs_are_failed_or_finished(reading: Reading) -> None:
    store = reading.store
    lost = store.namespace("tenant:acme/documents/lost")
    saved = store.namespace("tenant:acme/documents/saved")
    fresh = store.namespace("tenant:acme/documents/fresh")
    jobs = {name: store.jobs.create("ingest", namespace_id=space.id)
            for name, space in (("lost", lost), ("saved", saved), ("fresh", fresh))}  # fmt: skip
    queued = store.jobs.create("summarize", namespace_id=lost.id)
    for name in ("lost", "saved", "fresh"):
        store.jobs.start(jobs[name].id)
    # The "saved" ingest committed its document just before its worker died.
    store.add_document(
        saved.name, "doc", "Some text.", [NewEpisode("Some text.", token_count=3)],
        np.ones((1, store.embedder.dimension), np.float32) / np.sqrt(store.embedder.dimension),
    )  # fmt: skip
    for job in (jobs["lost"], jobs["saved"], queued):
        _age(reading, job.id, 60)

    ended = worker(reading).reap()
    assert sorted(ended) == sorted([jobs["lost"].id, jobs["saved"].id, queued.id])
    failed = store.jobs.get(jobs["lost"].id)
    assert failed.status is JobStatus.FAILED and failed.error == INTERRUPTED
    assert store.jobs.get(queued.id).status is JobStatus.FAILED
    done = store.jobs.get(jobs["saved"].id)
    assert done.status is JobStatus.DONE and done.result == {
        "document_id": saved.id, "chars": 10, "episodes": 1
    }  # fmt: skip
    assert store.jobs.get(jobs["fresh"].id).status is JobStatus.RUNNING  # heartbeat is recent
    assert worker(reading).reap() == []  # nothing twice


def test_heartbeats_keep_a_long_job_alive(reading: Reading) -> None:
    store = reading.store
    space = store.namespace("tenant:acme/documents/long")

    async def scenario() -> None:
        first = worker(reading, stale_s=0.6)
        await first.start()
        release = asyncio.Event()

        async def work(progress: Progress) -> dict[str, int]:
            progress(5, 10)
            await release.wait()
            return {"ok": 1}

        job = store.jobs.create("ingest", namespace_id=space.id)
        first.submit(job, work, Gate("job", slots=1, queue=1, per_tenant=1).enter("acme"))
        await asyncio.sleep(1.5)  # well past stale_s: only heartbeats keep it
        other = worker(reading, stale_s=0.6)  # another API worker on the same database
        assert await asyncio.to_thread(other.reap) == []
        running = store.jobs.get(job.id)
        assert running.status is JobStatus.RUNNING and running.progress == 0.5
        release.set()
        for _ in range(50):
            if store.jobs.get(job.id).status is JobStatus.DONE:
                break
            await asyncio.sleep(0.05)
        assert store.jobs.get(job.id).result == {"ok": 1}
        await first.stop()

    asyncio.run(scenario())


def test_stopping_fails_unfinished_jobs_cleanly(reading: Reading) -> None:
    store = reading.store
    space = store.namespace("tenant:acme/documents/stop")

    async def scenario() -> str:
        running = worker(reading)
        await running.start()

        async def forever(progress: Progress) -> dict[str, int]:
            await asyncio.Event().wait()
            return {}

        job = store.jobs.create("ingest", namespace_id=space.id)
        running.submit(job, forever, Gate("job", slots=1, queue=1, per_tenant=1).enter("acme"))
        await asyncio.sleep(0.2)
        await running.stop()
        return job.id

    job = store.jobs.get(asyncio.run(scenario()))
    assert job.status is JobStatus.FAILED and "shut down" in (job.error or "")
