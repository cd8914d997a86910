"""One turn of a HiAgent run: the built-in tools (subgoals, expand, recall, finish), the user's
tools with timeouts, and every kind of bad call turned into an observation and an event.

A turn that yields an observation records it as a step of the open subgoal; if none is open the
agent opens one itself (``SubgoalOpened(implicit=True)``), so every step belongs to a subgoal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pydantic import BaseModel, Field, ValidationError

from agents.agent_config import AgentConfig
from agents.events import (
    CloseReason,
    Event,
    StepLimitReached,
    SubgoalClosed,
    SubgoalOpened,
    SummarySource,
    ToolCalled,
    ToolErrorKind,
)
from agents.prompt import SubgoalSummary, ToolCall
from agents.tools import Tool
from memory.episodic import EpisodicMemory
from memory.errors import NotFound, StoreError
from memory.trajectory import Subgoal, SubgoalStatus, Trajectory, TrajectoryStatus
from memory.window import step_lines
from memory.working import WorkingMemory
from serving.errors import LLMError
from serving.llm import LLM, ChatMessage, SamplingParams
from serving.structured import describe_validation_error


class TurnHost(Protocol):
    """What a turn needs of the agent that runs it (:class:`agents.hiagent.Agent`)."""

    llm: LLM
    memory: EpisodicMemory | None
    config: AgentConfig
    tools: dict[str, Tool]
    count_tokens: Callable[[str], int]


log = logging.getLogger(__name__)


def observation_of(value: Any, limit: int) -> str:
    """A tool's result as text, cut to ``limit`` characters."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, BaseModel):
        text = value.model_dump_json()
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    if len(text) > limit:
        text = text[:limit] + f" …[cut {len(text) - limit} characters]"
    return text


def action_of(name: str, arguments: Mapping[str, Any]) -> str:
    return f"{name}({json.dumps(dict(arguments), ensure_ascii=False, default=str)})"


IMPLICIT_GOAL = "(opened by the agent: the model acted with no subgoal open)"


class OpenSubgoal(BaseModel):
    goal: str = Field(min_length=1, max_length=400)


class CloseSubgoal(BaseModel):
    result: str = Field(max_length=1000)
    success: bool = True


class Expand(BaseModel):
    subgoal_ids: list[int] = Field(min_length=1, max_length=10)


class Recall(BaseModel):
    query: str = Field(min_length=1, max_length=400)


class Finish(BaseModel):
    answer: str = Field(max_length=4000)
    success: bool = True


async def _built_in(values: dict[str, Any]) -> Any:
    raise AssertionError("built-in tools are run by Turns.dispatch")


def specs(*, recall: bool) -> list[Tool]:
    """The built-in tools, as the model sees them (``recall`` only with episodic memory)."""
    tools = [
        Tool("open_subgoal", "start working on a subgoal of the task", OpenSubgoal, _built_in),
        Tool(
            "close_subgoal",
            "close the open subgoal with its result (success=false if it failed)",
            CloseSubgoal,
            _built_in,
        ),
        Tool("expand", "show the steps of finished subgoals again", Expand, _built_in),
        Tool("finish", "end the task with its answer", Finish, _built_in),
    ]
    if recall:
        tools.insert(3, Tool("recall", "search memories of earlier tasks", Recall, _built_in))
    return tools


NAMES = ("open_subgoal", "close_subgoal", "expand", "recall", "finish")


def transcript(trajectory: Trajectory, observation_chars: int = 300) -> str:
    """A finished trajectory as text for episodic memory: the task, the outcome, each subgoal
    with its summary and its steps (observations cut to ``observation_chars``)."""
    lines = [
        f"Task (trajectory {trajectory.id}): {trajectory.task}",
        f"Outcome: {trajectory.status.value}. Answer: {trajectory.answer or '(none)'}",
    ]
    for subgoal in trajectory.subgoals:
        lines.append(f"Subgoal {subgoal.ordinal} [{subgoal.status.value}]: {subgoal.goal}")
        if subgoal.result and subgoal.result != subgoal.summary:
            lines.append(f"  Result: {subgoal.result}")
        if subgoal.summary:
            lines.append(f"  Summary: {subgoal.summary}")
        for step in subgoal.steps:
            seen = step.observation
            if len(seen) > observation_chars:
                seen = seen[:observation_chars] + " …"
            lines.append(f"  {step.action} -> {seen}")
    return "\n".join(lines)


class Turns:
    """Carries out the model's tool calls on one trajectory's working memory."""

    def __init__(self, agent: TurnHost, working: WorkingMemory) -> None:
        self.agent = agent
        self.working = working
        self.finished = False

    @property
    def trajectory_id(self) -> int:
        return self.working.trajectory.id

    # -- subgoals ----------------------------------------------------------------------------

    def _ensure_open(self) -> list[Event]:
        if self.working.trajectory.open_subgoal is not None:
            return []
        opened = self.working.open(IMPLICIT_GOAL)
        return [SubgoalOpened(self.trajectory_id, opened.id, opened.goal, True)]

    async def _summary(self, subgoal: Subgoal, result: str) -> tuple[str, SummarySource]:
        """HiAgent's observation summary of a closing subgoal, and where it came from."""
        fallback = result.strip() or (
            f"{len(subgoal.steps)} steps; last: {subgoal.steps[-1].observation[:200]}"
            if subgoal.steps
            else "no steps taken"
        )
        config = self.agent.config
        if not config.summarize or not subgoal.steps:
            return fallback, "result"
        count = self.agent.count_tokens
        budget = config.summary_input_tokens
        shown: list[str] = []
        for step in reversed(subgoal.steps):  # newest kept when the steps do not all fit
            piece = step_lines(step)
            budget -= count(piece) + 1
            if budget < 0:
                break
            shown.append(piece)
        prompt = (
            "Summarise this finished subgoal in one or two sentences for a later reader: what "
            "was done, what was found, and whether it succeeded. Reply with JSON "
            '{"summary": "..."}.\n'
            f"Subgoal: {subgoal.goal}\nResult: {result or '(none given)'}\nSteps:\n"
            + "\n".join(reversed(shown))
        )
        try:
            reply = await self.agent.llm.generate_json(
                [ChatMessage("user", prompt)],
                SubgoalSummary,
                SamplingParams(max_tokens=160, temperature=0.0),
            )
        except LLMError as err:
            log.warning(
                "subgoal #%d: no summary from the model (%s); using the result", subgoal.id, err
            )
            return fallback, "result"
        return reply.summary.strip() or fallback, "llm"

    async def close_open(
        self, status: SubgoalStatus, reason: CloseReason, result: str = ""
    ) -> list[Event]:
        """Close the open subgoal, if any, with its summary (written once, here)."""
        current = self.working.trajectory.open_subgoal
        if current is None:
            return []
        if not result and reason == "subgoal_limit":
            result = f"closed by the agent after {len(current.steps)} steps without a result"
        elif not result and reason == "run_limit":
            result = "closed by the agent: the run ran out of turns"
        summary, source = await self._summary(current, result)
        closed = self.working.close(status, result, summary)
        return [
            SubgoalClosed(
                self.trajectory_id, closed.id, closed.status.value, summary, reason, source
            )
        ]

    # -- a turn ------------------------------------------------------------------------------

    def _called(
        self,
        turn: int,
        name: str,
        arguments: Mapping[str, Any],
        observation: str,
        error: ToolErrorKind | None,
        seconds: float,
    ) -> ToolCalled:
        current = self.working.trajectory.open_subgoal
        return ToolCalled(
            self.trajectory_id,
            turn,
            None if current is None else current.id,
            name,
            dict(arguments),
            observation,
            error,
            seconds,
        )

    async def _step(
        self,
        turn: int,
        name: str,
        arguments: Mapping[str, Any],
        observation: str,
        error: ToolErrorKind | None,
        began: float,
    ) -> list[Event]:
        """Record a step (opening a subgoal if needed) and enforce the subgoal step limit."""
        events = self._ensure_open()
        self.working.record(
            action_of(name, arguments), observation, metadata={"tool": name, "error": error}
        )
        events.append(
            self._called(turn, name, arguments, observation, error, time.perf_counter() - began)
        )
        current = self.working.trajectory.open_subgoal
        limit = self.agent.config.max_subgoal_steps
        if current is not None and len(current.steps) >= limit:
            events += await self.close_open(SubgoalStatus.FAILED, "subgoal_limit")
            events.append(StepLimitReached(self.trajectory_id, "subgoal", limit))
        return events

    async def invalid_reply(self, turn: int, problem: str, began: float) -> list[Event]:
        """The model's reply held no valid tool call even after the repairs."""
        observation = (
            f"your reply was not a valid tool call ({problem}); reply with one JSON object "
            '{"thought": ..., "tool": ..., "arguments": {...}}'
        )
        return await self._step(turn, "(invalid reply)", {}, observation, "invalid_reply", began)

    async def dispatch(self, turn: int, call: ToolCall) -> list[Event]:
        began = time.perf_counter()
        tool = self.agent.tools.get(call.tool)
        if tool is None:
            names = ", ".join(self.agent.tools)
            observation = f"unknown tool {call.tool!r}; the tools are: {names}"
            return await self._step(
                turn, call.tool, call.arguments, observation, "unknown_tool", began
            )
        try:
            values = tool.parse(call.arguments)
        except ValidationError as err:
            observation = (
                f"invalid arguments for {tool.name}: {describe_validation_error(err)}; "
                f"call it as {tool.signature()}"
            )
            return await self._step(
                turn, call.tool, call.arguments, observation, "invalid_arguments", began
            )
        if tool.name == "open_subgoal":
            events = await self.close_open(SubgoalStatus.DONE, "superseded")
            opened = self.working.open(values["goal"])
            events.append(SubgoalOpened(self.trajectory_id, opened.id, opened.goal, False))
            events.append(
                self._called(turn, tool.name, values, f"opened subgoal #{opened.id}", None, 0.0)
            )
            return events
        if tool.name == "close_subgoal":
            if self.working.trajectory.open_subgoal is None:
                observation = "no subgoal is open; open one with open_subgoal(goal)"
                return [self._called(turn, tool.name, values, observation, "invalid_state", 0.0)]
            status = SubgoalStatus.DONE if values["success"] else SubgoalStatus.FAILED
            closing = self._called(turn, tool.name, values, "closed", None, 0.0)
            events = await self.close_open(status, "model", values["result"])
            return [closing, *events]
        if tool.name == "finish":
            events = await self.close_open(SubgoalStatus.DONE, "finish", values["answer"])
            ending = TrajectoryStatus.DONE if values["success"] else TrajectoryStatus.FAILED
            self.working.update(status=ending, answer=values["answer"])
            self.finished = True
            return [self._called(turn, tool.name, values, "finished", None, 0.0), *events]
        if tool.name == "expand":
            try:
                shown = self.working.expand(values["subgoal_ids"])
            except NotFound as err:
                return await self._step(turn, tool.name, values, str(err), "invalid_state", began)
            observation = "now shown in full: " + ", ".join(f"#{i}" for i in shown)
            return await self._step(turn, tool.name, values, observation, None, began)
        if tool.name == "recall":
            return await self._step(
                turn, tool.name, values, await self._recall(values), None, began
            )
        observation, error = await self._run(tool, values)
        return await self._step(turn, tool.name, values, observation, error, began)

    async def _recall(self, values: dict[str, Any]) -> str:
        memory = self.agent.memory
        assert memory is not None  # recall is offered only with episodic memory
        try:
            hits = await memory.search(
                values["query"], budget_tokens=self.agent.config.recall_tokens
            )
        except StoreError as err:
            return f"recall failed: {err}"
        if not hits:
            return "nothing recalled"
        return "\n".join(f"[{h.reason} {h.score:.2f}] {h.text}" for h in hits)

    async def _run(self, tool: Tool, values: dict[str, Any]) -> tuple[str, ToolErrorKind | None]:
        timeout = tool.timeout_s or self.agent.config.tool_timeout_s
        limit = self.agent.config.observation_chars
        try:
            result = await asyncio.wait_for(tool.run(values), timeout)
        except TimeoutError:
            return f"{tool.name} timed out after {timeout:g} s and was abandoned", "timeout"
        except Exception as err:  # a tool's own failure, whatever it is, is an observation
            log.warning("tool %s raised", tool.name, exc_info=True)
            return observation_of(
                f"{tool.name} raised {type(err).__name__}: {err}", limit
            ), "raised"
        return observation_of(result, limit), None
