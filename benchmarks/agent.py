"""Benchmark of HiAgent's working memory: prompt size against full history, then a live run.

Run ``python -m benchmarks.agent`` (``--json`` prints ``{"prompt_tokens": {...},
"ratio_at_step_100": r, ...}``).

1. **Replay.** A Blocksworld of 30 blocks is solved by its planner, one ``look()`` after every
   move (≥ 100 action/observation pairs in ≥ 10 subgoals of 5 moves). The same trajectory goes
   through two prompt builders: the STANDARD baseline (every pair so far) and HiAgent's (finished
   subgoals as one-line summaries, the open subgoal in full). Tokens (cl100k_base) of the whole
   prompt at steps 10, 50 and 100, and their ratio; the HiAgent budget is large enough that
   nothing is truncated, so the open subgoal is always intact (checked at every step).
2. **Live.** The agent runs a Blocksworld of 12 blocks end to end on a real engine: a random
   tiny Llama (``--llm random``, the default; success is not the point), the bundled
   SmolLM2-135M-Instruct (``--llm smollm2``) or a model folder. Reported: turns, largest prompt
   against its budget, tool errors by kind, whether the event log is complete. The tiny
   pretrained model at ``MNEME_TEST_MODEL`` has a 512-token context, smaller than the agent's
   instructions, so it cannot drive the agent (said in the output when it is set).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from agents.events import Event, Finished, SubgoalClosed, TokensUsed, ToolCalled
from agents.hiagent import Agent, AgentConfig
from agents.prompt import full_history_prompt, hiagent_prompt, system_prompt
from agents.turns import specs
from benchmarks.agent_env import TABLE, Blocksworld, Move
from memory import ChromaVectorIndex, Database, MemoryStore
from memory.episodic import EpisodicMemory
from memory.segmentation import SegmenterConfig
from memory.segmenters import FixedSegmenter
from memory.trajectory import SubgoalStatus
from memory.working import SqlTrajectoryStore
from serving.tokens import TiktokenCounter
from tests.fakes import HashEmbedder

CHECKPOINTS = (10, 50, 100)
SUBGOAL_MOVES = 5


def _goal(moves: list[Move]) -> str:
    if all(m.destination == TABLE for m in moves):
        return f"clear blocks {', '.join(m.block for m in moves)} to the table"
    return "stack " + ", ".join(f"{m.block} on {m.destination}" for m in moves)


def replay(folder: Path) -> dict[str, Any]:
    count = TiktokenCounter("cl100k_base").count
    world = Blocksworld(30, towers=4, goal_towers=3, seed=7)
    plan = world.plan()
    database = Database(f"sqlite:///{folder / 'replay.db'}")
    database.upgrade()
    store = MemoryStore(database, ChromaVectorIndex(path=folder / "chroma"), HashEmbedder())
    store.namespace("replay")
    working = SqlTrajectoryStore(database).start("replay", world.task)
    system = system_prompt([*specs(recall=True), *world.tools()])
    budget = 8192  # large: HiAgent's saving must come from subgoals, not from truncation
    rows: dict[int, dict[str, int]] = {}
    intact = True
    step = 0

    def measure() -> None:
        nonlocal intact
        hiagent = hiagent_prompt(
            working, system, prompt_tokens=budget, count_tokens=count, turn=step, max_turns=200
        )
        view = hiagent.view
        assert view is not None
        current = working.trajectory.open_subgoal
        shown = current is None or all(s.observation in view.text for s in current.steps)
        intact = intact and shown and not view.truncated
        if step in CHECKPOINTS:
            standard = full_history_prompt(
                working.trajectory, system, count_tokens=count, turn=step, max_turns=200
            )
            rows[step] = {"standard": standard.tokens, "hiagent": hiagent.tokens}

    chunks = [plan[i : i + SUBGOAL_MOVES] for i in range(0, len(plan), SUBGOAL_MOVES)]
    for chunk in chunks:
        working.open(_goal(chunk))
        for move in chunk:
            for action, run in (
                (
                    f'move({{"block": "{move.block}", "destination": "{move.destination}"}})',
                    lambda m=move: world.move(m.block, m.destination),
                ),
                ("look({})", world.look),
            ):
                working.record(action, run())
                step += 1
                measure()
        done = ", ".join(f"{m.block} onto {m.destination}" for m in chunk)
        working.close(SubgoalStatus.DONE, "done", f"Moved {done}; now {world.look()}")
    assert world.solved() and step >= 100 and len(chunks) >= 10
    ratio = rows[100]["hiagent"] / rows[100]["standard"]
    return {
        "steps": step,
        "subgoals": len(chunks),
        "prompt_tokens": {str(k): v for k, v in rows.items()},
        "ratio_at_step_100": round(ratio, 3),
        "open_subgoal_intact": intact,
    }


def _llm(choice: str, folder: Path) -> tuple[Any, Any, str]:
    """The engine for ``choice`` and a counter with the model's own tokenizer."""
    from serving.engine.config import EngineConfig
    from serving.local import LocalLLM

    if choice == "random":
        from tests.models import build_tiny_llama

        model: Path | None = build_tiny_llama(folder / "random-llama", max_positions=4096)
        name = "random tiny Llama (SmolLM2 tokenizer)"
    elif choice == "smollm2":
        model, name = None, "SmolLM2-135M-Instruct (bundled)"
    else:
        model, name = Path(choice), choice
    llm = LocalLLM.load(EngineConfig(model=None if model is None else str(model)))

    def count(text: str) -> int:
        return len(llm.encode(text, special=False))

    return llm, count, name


async def live(
    choice: str, folder: Path, mode: str, turns: int, seed: int, logs: Path
) -> dict[str, Any]:
    llm, count, name = _llm(choice, folder)
    database = Database(f"sqlite:///{folder / f'live-{mode}.db'}")
    database.upgrade()
    store = MemoryStore(database, ChromaVectorIndex(path=folder / f"chroma-{mode}"), HashEmbedder())
    memory = EpisodicMemory(
        store,
        "agent-memory",
        FixedSegmenter(SegmenterConfig(max_tokens=256), count),
        count_tokens=count,
    )
    world = Blocksworld(12, seed=seed)
    config = AgentConfig(
        max_turns=turns,
        prompt_tokens=1536,
        reply_tokens=96,
        temperature=0.7,
        tool_timeout_s=5.0,
        summarize=False,
        prompt_mode=mode,  # type: ignore[arg-type]
    )
    agent = Agent(
        llm,
        store,
        "agent",
        world.tools(),
        memory=memory,
        count_tokens=count,
        config=config,
        trajectories=SqlTrajectoryStore(store.database),
    )
    events: list[Event] = []
    began = time.perf_counter()
    log = logs / f"events-{mode}.jsonl"
    with log.open("w") as out:

        def record(event: Event) -> None:
            events.append(event)
            out.write(json.dumps(event.as_dict(), default=str) + "\n")
            out.flush()

        result = await agent.run(world.task, on_event=record)
    seconds = time.perf_counter() - began
    closer = getattr(llm, "close", None)
    if callable(closer):
        closer()
    used = [e for e in events if isinstance(e, TokensUsed)]
    calls = [e for e in events if isinstance(e, ToolCalled)]
    errors = collections.Counter(e.error or "ok" for e in calls)
    complete = (
        len(used) == result.trajectory.turns
        and {e.turn for e in calls} <= {e.turn for e in used}
        and isinstance(events[-1], Finished)
        and all(not s.is_open for s in result.trajectory.subgoals)
    )
    return {
        "llm": name,
        "builder": mode,
        "status": result.status.value,
        "solved": world.solved(),
        "turns": result.trajectory.turns,
        "moves": world.moves,
        "subgoals": len(result.trajectory.subgoals),
        "subgoals_closed_by_agent": sum(
            1 for e in events if isinstance(e, SubgoalClosed) and e.reason != "model"
        ),
        "max_prompt_tokens": max(u.prompt_tokens for u in used),
        "prompt_budget": config.prompt_tokens,
        "tool_calls": dict(errors),
        "event_log_complete": complete,
        "events": len(events),
        "seconds": round(seconds, 1),
        "event_log": str(log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--llm", default="random", help="random | smollm2 | a model folder")
    parser.add_argument("--turns", type=int, default=30, help="turns of the live run")
    parser.add_argument("--seed", type=int, default=0, help="Blocksworld seed of the live run")
    parser.add_argument("--standard", action="store_true", help="also run the STANDARD builder")
    parser.add_argument("--replay-only", action="store_true", help="skip the live run")
    parser.add_argument("--events", type=Path, help="folder to keep the live runs' event logs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        report = replay(folder)
        if not args.replay_only:
            modes = ["hiagent", "standard"] if args.standard else ["hiagent"]
            logs = args.events or folder
            logs.mkdir(parents=True, exist_ok=True)
            report["live"] = [
                asyncio.run(live(args.llm, folder, mode, args.turns, args.seed, logs))
                for mode in modes
            ]
            if os.environ.get("MNEME_TEST_MODEL"):
                report["tiny_model"] = (
                    "not run: its 512-token context is smaller than the agent's instructions"
                )
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"Replay: {report['steps']} steps in {report['subgoals']} subgoals (cl100k_base tokens)\n"
    )
    print("| step | full history | HiAgent | ratio |\n| ---: | ---: | ---: | ---: |")
    for step, row in report["prompt_tokens"].items():
        ratio = row["hiagent"] / row["standard"]
        print(f"| {step} | {row['standard']} | {row['hiagent']} | {ratio:.3f} |")
    print(f"\nOpen subgoal intact at every step: {report['open_subgoal_intact']}")
    for run in report.get("live", []):
        print(f"\nLive ({run['llm']}, {run['builder']}):")
        for key, value in run.items():
            print(f"- {key}: {value}")


if __name__ == "__main__":
    main()
