"""The Blocksworld environment and the working-memory replay of benchmarks/agent.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.agent import replay
from benchmarks.agent_env import Blocksworld


@pytest.mark.parametrize("blocks", [12, 20, 30])
def test_plans_solve_every_seed(blocks: int) -> None:
    for seed in range(20):
        world = Blocksworld(blocks, towers=4, goal_towers=3, seed=seed)
        plan = world.plan()
        assert not world.solved()
        for move in plan:
            world.move(move.block, move.destination)
        assert world.solved() and "The goal holds." in world.look()
        assert len(plan) <= 2 * blocks


def test_illegal_moves_raise_with_the_reason() -> None:
    world = Blocksworld(6, towers=1, goal_towers=2, seed=1)
    bottom, top = world.stacks[0][0], world.stacks[0][-1]
    with pytest.raises(ValueError, match=f"{bottom} is not clear"):
        world.move(bottom, "table")
    with pytest.raises(ValueError, match="no block 'Z'"):
        world.move("Z", "table")
    with pytest.raises(ValueError, match="onto itself"):
        world.move(top, top)
    assert world.move(top, "table").startswith(f"moved {top} onto table")
    with pytest.raises(ValueError, match="already on the table"):
        world.move(top, "table")


def test_replay_meets_the_issue_goal(tmp_path: Path) -> None:
    report = replay(tmp_path)
    assert report["steps"] >= 100 and report["subgoals"] >= 10
    assert report["open_subgoal_intact"]
    assert report["ratio_at_step_100"] <= 0.30
    tokens = report["prompt_tokens"]
    assert tokens["10"]["standard"] < tokens["50"]["standard"] < tokens["100"]["standard"]
