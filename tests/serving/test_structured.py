"""The bounded parse-and-repair loop for structured output."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from pydantic import BaseModel, Field

from serving.errors import LLMUnavailable, StructuredOutputError
from serving.llm import ChatMessage
from serving.structured import InvalidReply, extract_json, parse_reply, validated


class Plan(BaseModel):
    paragraph: str
    plans: list[str] = Field(min_length=3, max_length=3)


VALID = '{"paragraph": "It rained.", "plans": ["a", "b", "c"]}'
ASK = [ChatMessage("system", "Reply with JSON."), ChatMessage("user", "Write the next step.")]


class ScriptedReplies:
    """A ``generate`` callable that returns scripted replies and records each conversation."""

    def __init__(self, *replies: str) -> None:
        self._replies = list(replies)
        self.seen: list[list[ChatMessage]] = []

    async def __call__(self, conversation: Sequence[ChatMessage]) -> str:
        self.seen.append(list(conversation))
        return self._replies[min(len(self.seen), len(self._replies)) - 1]


@pytest.mark.parametrize(
    "reply",
    [
        VALID,
        f"```json\n{VALID}\n```",
        f"```\n{VALID}\n```",
        f"Sure! Here is the JSON you asked for:\n{VALID}\nHope it helps.",
        f"I filled in {{the fields}} as asked: {VALID}",
        f"  \n{VALID}  trailing words with a brace }}",
    ],
)
def test_extract_json_finds_the_object_around_fences_and_prose(reply: str) -> None:
    assert extract_json(reply) == {"paragraph": "It rained.", "plans": ["a", "b", "c"]}


def test_braces_and_quotes_inside_strings_do_not_end_the_object() -> None:
    reply = 'x {"paragraph": "a } and a \\" and {", "plans": ["{", "}", "\\\\"]} y'
    assert extract_json(reply) == {"paragraph": 'a } and a " and {', "plans": ["{", "}", "\\"]}


def test_nested_objects_stay_inside_the_outermost_one() -> None:
    assert extract_json('{"a": {"b": {"c": 1}}, "d": 2}') == {"a": {"b": {"c": 1}}, "d": 2}


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ("no json here", "no JSON object"),
        ('{"paragraph": "cut off at max_tok', "never closed"),
        ('{"paragraph": "x",}', "invalid JSON at line 1"),
        ("[1, 2, 3]", "no JSON object"),
    ],
)
def test_extract_json_says_what_is_wrong(reply: str, problem: str) -> None:
    with pytest.raises(InvalidReply, match=problem):
        extract_json(reply)


def test_parse_reply_quotes_validation_errors_with_their_paths() -> None:
    with pytest.raises(InvalidReply) as caught:
        parse_reply('{"paragraph": 3, "plans": ["a"]}', Plan)
    message = str(caught.value)
    assert "paragraph: Input should be a valid string" in message
    assert "plans: List should have at least 3 items" in message


def test_a_valid_first_reply_takes_one_call() -> None:
    generate = ScriptedReplies(f"```json\n{VALID}\n```")
    plan = asyncio.run(validated(generate, ASK, Plan))
    assert plan == Plan(paragraph="It rained.", plans=["a", "b", "c"])
    assert generate.seen == [ASK]


def test_a_bad_reply_is_repaired_with_the_error_quoted() -> None:
    bad = '{"paragraph": "It rained.", "plans": ["a"]}'
    generate = ScriptedReplies(bad, VALID)
    plan = asyncio.run(validated(generate, ASK, Plan))
    assert plan.plans == ["a", "b", "c"]
    assert len(generate.seen) == 2
    repaired = generate.seen[1]
    assert repaired[:2] == ASK
    assert repaired[2] == ChatMessage("assistant", bad)
    assert repaired[3].role == "user"
    assert "Plan" in repaired[3].content
    assert "plans: List should have at least 3 items" in repaired[3].content
    assert "only the corrected JSON" in repaired[3].content


def test_repairs_accumulate_and_the_caller_list_is_untouched() -> None:
    messages = list(ASK)
    generate = ScriptedReplies("nothing", "{broken", VALID)
    asyncio.run(validated(generate, messages, Plan))
    assert messages == ASK
    assert [len(seen) for seen in generate.seen] == [2, 4, 6]
    assert [m.content for m in generate.seen[2] if m.role == "assistant"] == ["nothing", "{broken"]


@pytest.mark.parametrize("repairs", [0, 1, 2, 4])
def test_always_invalid_stops_after_one_plus_repairs_calls(repairs: int) -> None:
    generate = ScriptedReplies('{"paragraph": "x"}')
    with pytest.raises(StructuredOutputError) as caught:
        asyncio.run(validated(generate, ASK, Plan, repairs=repairs))
    assert len(generate.seen) == 1 + repairs
    message = str(caught.value)
    assert "Plan" in message
    assert f"{1 + repairs} attempt(s)" in message
    assert "plans: Field required" in message
    assert isinstance(caught.value.__cause__, InvalidReply)


def test_negative_repairs_are_refused() -> None:
    with pytest.raises(ValueError, match="repairs=-1"):
        asyncio.run(validated(ScriptedReplies(VALID), ASK, Plan, repairs=-1))


def test_backend_errors_propagate_without_repairs() -> None:
    calls = 0

    async def down(conversation: Sequence[ChatMessage]) -> str:
        nonlocal calls
        calls += 1
        raise LLMUnavailable("http://127.0.0.1:1/v1 did not answer")

    with pytest.raises(LLMUnavailable):
        asyncio.run(validated(down, ASK, Plan))
    assert calls == 1
