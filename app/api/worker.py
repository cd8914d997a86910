"""Runs the API's jobs (ingest, summarise) in this process, with their state in SQL.

Each job is a coroutine run as an asyncio task once its admission ticket (``app.api.admission``:
at most ``api_job_workers`` at once, a bounded queue, tenants in turn) lets it. Progress is
kept in memory and written to the job row every half second; every ``api_job_heartbeat_s`` the
worker also refreshes ``updated_at`` of every job it holds, queued or running. Any worker ends
the jobs nobody refreshed for ``api_job_stale_s`` (their worker died: killed, crashed, host
lost): an ingest whose document was stored is finished as done (its vectors written from SQL
if the worker died before indexing them), any other is failed with a message saying what to do.
So a job never hangs at "running", and several workers can share one database behind a load
balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from app.api.admission import Ticket
from memory import InvalidRecord, Job, MemoryStore, NotFound
from memory.heartbeats import SqlJobHeartbeat
from memory.tenancy import SqlTenancy

log = logging.getLogger("mneme.api.worker")

INTERRUPTED = (
    "interrupted: the API worker running this job stopped before it finished (restart or "
    "crash); nothing was stored — submit it again"
)
STOPPED = "stopped: the API server shut down before this job finished; submit it again"
_FLUSH_S = 0.5
_INDEX_BATCH = 2000  # embeddings read from SQL per index write when finishing a reaped ingest


@dataclass(slots=True)
class Progress:
    """The latest progress of a job, set from any thread, written to SQL by the worker."""

    done: int = 0
    total: int = 0
    written: tuple[int, int] = (0, 0)
    running: bool = False

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total


Work = Callable[[Progress], Awaitable[Mapping[str, Any]]]
"""A job's body: reports through the :class:`Progress` it is given, returns the job's result."""


@dataclass(slots=True)
class _Held:
    job: Job
    progress: Progress = field(default_factory=Progress)
    task: asyncio.Task[None] | None = None


class JobWorker:
    """Submit jobs; heartbeat them; reap the ones a dead worker left behind."""

    def __init__(self, store: MemoryStore, *, heartbeat_s: float, stale_s: float) -> None:
        self.jobs = store.jobs
        self.heartbeat = SqlJobHeartbeat(store.database)
        self.tenancy = SqlTenancy(store.database)
        self.store = store
        self.heartbeat_s = heartbeat_s
        self.stale = timedelta(seconds=stale_s)
        self._held: dict[str, _Held] = {}
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Reap what dead workers left, then keep heartbeating and reaping in the background."""
        await asyncio.to_thread(self.reap)
        self._loop_task = asyncio.create_task(self._maintain(), name="mneme-api-jobs")

    async def stop(self) -> None:
        """Cancel running jobs and fail them (a clean end, not a stale one)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        held = list(self._held.values())
        for item in held:
            if item.task is not None:
                item.task.cancel()
        for item in held:
            if item.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await item.task
        for item in held:
            with contextlib.suppress(InvalidRecord, NotFound):
                await asyncio.to_thread(self.jobs.fail, item.job.id, STOPPED)
        self._held.clear()

    def submit(self, job: Job, work: Work, ticket: Ticket) -> None:
        """Run ``work`` for the queued ``job`` when ``ticket`` admits it."""
        held = _Held(job)
        self._held[job.id] = held
        held.task = asyncio.create_task(self._run(held, work, ticket), name=f"mneme-job-{job.id}")
        held.task.add_done_callback(lambda _: ticket.release())  # even if it never started

    def cancel(self, job_id: str) -> bool:
        """Stop a job this worker holds (its caller records why); False if it holds none."""
        held = self._held.get(job_id)
        if held is None or held.task is None:
            return False
        held.task.cancel()
        return True

    async def _run(self, held: _Held, work: Work, ticket: Ticket) -> None:
        job_id = held.job.id
        try:
            async with ticket:
                await asyncio.to_thread(self.jobs.start, job_id)
                held.progress.running = True
                try:
                    result = await work(held.progress)
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # the job's edge: record why it failed, keep serving
                    log.warning("job %s failed: %s", job_id, err, exc_info=True)
                    await asyncio.to_thread(self.jobs.fail, job_id, _message(err))
                    return
                await self._flush(held)
                await asyncio.to_thread(self.jobs.finish, job_id, dict(result))
        except (InvalidRecord, NotFound) as err:
            # Reaped meanwhile (this worker looked dead), or its namespace was deleted.
            log.warning("job %s could not be recorded: %s", job_id, err)
        finally:
            self._held.pop(job_id, None)

    async def _flush(self, held: _Held) -> None:
        progress = held.progress
        state = (progress.done, progress.total)
        if progress.running and state != progress.written:
            with contextlib.suppress(InvalidRecord, NotFound):
                await asyncio.to_thread(self.jobs.report, held.job.id, *state)
            progress.written = state

    async def _maintain(self) -> None:
        last_beat = last_reap = time.monotonic()
        while True:
            await asyncio.sleep(min(_FLUSH_S, self.heartbeat_s))
            try:
                for held in list(self._held.values()):
                    await self._flush(held)
                now = time.monotonic()
                if now - last_beat >= self.heartbeat_s:
                    await asyncio.to_thread(self.heartbeat.touch, list(self._held))
                    last_beat = now
                if now - last_reap >= self.stale.total_seconds() / 3:
                    await asyncio.to_thread(self.reap)
                    last_reap = now
            except Exception:  # keep the loop alive through a database hiccup
                log.exception("job heartbeat failed; retrying")

    def reap(self) -> list[str]:
        """End the open jobs whose worker stopped heartbeating; returns their ids."""
        ended = []
        for job in self.heartbeat.stale(self.stale):
            if job.id in self._held:
                continue
            try:
                stored = self._stored_result(job)
                if stored is not None:
                    self._index_from_sql(stored["document_id"])
                    self.jobs.finish(job.id, stored)
                else:
                    self.jobs.fail(job.id, INTERRUPTED)
            except (InvalidRecord, NotFound):
                continue  # another worker ended it first
            log.warning("job %s was abandoned by its worker; ended it", job.id)
            ended.append(job.id)
        return ended

    def _index_from_sql(self, namespace_id: int) -> None:
        """Write the vectors SQL holds and the index lacks: ``MemoryStore`` commits SQL first, so
        a worker killed between the two writes left a stored document its searches cannot find
        (only a restart's reconcile would repair it, and the dead worker's host may not restart).
        """
        wanted = self.store.episodes.vector_state(namespace_id)
        held = self.store.index.entries(namespace_id)
        missing = sorted(i for i, version in wanted.items() if held.get(i) != version)
        for start in range(0, len(missing), _INDEX_BATCH):
            ids, vectors = self.store.episodes.embeddings(
                namespace_id, missing[start : start + _INDEX_BATCH]
            )
            self.store.index.upsert(namespace_id, ids, vectors, [wanted[i] for i in ids])

    def _stored_result(self, job: Job) -> dict[str, Any] | None:
        """An interrupted ingest whose document was committed before the crash is done."""
        if job.kind != "ingest" or job.namespace_id is None or job.status.value != "running":
            return None
        document = self.tenancy.documents([job.namespace_id]).get(job.namespace_id)
        if document is None:
            return None
        space = self.tenancy.namespace(job.namespace_id, "")
        episodes = 0 if space is None else self.store.episodes.count(space.name)
        return {"document_id": job.namespace_id, "chars": document.char_count, "episodes": episodes}


def _message(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) <= 2000 else text[:2000] + "…"
