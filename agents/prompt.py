"""The agent's prompts: HiAgent's (working memory within a budget) and the STANDARD baseline's
(every action/observation pair so far), built from the same trajectory so they compare fairly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from agents.tools import Tool
from memory.trajectory import Trajectory
from memory.window import WorkingView, step_lines
from memory.working import WorkingMemory
from serving.llm import ChatMessage

CountTokens = Callable[[str], int]

TEMPLATE_TOKENS = 16
"""Tokens kept back for the chat template's own markup around the messages."""


class ToolCall(BaseModel):
    """The model's reply each turn: one structured tool call."""

    model_config = ConfigDict(extra="ignore")

    thought: str = Field(default="", max_length=600, description="One short sentence: why.")
    tool: str = Field(min_length=1, max_length=64, description="The name of the tool to call.")
    arguments: dict[str, Any] = Field(
        default_factory=dict, description="The tool's arguments, by name."
    )


def call_schema(tools: Sequence[Tool]) -> type[ToolCall]:
    """``ToolCall`` whose JSON schema is one variant per tool (its name as a constant, its own
    arguments' schema), so guided decoding can only produce a real tool with well-formed
    arguments. Validation stays ``ToolCall``'s: where nothing guides the reply, an unknown tool or
    bad arguments reach the agent and become an observation the model can learn from."""
    variants: list[dict[str, Any]] = []
    definitions: dict[str, Any] = {}
    for tool in tools:
        arguments = tool.arguments.model_json_schema()
        definitions.update(arguments.pop("$defs", {}))
        variants.append(
            {
                "type": "object",
                "properties": {
                    "thought": {"type": "string", "maxLength": 200},
                    "tool": {"const": tool.name},
                    "arguments": arguments,
                },
                "required": ["thought", "tool", "arguments"],
                "additionalProperties": False,
            }
        )

    def one_of_the_tools(schema: dict[str, Any]) -> None:
        schema.clear()
        schema.update({"title": "ToolCall", "anyOf": variants})
        if definitions:
            schema["$defs"] = definitions

    config = ConfigDict(extra="ignore", json_schema_extra=one_of_the_tools)
    model: type[ToolCall] = create_model("ToolCall", __base__=ToolCall, __config__=config)
    return model


class SubgoalSummary(BaseModel):
    """The model's summary of a subgoal that just closed (HiAgent's observation summary)."""

    summary: str = Field(min_length=1, max_length=600)


INSTRUCTIONS = """\
You are an agent that completes a task by calling tools, one call per turn.
Work in subgoals (HiAgent): call open_subgoal(goal) before acting, then act with the tools, then
close_subgoal(result, success) when the subgoal is achieved or given up. Finished subgoals are
shown as one-line summaries; expand(subgoal_ids) shows their steps again, and recall(query)
searches memories of earlier tasks. When the whole task is done, call finish(answer, success).
Reply with exactly one JSON object and nothing else:
{"thought": "<one short sentence>", "tool": "<tool name>", "arguments": {<name>: <value>}}
For example: {"thought": "First part of the task.", "tool": "open_subgoal", "arguments":
{"goal": "clear the top block"}}
Tools:"""


def system_prompt(tools: Sequence[Tool]) -> str:
    return INSTRUCTIONS + "\n" + "\n".join(f"- {t.signature()}" for t in tools)


def footer(turn: int, max_turns: int) -> str:
    return f"Turn {turn} of {max_turns}. Reply with the next tool call as one JSON object."


@dataclass(frozen=True, slots=True)
class Prompt:
    messages: list[ChatMessage]
    tokens: int  # system + user text, counted with the agent's counter
    view: WorkingView | None  # None for the full-history baseline


def hiagent_prompt(
    memory: WorkingMemory,
    system: str,
    *,
    prompt_tokens: int,
    count_tokens: CountTokens,
    turn: int,
    max_turns: int,
    recalled: str = "",
) -> Prompt:
    """System instructions, then memories recalled for the task, then the working memory view
    in whatever of ``prompt_tokens`` is left (at least 64 tokens)."""
    tail = footer(turn, max_turns)
    fixed = count_tokens(system) + count_tokens(tail) + TEMPLATE_TOKENS
    if recalled:
        fixed += count_tokens(recalled) + 1
    view = memory.render(max(64, prompt_tokens - fixed), count_tokens)
    user = "\n\n".join(part for part in (recalled, view.text, tail) if part)
    return Prompt(
        [ChatMessage("system", system), ChatMessage("user", user)],
        count_tokens(system) + count_tokens(user),
        view,
    )


def full_history(trajectory: Trajectory) -> str:
    """STANDARD: the task and every action/observation pair so far, in order, nothing left out."""
    lines = [f"Task: {trajectory.task}"]
    for subgoal in trajectory.subgoals:
        lines.append(f"Subgoal: {subgoal.goal}")
        lines += [step_lines(step) for step in subgoal.steps]
    return "\n".join(lines)


def full_history_prompt(
    trajectory: Trajectory,
    system: str,
    *,
    count_tokens: CountTokens,
    turn: int,
    max_turns: int,
) -> Prompt:
    user = full_history(trajectory) + "\n\n" + footer(turn, max_turns)
    return Prompt(
        [ChatMessage("system", system), ChatMessage("user", user)],
        count_tokens(system) + count_tokens(user),
        None,
    )
