"""HiAgent's loop on a scripted LLM: subgoals, tools, bad input, limits, cancellation, resume,
episodic memory across tasks."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.tools import tool as langchain_tool

from agents.errors import AgentConfigError, ToolDefinitionError, TrajectoryNotResumable
from agents.events import (
    Cancelled,
    Event,
    Finished,
    Remembered,
    RunStarted,
    StepLimitReached,
    SubgoalClosed,
    SubgoalOpened,
    TokensUsed,
    ToolCalled,
)
from agents.hiagent import Agent, AgentConfig
from agents.sync import SyncAgent
from agents.tools import tool
from memory import ChromaVectorIndex, Database, MemoryStore, NotFound
from memory.episodic import EpisodicMemory
from memory.segmentation import SegmenterConfig
from memory.segmenters import FixedSegmenter
from memory.trajectory import SubgoalStatus, TrajectoryStatus
from memory.working import SqlTrajectoryStore
from tests.fakes import HashEmbedder, ScriptedLLM

Call = dict[str, Any] | str


def words(text: str) -> int:
    return len(text.split())


def script(calls: Sequence[Call]) -> ScriptedLLM:
    """Agent turns answered from ``calls`` in order (dicts as JSON, strings raw); summary
    requests answered with ``summary of <goal>``; ``finish`` once the script runs out."""
    queue = list(calls)

    def reply(prompt: str, _: int) -> str:
        if prompt.startswith("Summarise this finished subgoal"):
            goal = re.search(r"Subgoal: (.*)", prompt)
            return json.dumps({"summary": f"summary of {goal.group(1) if goal else '?'}"})
        item = queue.pop(0) if queue else {"tool": "finish", "arguments": {"answer": "end"}}
        return item if isinstance(item, str) else json.dumps(item)

    return ScriptedLLM(reply)


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"thought": f"use {name}", "tool": name, "arguments": arguments}


def move(block: str, target: str) -> str:
    """Move a clear block onto another block or the table."""
    return f"moved {block} onto {target}"


def broken(x: int) -> str:
    """Always fails."""
    raise ValueError(f"cannot handle {x}")


async def hang() -> str:
    """Never answers."""
    await asyncio.sleep(60)
    return "never"


@pytest.fixture
def store(sqlite_database: Database, tmp_path: Path) -> MemoryStore:
    return MemoryStore(sqlite_database, ChromaVectorIndex(path=tmp_path / "chroma"), HashEmbedder())


@pytest.fixture
def episodic(store: MemoryStore) -> EpisodicMemory:
    config = SegmenterConfig(min_tokens=16, max_tokens=256)
    return EpisodicMemory(store, "agent-memory", FixedSegmenter(config, words), count_tokens=words)


def agent(
    store: MemoryStore,
    calls: Sequence[Call],
    *,
    memory: EpisodicMemory | None = None,
    tools: Sequence[Any] = (move, broken, hang),
    **config: Any,
) -> Agent:
    settings = {"tool_timeout_s": 0.2, "prompt_tokens": 600, **config}
    return Agent(
        script(calls),
        store,
        "agent",
        tools,
        trajectories=SqlTrajectoryStore(store.database),
        memory=memory,
        count_tokens=words,
        config=AgentConfig(**settings),
    )


def prompts(the_agent: Agent) -> list[str]:
    """Every message the scripted LLM answered (agent turns, summaries, repairs)."""
    assert isinstance(the_agent.llm, ScriptedLLM)
    return the_agent.llm.prompts


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def of(events: Sequence[Event], kind: type[Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def test_subgoals_tools_and_summaries(store: MemoryStore) -> None:
    calls = [
        call("open_subgoal", goal="clear B"),
        call("move", block="A", target="table"),
        call("close_subgoal", result="B is clear"),
        call("open_subgoal", goal="stack B on C"),
        call("move", block="B", target="C"),
        call("finish", answer="B is on C"),
    ]
    the_agent = agent(store, calls)
    result = run(the_agent.run("put B on C"))
    assert result.status is TrajectoryStatus.DONE and result.answer == "B is on C"
    first, second = result.trajectory.subgoals
    assert (first.goal, first.status, first.summary) == (
        "clear B",
        SubgoalStatus.DONE,
        "summary of clear B",
    )
    assert [s.observation for s in first.steps] == ["moved A onto table"]
    assert second.status is SubgoalStatus.DONE and second.result == "B is on C"
    kinds = [e.kind for e in result.events]
    assert kinds[0] == "run_started" and kinds[-1] == "finished"
    assert kinds.count("tokens_used") == 6 and kinds.count("tool_called") == 6
    closed = of(result.events, SubgoalClosed)
    assert [(c.reason, c.summary_source) for c in closed] == [("model", "llm"), ("finish", "llm")]
    json.dumps([e.as_dict() for e in result.events])  # a JSON log
    # The prompt of the last turn shows the first subgoal as its summary, not its steps.
    last = next(p for p in reversed(prompts(the_agent)) if p.startswith("Task: put B on C"))
    assert "summary of clear B" in last and "moved A onto table" not in last


def test_bad_input_becomes_observations(store: MemoryStore) -> None:
    calls: list[Call] = [
        call("open_subgoal", goal="try things"),
        call("broken", x=3),  # raises
        call("hang"),  # times out
        call("teleport", to="moon"),  # unknown tool
        call("move", block=1),  # invalid arguments (target missing)
        "I think I will move A",  # not JSON, and the two repairs are not either
        "still not json",
        "nor this",
        call("move", block="A", target="B"),
        call("finish", answer="done"),
    ]
    seen: list[str] = []

    async def hang() -> str:
        """Never answers."""
        seen.append("hang started")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append("hang cancelled")
            raise
        seen.append("hang finished")
        return "never"

    def move(block: str, target: str) -> str:
        """Move a clear block onto another block or the table."""
        seen.append("move")
        return f"moved {block} onto {target}"

    the_agent = agent(store, calls, tools=(move, broken, hang))
    result = run(the_agent.run("survive"))
    # The hanging tool was abandoned: cancelled at its timeout, before the run went on.
    assert seen == ["hang started", "hang cancelled", "move"]
    errors = {e.tool: (e.error, e.observation) for e in of(result.events, ToolCalled) if e.error}
    assert errors["broken"] == ("raised", "broken raised ValueError: cannot handle 3")
    assert errors["hang"][0] == "timeout" and "timed out after 0.2 s" in errors["hang"][1]
    assert errors["teleport"][0] == "unknown_tool" and "move" in errors["teleport"][1]
    assert errors["move"][0] == "invalid_arguments"
    assert (
        "target" in errors["move"][1] and "move(block: string, target: string)" in errors["move"][1]
    )
    assert errors["(invalid reply)"][0] == "invalid_reply"
    assert result.status is TrajectoryStatus.DONE  # the run went on after each
    steps = result.trajectory.subgoals[0].steps
    assert len(steps) == 6 and steps[-1].observation == "moved A onto B"
    assert [s.metadata["error"] for s in steps] == [
        "raised",
        "timeout",
        "unknown_tool",
        "invalid_arguments",
        "invalid_reply",
        None,
    ]
    # The model reads each error next turn.
    assert any("cannot handle 3" in p for p in prompts(the_agent))


def test_sync_tool_that_hangs_times_out(store: MemoryStore) -> None:
    def slow() -> str:
        """Blocks its thread."""
        time.sleep(1.0)
        return "late"

    calls = [call("slow"), call("finish", answer="ok")]
    result = run(agent(store, calls, tools=[tool(slow, timeout_s=0.05)]).run("wait"))
    (event,) = [e for e in of(result.events, ToolCalled) if e.tool == "slow"]
    assert event.error == "timeout" and event.subgoal_id is not None
    assert of(result.events, SubgoalOpened)[0].implicit  # acted with no subgoal open


def test_a_subgoal_never_closed_is_closed_by_the_agent(store: MemoryStore) -> None:
    calls = [call("open_subgoal", goal="loop")] + [call("move", block="A", target="B")] * 5
    calls += [call("open_subgoal", goal="other"), call("open_subgoal", goal="third")]
    result = run(agent(store, calls, max_subgoal_steps=4).run("forever"))
    limit = of(result.events, StepLimitReached)
    assert [(e.scope, e.limit) for e in limit] == [("subgoal", 4)]
    reasons = [(c.reason, c.status) for c in of(result.events, SubgoalClosed)]
    # loop: closed at 4 steps; its 5th move lands in an implicit subgoal, superseded by
    # "other", itself superseded by "third", which finish closes.
    assert reasons == [
        ("subgoal_limit", "failed"),
        ("superseded", "done"),
        ("superseded", "done"),
        ("finish", "done"),
    ]
    assert of(result.events, SubgoalOpened)[1].implicit
    goals = [s.goal for s in result.trajectory.subgoals]
    assert goals[0] == "loop" and goals[2:] == ["other", "third"]
    assert all(not s.is_open for s in result.trajectory.subgoals)


def test_run_limit_then_resume(store: MemoryStore) -> None:
    calls = [call("open_subgoal", goal="g")] + [call("move", block="A", target="B")] * 3
    result = run(agent(store, calls, max_turns=3).run("long task"))
    assert result.status is TrajectoryStatus.STEP_LIMIT and result.trajectory.turns == 3
    assert of(result.events, StepLimitReached)[0].scope == "run"
    assert result.trajectory.subgoals[0].status is SubgoalStatus.FAILED
    assert not of(result.events, Remembered)  # only finished trajectories are remembered
    more = agent(store, [call("finish", answer="resumed")], max_turns=10)
    resumed = run(more.resume(result.trajectory.id))
    started = of(resumed.events, RunStarted)[0]
    assert started.resumed and started.turns == 3
    assert resumed.status is TrajectoryStatus.DONE and resumed.trajectory.turns == 4
    with pytest.raises(TrajectoryNotResumable, match="already finished"):
        run(more.resume(result.trajectory.id))
    elsewhere = Agent(
        ScriptedLLM(lambda *_: ""),
        store,
        "other",
        trajectories=SqlTrajectoryStore(store.database),
        count_tokens=words,
    )
    with pytest.raises(NotFound, match="not this agent's 'other'"):
        run(elsewhere.resume(result.trajectory.id))


def test_prompts_stay_within_budget_however_long_the_trajectory(store: MemoryStore) -> None:
    def look() -> str:
        """Look around."""
        return "you see " + "many things " * 40

    calls: list[Call] = []
    for k in range(12):
        calls += [call("open_subgoal", goal=f"part {k}")] + [call("look")] * 4
        calls.append(call("close_subgoal", result=f"part {k} done"))
    tools = [look]
    result = run(agent(store, calls, tools=tools, max_turns=200, prompt_tokens=400).run("explore"))
    used = of(result.events, TokensUsed)
    assert len(used) == len(calls) + 1
    assert max(u.prompt_tokens for u in used) <= 400
    assert any(u.truncated for u in used) and not any(u.over_budget for u in used)
    assert result.trajectory.step_count == 48  # nothing was lost from SQL


def test_cancel_between_turns_and_resume(store: MemoryStore) -> None:
    cancel = asyncio.Event()
    calls = [
        call("open_subgoal", goal="g"),
        call("move", block="A", target="B"),
        call("move", block="B", target="C"),
    ]

    def on_event(event: Event) -> None:
        if isinstance(event, ToolCalled) and event.tool == "move":
            cancel.set()

    the_agent = agent(store, calls)
    result = run(the_agent.run("t", on_event=on_event, cancel=cancel))
    assert isinstance(result.events[-1], Cancelled)
    assert result.status is TrajectoryStatus.CANCELLED
    resumed = run(the_agent.resume(result.trajectory.id))
    assert resumed.status is TrajectoryStatus.DONE
    assert [s.observation for s in resumed.trajectory.subgoals[0].steps] == [
        "moved A onto B",
        "moved B onto C",
    ]


def test_task_cancelled_mid_tool_is_resumable(store: MemoryStore) -> None:
    the_agent = agent(store, [call("open_subgoal", goal="g"), call("hang")], tool_timeout_s=30.0)

    async def main() -> int:
        seen: list[Event] = []
        task = asyncio.create_task(the_agent.run("t", on_event=seen.append))
        while not any(isinstance(e, TokensUsed) and e.turn == 2 for e in seen):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen[0].trajectory_id

    trajectory_id = run(main())
    stored = SqlTrajectoryStore(store.database).resume(trajectory_id).trajectory
    assert stored.status is TrajectoryStatus.CANCELLED and stored.turns == 2
    assert stored.open_subgoal is not None and stored.open_subgoal.steps == ()
    resumed = run(agent(store, [call("finish", answer="ok")]).resume(trajectory_id))
    assert resumed.status is TrajectoryStatus.DONE


def test_trajectories_are_remembered_and_recalled_by_later_tasks(
    store: MemoryStore, episodic: EpisodicMemory
) -> None:
    first = [
        call("open_subgoal", goal="find the key"),
        call("move", block="rug", target="side"),
        call("close_subgoal", result="the brass key lies under the rug"),
        call("finish", answer="key under the rug"),
    ]
    done = run(agent(store, first, memory=episodic).run("find the brass key"))
    (remembered,) = of(done.events, Remembered)
    assert remembered.episodes >= 1
    second = [call("recall", query="where is the brass key"), call("finish", answer="rug")]
    the_agent = agent(store, second, memory=episodic)
    later = run(the_agent.run("open the door with the brass key"))
    opening = prompts(the_agent)[0]
    assert "Memories of earlier tasks" in opening and "under the rug" in opening
    (recall,) = [e for e in of(later.events, ToolCalled) if e.tool == "recall"]
    assert recall.error is None and "brass key lies under the rug" in recall.observation


def test_langchain_tools_and_expand(store: MemoryStore) -> None:
    @langchain_tool
    def weigh(item: str) -> str:
        """Weigh an item."""
        return f"{item} weighs 3 kg"

    calls = [
        call("open_subgoal", goal="weigh"),
        call("weigh", item="box"),
        call("close_subgoal", result="3 kg"),
        call("open_subgoal", goal="check"),
        call("expand", subgoal_ids=[1]),
        call("expand", subgoal_ids=[99]),
        call("finish", answer="3 kg"),
    ]
    the_agent = agent(store, calls, tools=[weigh])
    result = run(the_agent.run("how heavy"))
    expand = [e for e in of(result.events, ToolCalled) if e.tool == "expand"]
    assert expand[0].error is None and expand[1].error == "invalid_state"
    shown = [p for p in prompts(the_agent) if "Expanded subgoal #1" in p]
    assert shown and "box weighs 3 kg" in shown[0]  # the expanded subgoal's step, shown in full


def test_configuration_errors_name_the_fix(store: MemoryStore) -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(ToolDefinitionError, match="no type hint"):
        tool(untyped)
    with pytest.raises(AgentConfigError, match="is taken"):
        agent(store, [], tools=[tool(move, name="finish")])
    with pytest.raises(AgentConfigError, match="raise prompt_tokens"):
        agent(store, [], prompt_tokens=256)
    with pytest.raises(AgentConfigError, match="max_turns=0"):
        AgentConfig(max_turns=0)


def test_the_reply_schema_has_one_variant_per_tool(store: MemoryStore) -> None:
    schema = agent(store, []).call_schema.model_json_schema()
    variants = {v["properties"]["tool"]["const"]: v for v in schema["anyOf"]}
    assert list(variants) == [
        "open_subgoal",
        "close_subgoal",
        "expand",
        "finish",
        "move",
        "broken",
        "hang",
    ]
    assert variants["move"]["properties"]["arguments"]["required"] == ["block", "target"]
    assert variants["expand"]["properties"]["arguments"]["properties"]["subgoal_ids"]["type"] == (
        "array"
    )


def test_sync_agent(store: MemoryStore) -> None:
    calls = [call("open_subgoal", goal="g"), call("move", block="A", target="B")]
    with SyncAgent(agent(store, calls)) as blocking:
        result = blocking.run("sync")
    assert result.status is TrajectoryStatus.DONE
    assert isinstance(result.events[-1], Finished)


@pytest.mark.slow
def test_a_real_engine_drives_the_loop(store: MemoryStore, tmp_path: Path) -> None:
    """A random tiny Llama behind LocalLLM (guided JSON decoding): whatever it calls, the run
    ends cleanly with every turn accounted for and every prompt within its budget."""
    from benchmarks.agent_env import Blocksworld
    from serving.engine.config import EngineConfig
    from serving.local import LocalLLM
    from tests.models import build_tiny_llama

    llm = LocalLLM.load(
        EngineConfig(model=str(build_tiny_llama(tmp_path / "llama", max_positions=4096)))
    )
    try:

        def count(text: str) -> int:
            return len(llm.encode(text, special=False))

        world = Blocksworld(8, seed=3)
        config = AgentConfig(max_turns=3, prompt_tokens=1200, reply_tokens=48, summarize=False)
        the_agent = Agent(
            llm,
            store,
            "real",
            world.tools(),
            trajectories=SqlTrajectoryStore(store.database),
            count_tokens=count,
            config=config,
        )
        result = run(the_agent.run(world.task))
    finally:
        llm.close()
    used = of(result.events, TokensUsed)
    assert [u.turn for u in used] == [1, 2, 3] and max(u.prompt_tokens for u in used) <= 1200
    assert {c.turn for c in of(result.events, ToolCalled)} <= {1, 2, 3}
    assert isinstance(result.events[-1], Finished)
    # Guided decoding follows the schema's list of tool names: no unknown tool, even at random.
    assert all(c.error != "unknown_tool" for c in of(result.events, ToolCalled))
    assert result.status in (
        TrajectoryStatus.STEP_LIMIT,
        TrajectoryStatus.DONE,
        TrajectoryStatus.FAILED,
    )
    assert all(not s.is_open for s in result.trajectory.subgoals)
