"""Writer steps and openings as server-side jobs that survive the page.

A run is a row of the jobs table (kind ``story-step`` in the story's namespace, or
``story-opening``) whose payload is the run's progress: the phase, the paragraph exactly as it has
streamed so far, the try and the notice. The payload is written as it grows (at most every
``flush_s``) and on a heartbeat, so a reloaded page, a second tab or the REST API can find the run
and follow it; the task itself lives on the event loop of the process that started it.

- One running step per story: a second is refused with :class:`~app.errors.Conflict` (REST: 409).
- The story's head moves only when the step completes (the writer stores the node last).
- Stop cancels the task; a run stopped from another process is failed in SQL, and its own
  process cancels it at its next write. A run whose process died (no heartbeat for ``stale_s``)
  is failed the next time anyone looks, so nothing hangs at "running".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from datetime import timedelta
from typing import Any, TypeVar

from agents.writer_config import Mode, OnProgress, Progress, check_opening
from app.errors import KNOWN_ERRORS, Conflict
from app.writing import Writing, story_namespace
from memory.errors import InvalidRecord, NotFound
from memory.jobs import SqlJobStore
from memory.records import Job, JobStatus, StoryNode
from memory.tables import utcnow

__all__ = ["OPENING", "STEP", "STOPPED", "Job", "JobStatus", "StoryRuns"]

log = logging.getLogger(__name__)

STEP = "story-step"
OPENING = "story-opening"
STOPPED = "Stopped: nothing was stored."

Work = Callable[[OnProgress], Awaitable[tuple[int, StoryNode]]]
"""A run's work: given a progress listener, the story id and the node it stored."""
T = TypeVar("T")


class StoryRuns:
    """Start, follow and stop the writer's runs."""

    def __init__(
        self, writing: Writing, *, flush_s: float = 0.5, heartbeat_s: float = 2.0,
        stale_s: float = 30.0,
    ) -> None:  # fmt: skip
        self.writing = writing
        self.jobs = SqlJobStore(writing.reading.store.database)
        self.flush_s = flush_s
        self.heartbeat_s = heartbeat_s
        self.stale = timedelta(seconds=stale_s)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._live: dict[str, dict[str, Any]] = {}
        """The freshest payload of this process's runs (the SQL row lags by ``flush_s``)."""
        self._queueing = threading.Lock()
        """Held while a step is checked and queued (in a worker thread, off the event loop)."""

    # -- starting -----------------------------------------------------------------------------

    async def step(
        self,
        story_id: int,
        *,
        plan: str | None = None,
        action: str | None = None,
        parent_id: int | None = None,
        regenerate: int | None = None,
    ) -> Job:
        """Start writing the next paragraph (or another take on node ``regenerate``)."""

        def queue() -> tuple[Job, str | None, str | None, int | None]:
            with self._queueing:  # one check-then-create at a time: no two steps of a story
                return queued()

        def queued() -> tuple[Job, str | None, str | None, int | None]:
            story = self.writing.story(story_id)
            chosen_plan, chosen_action, parent = plan, action, parent_id
            if regenerate is not None:
                node = self.writing.node(story_id, regenerate)
                if node.parent_id is None:
                    raise InvalidRecord(
                        "the opening cannot be regenerated; start a new story instead"
                    )
                parent = node.parent_id
                chosen_plan, chosen_action = node.instruction, node.instruction
            elif parent is not None:
                self.writing.node(story_id, parent)
            if (running := self.running(story_id)) is not None:
                raise Conflict(
                    f"story {story_id} is already writing a paragraph (run {running.id}); wait "
                    "for it or stop it first"
                )
            instruction = (chosen_action if story.mode == "interactive" else chosen_plan) or ""
            self.writing.load()  # a model that cannot load fails here, before the run exists
            job = self.jobs.create(
                STEP,
                namespace_id=story.namespace_id,
                payload={"story_id": story_id, "instruction": instruction, "phase": "queued"},
            )
            return self.jobs.start(job.id), chosen_plan, chosen_action, parent

        job, plan, action, parent_id = await self._queued(queue, lambda queued: queued[0])

        async def work(on_progress: OnProgress) -> tuple[int, StoryNode]:
            node = await self.writing.step(
                story_id, plan=plan, action=action, parent_id=parent_id, on_progress=on_progress
            )
            return story_id, node

        return self._launch(job, work)

    async def opening(
        self, genre: str, premise: str, mode: Mode = "novel", *, namespace: str | None = None
    ) -> Job:
        """Start a new story; bad input is refused here, before any model loads."""
        check_opening(genre, premise, mode)
        space = namespace or story_namespace(premise[:40])

        def queue() -> Job:
            self.writing.load()
            job = self.jobs.create(
                OPENING,
                payload={"genre": genre.strip(), "premise": premise.strip(), "mode": mode,
                         "namespace": space, "phase": "queued"},
            )  # fmt: skip
            return self.jobs.start(job.id)

        job = await self._queued(queue, lambda queued: queued)

        async def work(on_progress: OnProgress) -> tuple[int, StoryNode]:
            story, root = await self.writing.start(genre, premise, mode, namespace=space,
                                                   on_progress=on_progress)  # fmt: skip
            return story.id, root

        return self._launch(job, work)

    async def _queued(self, queue: Callable[[], T], job_of: Callable[[T], Job]) -> T:
        """``queue()`` (SQL, and loading the model: they block) in a worker thread, off the event
        loop. A caller cancelled meanwhile leaves no started run behind: its job is failed as
        stopped once the thread is done."""
        pending = asyncio.ensure_future(asyncio.to_thread(queue))
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:

            def stop(done: asyncio.Future[T]) -> None:
                if not done.cancelled() and done.exception() is None:
                    self._end(job_of(done.result()).id, STOPPED)

            pending.add_done_callback(stop)
            raise

    def _launch(self, job: Job, work: Work) -> Job:
        """Run ``work`` for the started ``job`` as a task of the running loop."""
        self._live[job.id] = dict(job.payload)
        self._tasks[job.id] = asyncio.get_running_loop().create_task(self._run(job, work))
        return job

    async def _run(self, job: Job, work: Work) -> None:
        written = {"at": 0.0}

        def on_progress(progress: Progress) -> None:
            payload = {**self._live[job.id], **asdict(progress)}
            self._live[job.id] = payload
            now = time.monotonic()
            if now - written["at"] >= self.flush_s or progress.phase != "paragraph":
                written["at"] = now
                if not self._write(job.id, payload):
                    raise asyncio.CancelledError  # stopped elsewhere: store nothing

        beat = asyncio.create_task(self._beat(job.id))
        try:
            story_id, node = await work(on_progress)
            self.jobs.finish(job.id, {"story_id": story_id, "node_id": node.id})
        except asyncio.CancelledError:
            self._end(job.id, STOPPED)
            raise
        except KNOWN_ERRORS as err:
            self._end(job.id, str(err))
        except Exception:
            log.exception("writer run %s failed", job.id)
            self._end(job.id, "The writer failed unexpectedly; nothing was stored. See the log.")
        finally:
            beat.cancel()
            self._tasks.pop(job.id, None)
            self._live.pop(job.id, None)

    def _write(self, job_id: str, payload: dict[str, Any]) -> bool:
        """Record the payload; False when the run was stopped elsewhere (its row failed)."""
        try:
            self.jobs.note(job_id, payload)
        except InvalidRecord:
            return False
        return True

    async def _beat(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if not await asyncio.to_thread(self._write, job_id, self._live.get(job_id, {})):
                if (task := self._tasks.get(job_id)) is not None:
                    task.cancel()
                return

    def _end(self, job_id: str, error: str) -> None:
        with contextlib.suppress(InvalidRecord):  # already failed: stopped from elsewhere
            self.jobs.fail(job_id, error)

    # -- following ----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The run with its freshest progress (this process's live payload when it has one)."""
        job = self.jobs.get(job_id)
        if job.kind not in (STEP, OPENING):
            raise NotFound(f"run {job_id!r} does not exist")
        return self._fresh(job)

    def running(self, story_id: int) -> Job | None:
        """The step the story is writing now, if any."""
        story = self.writing.story(story_id)
        for job in self.jobs.running(STEP, namespace_id=story.namespace_id):
            if (alive := self._alive(job)) is not None:
                return alive
        return None

    def openings(self) -> list[Job]:
        """Stories being started now."""
        return [j for j in map(self._alive, self.jobs.running(OPENING)) if j is not None]

    def _alive(self, job: Job) -> Job | None:
        if job.id not in self._tasks and utcnow() - job.updated_at > self.stale:
            self._end(job.id, "The writer stopped (the app was restarted); nothing was stored.")
            return None
        return self._fresh(job)

    def _fresh(self, job: Job) -> Job:
        live = self._live.get(job.id)
        if live is None or job.status is not JobStatus.RUNNING:
            return job
        return replace(job, payload=dict(live))

    async def wait(self, job_id: str) -> Job:
        """Wait for a run of this process to end; the ended job."""
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.wait([task])
        return self.jobs.get(job_id)

    def stop(self, job_id: str) -> None:
        """Stop a run, here or in another process; nothing of it is stored."""
        task = self._tasks.get(job_id)
        if task is not None:
            task.get_loop().call_soon_threadsafe(task.cancel)
            return
        self._end(job_id, STOPPED)
