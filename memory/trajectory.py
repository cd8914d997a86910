"""Values of HiAgent's working memory: a trajectory of subgoals, each with its action/observation
pairs (Hu et al., 2024, arXiv 2408.09559). Frozen and detached from SQL; see
:mod:`memory.working` for the store and :mod:`memory.window` for the prompt view.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class SubgoalStatus(StrEnum):
    OPEN = "open"  # the subgoal being worked on: shown in full
    DONE = "done"  # closed as achieved: shown as its summary
    FAILED = "failed"  # closed as not achieved (given up, step limit): shown as its summary


class TrajectoryStatus(StrEnum):
    RUNNING = "running"  # in progress, or stopped by a crash: resumable
    CANCELLED = "cancelled"  # stopped on request: resumable
    STEP_LIMIT = "step_limit"  # ran out of turns: resumable with a higher limit
    DONE = "done"  # finished with an answer
    FAILED = "failed"  # finished without achieving the task

    @property
    def resumable(self) -> bool:
        return self in (
            TrajectoryStatus.RUNNING,
            TrajectoryStatus.CANCELLED,
            TrajectoryStatus.STEP_LIMIT,
        )


@dataclass(frozen=True, slots=True)
class Step:
    """One action and what came back; ``ordinal`` counts from 1 within its subgoal."""

    id: int
    ordinal: int
    action: str
    observation: str
    created_at: datetime
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Subgoal:
    """A chunk of the trajectory. ``summary`` is written once, when the subgoal closes."""

    id: int
    ordinal: int  # 1, 2, … within the trajectory
    goal: str
    status: SubgoalStatus
    result: str | None
    summary: str | None
    steps: tuple[Step, ...]
    created_at: datetime
    closed_at: datetime | None

    @property
    def is_open(self) -> bool:
        return self.status is SubgoalStatus.OPEN


@dataclass(frozen=True, slots=True)
class Trajectory:
    """One task of an agent: its subgoals in order, the turns taken, and how it ended."""

    id: int
    namespace: str
    task: str
    status: TrajectoryStatus
    answer: str | None
    turns: int  # model turns taken (a turn is one tool call, built-in or not)
    expanded: tuple[int, ...]  # finished subgoals the agent asked to see in full
    subgoals: tuple[Subgoal, ...]
    created_at: datetime
    updated_at: datetime
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def open_subgoal(self) -> Subgoal | None:
        """The subgoal being worked on; at most one is open at a time."""
        last = self.subgoals[-1] if self.subgoals else None
        return last if last is not None and last.is_open else None

    @property
    def step_count(self) -> int:
        return sum(len(s.steps) for s in self.subgoals)

    def subgoal(self, subgoal_id: int) -> Subgoal | None:
        return next((s for s in self.subgoals if s.id == subgoal_id), None)
