"""HiAgent: an agent loop over tools with hierarchical working memory and episodic memory.

After Hu et al. (2024, arXiv 2408.09559): the model works in subgoals; the prompt holds the open
subgoal's action/observation pairs in full and every finished subgoal as a summary written once
when it closed (HiAgent's observation summarisation), and the model may ``expand`` a finished
subgoal to see its steps again (trajectory retrieval). Everything is a structured tool call
validated by pydantic — opening and closing subgoals included — never regex on free text.

Across tasks, each finished trajectory is written to episodic memory (EM-LLM); a new task starts
with what it recalls, and the model may ``recall(query)`` more.

Bad input never ends a run: a tool that raises or hangs, an unknown tool, invalid arguments, a
reply that is no tool call, a built-in called in the wrong state — each becomes an observation the
model reads next turn and a ``ToolCalled`` event with its ``error``. A subgoal left open too long
is closed as failed; a run out of turns stops as ``step_limit``. Every step is in SQL before the
next begins, so a crash, a cancellation or a step limit can be resumed with :meth:`Agent.resume`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agents.agent_config import AgentConfig as AgentConfig  # re-exported: its old home
from agents.errors import AgentConfigError, TrajectoryNotResumable
from agents.events import (
    Cancelled,
    Event,
    Finished,
    Remembered,
    RememberFailed,
    RunStarted,
    StepLimitReached,
    TokensUsed,
)
from agents.prompt import (
    ToolCall,
    call_schema,
    full_history_prompt,
    hiagent_prompt,
    system_prompt,
)
from agents.tools import Tool, as_tool
from agents.turns import NAMES, Turns, specs, transcript
from memory.episodic import EpisodicMemory
from memory.errors import NotFound, StoreError
from memory.segmentation import approximate_tokens
from memory.store import MemoryStore
from memory.trajectory import SubgoalStatus, Trajectory, TrajectoryStatus
from memory.working import TrajectoryStore, WorkingMemory
from serving.errors import StructuredOutputError
from serving.llm import LLM, SamplingParams

MIN_WORKING_TOKENS = 128
"""Least room a prompt must leave for the task, the working memory view and the turn line."""


@dataclass(frozen=True, slots=True)
class AgentResult:
    trajectory: Trajectory
    events: tuple[Event, ...]

    @property
    def status(self) -> TrajectoryStatus:
        return self.trajectory.status

    @property
    def answer(self) -> str | None:
        return self.trajectory.answer


class Agent:
    """A HiAgent over ``tools`` (typed functions, LangChain tools or :class:`Tool`).

    ``trajectories`` holds the working memory of each task, in namespace ``namespace`` of
    ``store`` (created if needed; ``app.agent.Agents`` passes the SQL trajectory store);
    ``memory`` is the episodic memory finished trajectories go to and ``recall`` searches
    (None: no long-term memory). ``count_tokens`` is the tokenizer budgets are counted with.
    """

    def __init__(
        self,
        llm: LLM,
        store: MemoryStore,
        namespace: str,
        tools: Iterable[Tool | Callable[..., Any] | Any] = (),
        *,
        trajectories: TrajectoryStore,
        memory: EpisodicMemory | None = None,
        count_tokens: Callable[[str], int] = approximate_tokens,
        config: AgentConfig = AgentConfig(),
    ) -> None:
        self.llm = llm
        self.store = store
        self.trajectories = trajectories
        self.namespace = namespace
        self.memory = memory
        self.count_tokens = count_tokens
        self.config = config
        self.tools = {t.name: t for t in specs(recall=memory is not None)}
        for item in tools:
            offered = as_tool(item)
            if offered.name in self.tools:
                raise AgentConfigError(
                    f"tool name {offered.name!r} is taken (built-ins: "
                    f"{', '.join(NAMES)}; tools are unique); rename the tool"
                )
            self.tools[offered.name] = offered
        self.system = system_prompt(list(self.tools.values()))
        self.call_schema = call_schema(list(self.tools.values()))
        instructions = count_tokens(self.system)
        if instructions + MIN_WORKING_TOKENS > config.prompt_tokens:
            raise AgentConfigError(
                f"prompt_tokens={config.prompt_tokens} leaves no room for working memory: the "
                f"instructions and tool list alone take {instructions} tokens and working memory "
                f"needs {MIN_WORKING_TOKENS} more; raise prompt_tokens or offer fewer tools"
            )
        self.params = SamplingParams(max_tokens=config.reply_tokens, temperature=config.temperature)

    # -- running -----------------------------------------------------------------------------

    async def stream(
        self,
        task: str,
        *,
        cancel: asyncio.Event | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[Event]:
        """Run ``task`` as a new trajectory, yielding events as they happen."""
        await asyncio.to_thread(self.store.namespace, self.namespace)
        working = await asyncio.to_thread(
            self.trajectories.start, self.namespace, task, metadata=metadata
        )
        async for event in self._drive(working, cancel, resumed=False):
            yield event

    async def resume_stream(
        self, trajectory_id: int, *, cancel: asyncio.Event | None = None
    ) -> AsyncIterator[Event]:
        """Continue a stopped trajectory (crash, cancellation, step limit) where it stopped.

        Turns already taken count towards ``max_turns``; a ``step_limit`` trajectory needs an
        agent with a higher limit. A finished one raises :class:`TrajectoryNotResumable`.
        """
        working = await asyncio.to_thread(self.trajectories.resume, trajectory_id)
        if working.trajectory.namespace != self.namespace:
            raise NotFound(
                f"trajectory {trajectory_id} belongs to namespace "
                f"{working.trajectory.namespace!r}, not this agent's {self.namespace!r}"
            )
        status = working.trajectory.status
        if not status.resumable:
            raise TrajectoryNotResumable(
                f"trajectory {trajectory_id} already finished ({status.value}); start a new "
                "task instead"
            )
        working.update(status=TrajectoryStatus.RUNNING)
        async for event in self._drive(working, cancel, resumed=True):
            yield event

    async def run(
        self,
        task: str,
        *,
        on_event: Callable[[Event], None] | None = None,
        cancel: asyncio.Event | None = None,
    ) -> AgentResult:
        """Run ``task`` to the end; ``on_event`` sees each event as it happens."""
        return await self._collect(self.stream(task, cancel=cancel), on_event)

    async def resume(
        self,
        trajectory_id: int,
        *,
        on_event: Callable[[Event], None] | None = None,
        cancel: asyncio.Event | None = None,
    ) -> AgentResult:
        return await self._collect(self.resume_stream(trajectory_id, cancel=cancel), on_event)

    async def _collect(
        self, events: AsyncIterator[Event], on_event: Callable[[Event], None] | None
    ) -> AgentResult:
        seen: list[Event] = []
        async for event in events:
            seen.append(event)
            if on_event is not None:
                on_event(event)
        trajectory_id = seen[0].trajectory_id
        working = await asyncio.to_thread(self.trajectories.resume, trajectory_id)
        return AgentResult(working.trajectory, tuple(seen))

    async def _drive(
        self, working: WorkingMemory, cancel: asyncio.Event | None, *, resumed: bool
    ) -> AsyncIterator[Event]:
        trajectory = working.trajectory
        yield RunStarted(trajectory.id, trajectory.task, resumed, trajectory.turns)
        try:
            recalled = await self._recall_at_start(working)
            turns = Turns(self, working)
            while True:
                if cancel is not None and cancel.is_set():
                    working.update(status=TrajectoryStatus.CANCELLED)
                    yield Cancelled(trajectory.id, working.trajectory.turns)
                    return
                if working.trajectory.turns >= self.config.max_turns:
                    for event in await turns.close_open(SubgoalStatus.FAILED, "run_limit"):
                        yield event
                    working.update(status=TrajectoryStatus.STEP_LIMIT)
                    yield StepLimitReached(trajectory.id, "run", self.config.max_turns)
                    break
                async for event in self._turn(working, turns, recalled):
                    yield event
                if turns.finished:
                    break
        except asyncio.CancelledError:
            working.update(status=TrajectoryStatus.CANCELLED)  # resumable
            raise
        async for event in self._remember(working):
            yield event
        done = working.trajectory
        yield Finished(done.id, done.status.value, done.answer, done.turns)

    async def _turn(
        self, working: WorkingMemory, turns: Turns, recalled: str
    ) -> AsyncIterator[Event]:
        number = working.trajectory.turns + 1
        if self.config.prompt_mode == "standard":
            prompt = full_history_prompt(
                working.trajectory,
                self.system,
                count_tokens=self.count_tokens,
                turn=number,
                max_turns=self.config.max_turns,
            )
        else:
            prompt = hiagent_prompt(
                working,
                self.system,
                prompt_tokens=self.config.prompt_tokens,
                count_tokens=self.count_tokens,
                turn=number,
                max_turns=self.config.max_turns,
                recalled=recalled,
            )
        began = time.perf_counter()
        call: ToolCall | None = None
        problem = ""
        try:
            call = await self.llm.generate_json(prompt.messages, self.call_schema, self.params)
        except StructuredOutputError as err:
            problem = str(err)
        working.turn()
        view = prompt.view
        reply = call.model_dump_json() if call is not None else ""
        yield TokensUsed(
            working.trajectory.id,
            number,
            prompt.tokens,
            self.count_tokens(reply) if reply else 0,
            prompt.tokens if view is None else view.tokens,
            prompt.tokens if view is None else view.budget_tokens,
            view is not None and view.truncated,
            view is not None and view.over_budget,
        )
        if call is None:
            events = await turns.invalid_reply(number, problem, began)
        else:
            events = await turns.dispatch(number, call)
        for event in events:
            yield event

    async def _recall_at_start(self, working: WorkingMemory) -> str:
        """Memories of earlier tasks for this one, found once and kept with the trajectory."""
        trajectory = working.trajectory
        if "recalled" in trajectory.metadata:
            return str(trajectory.metadata["recalled"])
        text = ""
        if self.memory is not None and self.config.recall_at_start:
            try:
                hits = await self.memory.search(
                    trajectory.task, budget_tokens=self.config.recall_tokens
                )
            except StoreError:
                hits = []  # an empty memory (no namespace yet) or a store hiccup: start without
            hits = [h for h in hits if f"trajectory {trajectory.id}\n" not in h.text]
            if hits:
                text = "Memories of earlier tasks:\n" + "\n".join(f"- {h.text}" for h in hits)
        working.update(metadata={"recalled": text})
        return text

    # -- long-term memory --------------------------------------------------------------------

    async def _remember(self, working: WorkingMemory) -> AsyncIterator[Event]:
        trajectory = working.trajectory
        if self.memory is None or not self.config.remember or trajectory.status.resumable:
            return
        if trajectory.metadata.get("remembered_document") is not None:
            return
        try:
            ingested = await self.memory.ingest(
                transcript(trajectory),
                name=f"trajectory {trajectory.id}",
                metadata={"trajectory_id": trajectory.id, "status": trajectory.status.value},
            )
        except StoreError as err:
            yield RememberFailed(trajectory.id, str(err))
            return
        working.update(metadata={"remembered_document": ingested.document.id})
        yield Remembered(trajectory.id, ingested.document.id, len(ingested.episodes))

    async def remember(self, trajectory_id: int) -> list[Event]:
        """Write a finished trajectory to episodic memory (again, after a ``RememberFailed``)."""
        working = await asyncio.to_thread(self.trajectories.resume, trajectory_id)
        return [event async for event in self._remember(working)]
