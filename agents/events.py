"""What an agent run reports as it goes: typed events for UIs and logs.

Every event names its trajectory; ``as_dict`` gives a JSON-ready record with a ``kind``. A run
yields, in order: ``RunStarted``; per turn ``TokensUsed`` then the turn's ``ToolCalled`` and any
``SubgoalOpened`` / ``SubgoalClosed``; then ``StepLimitReached`` where a limit ended it, and
``Remembered`` (or ``RememberFailed``) and ``Finished`` — or ``Cancelled``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

ToolErrorKind = Literal[
    "raised",  # the tool raised; the observation names the exception
    "timeout",  # the tool ran past its timeout and was abandoned
    "unknown_tool",  # the model named a tool that does not exist
    "invalid_arguments",  # the arguments did not validate against the tool's schema
    "invalid_reply",  # the model's reply was not a valid tool call after the repairs
    "invalid_state",  # a built-in tool the state does not allow (close with none open, …)
]
CloseReason = Literal["model", "superseded", "subgoal_limit", "finish", "run_limit"]
LimitScope = Literal["run", "subgoal"]
SummarySource = Literal["llm", "result"]


@dataclass(frozen=True, slots=True)
class _Event:
    kind: ClassVar[str]
    trajectory_id: int

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass(frozen=True, slots=True)
class RunStarted(_Event):
    kind: ClassVar[str] = "run_started"
    task: str
    resumed: bool
    turns: int  # turns already taken (0 for a new run)


@dataclass(frozen=True, slots=True)
class TokensUsed(_Event):
    """The prompt of one turn: its size, what the working memory left out, the reply's size."""

    kind: ClassVar[str] = "tokens_used"
    turn: int
    prompt_tokens: int  # the whole prompt, counted with the agent's token counter
    completion_tokens: int  # the tool call as JSON, counted the same way
    working_tokens: int  # the working-memory view inside the prompt
    working_budget: int
    truncated: bool  # the view left steps or summaries out (or cut a step short)
    over_budget: bool  # even the smallest view did not fit its budget


@dataclass(frozen=True, slots=True)
class ToolCalled(_Event):
    kind: ClassVar[str] = "tool_called"
    turn: int
    subgoal_id: int | None
    tool: str
    arguments: dict[str, Any]
    observation: str
    error: ToolErrorKind | None  # None when the call succeeded
    seconds: float


@dataclass(frozen=True, slots=True)
class SubgoalOpened(_Event):
    kind: ClassVar[str] = "subgoal_opened"
    subgoal_id: int
    goal: str
    implicit: bool  # opened by the agent because the model acted with no subgoal open


@dataclass(frozen=True, slots=True)
class SubgoalClosed(_Event):
    kind: ClassVar[str] = "subgoal_closed"
    subgoal_id: int
    status: str  # "done" or "failed"
    summary: str
    reason: CloseReason
    summary_source: SummarySource


@dataclass(frozen=True, slots=True)
class StepLimitReached(_Event):
    kind: ClassVar[str] = "step_limit_reached"
    scope: LimitScope
    limit: int


@dataclass(frozen=True, slots=True)
class Remembered(_Event):
    """The finished trajectory is in episodic memory, for later tasks to recall."""

    kind: ClassVar[str] = "remembered"
    document_id: int
    episodes: int


@dataclass(frozen=True, slots=True)
class RememberFailed(_Event):
    """Writing to episodic memory failed; ``Agent.remember`` retries it later."""

    kind: ClassVar[str] = "remember_failed"
    error: str


@dataclass(frozen=True, slots=True)
class Finished(_Event):
    kind: ClassVar[str] = "finished"
    status: str  # a TrajectoryStatus value
    answer: str | None
    turns: int


@dataclass(frozen=True, slots=True)
class Cancelled(_Event):
    """The run stopped on request; the trajectory is resumable."""

    kind: ClassVar[str] = "cancelled"
    turns: int


Event = (
    RunStarted
    | TokensUsed
    | ToolCalled
    | SubgoalOpened
    | SubgoalClosed
    | StepLimitReached
    | Remembered
    | RememberFailed
    | Finished
    | Cancelled
)
