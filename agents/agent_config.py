"""The limits and budgets of a HiAgent run (``agents.hiagent.Agent``); ``app`` builds one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agents.errors import AgentConfigError


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Limits and budgets of an agent run; ``app`` builds one and passes it in."""

    max_turns: int = 60
    """Model turns (tool calls, built-ins included) before a run stops as ``step_limit``."""
    max_subgoal_steps: int = 20
    """Steps in one subgoal before the agent closes it as failed."""
    prompt_tokens: int = 2048
    """Most tokens of one prompt (instructions + recalled memories + working memory)."""
    reply_tokens: int = 256
    """Most tokens of one reply (a tool call)."""
    temperature: float = 0.0
    """Sampling temperature of tool calls (0 = greedy)."""
    tool_timeout_s: float = 30.0
    """Seconds before a tool call is abandoned (a tool may set its own)."""
    observation_chars: int = 2000
    """Longest observation kept from a tool result, in characters (the rest is cut)."""
    recall_tokens: int = 256
    """Token budget of ``recall`` results and of the memories recalled when a task starts."""
    recall_at_start: bool = True
    """Recall memories of earlier tasks for the task when it starts."""
    summarize: bool = True
    """Ask the model to summarise a closing subgoal (else the model's result is the summary)."""
    summary_input_tokens: int = 1024
    """Most tokens of a subgoal's steps shown when asking for its summary (newest kept)."""
    remember: bool = True
    """Write each finished trajectory to episodic memory."""
    prompt_mode: Literal["hiagent", "standard"] = "hiagent"
    """``standard``: HiAgent's STANDARD baseline, every action/observation pair in every
    prompt, unbounded (for comparisons only)."""

    def __post_init__(self) -> None:
        problems = [
            f"{name}={value} must be at least {least}"
            for name, value, least in (
                ("max_turns", self.max_turns, 1),
                ("max_subgoal_steps", self.max_subgoal_steps, 1),
                ("prompt_tokens", self.prompt_tokens, 256),
                ("reply_tokens", self.reply_tokens, 16),
                ("observation_chars", self.observation_chars, 80),
                ("recall_tokens", self.recall_tokens, 16),
            )
            if value < least
        ]
        if self.tool_timeout_s <= 0:
            problems.append(f"tool_timeout_s={self.tool_timeout_s} must be positive")
        if problems:
            raise AgentConfigError("; ".join(problems))
