"""A Blocksworld for long-horizon agents (after AgentBoard's Blocksworld, used by HiAgent).

Blocks sit in stacks on a table. ``move(block, destination)`` moves a clear block onto another
clear block or onto the table; ``look()`` describes the stacks. The task is to reach a goal
arrangement. ``plan()`` returns a valid solution from the current state (everything to the
table, then every goal tower bottom-up: at most 2 x blocks moves), so a world of 12 to 30 blocks
has solutions of 20 to 60 steps. Seeded, deterministic, no model involved.
"""

from __future__ import annotations

import itertools
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass

from agents.tools import Tool, tool

TABLE = "table"


def _name(index: int) -> str:
    letters = string.ascii_uppercase
    return letters[index] if index < 26 else letters[index // 26 - 1] + letters[index % 26]


def _random_stacks(blocks: Sequence[str], towers: int, rng: random.Random) -> list[list[str]]:
    order = list(blocks)
    rng.shuffle(order)
    cuts = sorted(rng.sample(range(1, len(order)), towers - 1)) if towers > 1 else []
    bounds = [0, *cuts, len(order)]
    return [order[a:b] for a, b in itertools.pairwise(bounds)]


def describe(stacks: Sequence[Sequence[str]]) -> str:
    """``A on B on table; C on table`` (each stack top first)."""
    parts = [" on ".join([*reversed(stack), TABLE]) for stack in stacks if stack]
    return "; ".join(sorted(parts))


@dataclass(frozen=True, slots=True)
class Move:
    block: str
    destination: str


class Blocksworld:
    """One episode: ``blocks`` blocks in ``towers`` random stacks, a random goal of
    ``goal_towers`` towers. Mutable; :meth:`reset` starts over from the same seed."""

    def __init__(self, blocks: int = 12, *, towers: int = 3, goal_towers: int = 2, seed: int = 0):
        if not 2 <= blocks <= 60:
            raise ValueError(f"blocks={blocks} must be in [2, 60]")
        if not (1 <= towers <= blocks and 1 <= goal_towers <= blocks):
            raise ValueError("towers and goal_towers must be between 1 and the number of blocks")
        self.names = [_name(i) for i in range(blocks)]
        self.seed = seed
        self.towers = towers
        self.goal_towers = goal_towers
        self.reset()

    def reset(self) -> None:
        rng = random.Random(self.seed)
        self.stacks = _random_stacks(self.names, self.towers, rng)
        self.goal = _random_stacks(self.names, self.goal_towers, rng)
        self.moves = 0

    @property
    def task(self) -> str:
        return (
            f"Blocksworld. Blocks now: {describe(self.stacks)}. Rearrange them so that: "
            f"{describe(self.goal)}. Move one clear block at a time with move(block, "
            "destination), where destination is a clear block or 'table'; look() shows the "
            "blocks. Call finish when the goal holds."
        )

    def _where(self, block: str) -> list[str]:
        for stack in self.stacks:
            if block in stack:
                return stack
        valid = ", ".join(self.names)
        raise ValueError(f"there is no block {block!r}; the blocks are {valid}")

    def move(self, block: str, destination: str) -> str:
        """Move a clear block onto a clear block or onto the table."""
        source = self._where(block)
        if source[-1] != block:
            raise ValueError(f"{block} is not clear: {source[source.index(block) + 1]} is on it")
        if destination == block:
            raise ValueError(f"cannot move {block} onto itself")
        if destination == TABLE:
            if len(source) == 1:
                raise ValueError(f"{block} is already on the table")
            source.pop()
            self.stacks.append([block])
        else:
            target = self._where(destination)
            if target[-1] != destination:
                raise ValueError(f"{destination} is not clear: {target[-1]} is on top of it")
            source.pop()
            target.append(block)
        self.stacks = [s for s in self.stacks if s]
        self.moves += 1
        return f"moved {block} onto {destination}. Now: {describe(self.stacks)}"

    def look(self) -> str:
        """Describe every stack of blocks, top first."""
        done = " The goal holds." if self.solved() else ""
        return f"{describe(self.stacks)}.{done}"

    def solved(self) -> bool:
        return describe(self.stacks) == describe(self.goal)

    def plan(self) -> list[Move]:
        """A valid solution from the current state (not necessarily the shortest)."""
        moves: list[Move] = []
        goal_below = {s[i]: s[i - 1] for s in self.goal for i in range(1, len(s))}
        # Blocks already sitting on a correct goal prefix stay; everything else goes to the table.
        settled: set[str] = set()
        for stack in self.stacks:
            goal_stack = next(g for g in self.goal if stack[0] in g)
            for depth, block in enumerate(stack):
                if (
                    depth < len(goal_stack)
                    and goal_stack[depth] == block
                    and goal_stack[0] == stack[0]
                ):
                    settled.add(block)
                else:
                    break
        for stack in self.stacks:
            for block in reversed(stack):
                if block in settled:
                    break
                if stack.index(block) > 0:
                    moves.append(Move(block, TABLE))
        for goal_stack in self.goal:
            for depth in range(1, len(goal_stack)):
                block = goal_stack[depth]
                if block not in settled:
                    moves.append(Move(block, goal_below[block]))
        return moves

    def tools(self) -> list[Tool]:
        return [tool(self.move), tool(self.look)]
