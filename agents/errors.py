"""Errors raised by the agents package. Messages name the bad value and the fix."""

from __future__ import annotations

NOTHING_STORED = "Nothing was stored; press Regenerate to try again."
"""How every :class:`StepFailed` message ends: what it left behind, and what to do."""


class AgentError(Exception):
    """Root of every agents error."""


class ToolDefinitionError(AgentError):
    """A tool cannot be offered to a model (no type hints, a clashing name, *args); fix the code."""


class AgentConfigError(AgentError, ValueError):
    """An agent is configured so it cannot run (a prompt budget smaller than its instructions,
    a writer setting out of range). A ``ValueError`` too, as configuration errors are."""


class TrajectoryNotResumable(AgentError):
    """A trajectory asked to resume has already finished (done or failed)."""


class StepFailed(AgentError):
    """A writer step could not produce valid content within its attempts and its time limit;
    nothing was stored. The message is one sentence a writer understands."""
