"""Structured output: parse a model's reply as JSON, validate it, and repair it a bounded number
of times. Every backend runs its ``generate_json`` through :func:`validated`, guided decoding or not
(guided decoding still cuts a reply off at ``max_tokens``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from serving.errors import StructuredOutputError
from serving.llm import ChatMessage, OnText, Schema

MAX_LISTED_ERRORS = 5
"""Validation errors quoted back to the model per repair request; the rest are counted."""


class InvalidReply(ValueError):
    """A reply that holds no JSON object, or one that does not validate; the message is what the
    model is told."""


@dataclass(frozen=True, slots=True)
class _Span:
    start: int
    end: int | None
    """One past the closing brace; None when the object is never closed."""


def _object_spans(reply: str) -> list[_Span]:
    """Every top-level ``{…}`` span in ``reply``, in order, braces inside JSON strings ignored.

    Code fences and prose hold no braces of their own, so they fall outside every span.
    """
    spans: list[_Span] = []
    position = reply.find("{")
    while position != -1:
        depth, in_string, escaped, end = 0, False, False, None
        for index in range(position, len(reply)):
            char = reply[index]
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    end = index + 1
                    break
        spans.append(_Span(position, end))
        if end is None:
            break
        position = reply.find("{", end)
    return spans


def extract_json(reply: str) -> dict[str, Any]:
    """The outermost JSON object in ``reply``, tolerating code fences and prose around it.

    Top-level ``{…}`` spans are tried in order and the first that decodes wins (so a brace in the
    prose before the JSON does not hide it). Raises :class:`InvalidReply` naming what is wrong
    with the likeliest candidate (the longest span) when none decodes.
    """
    spans = _object_spans(reply)
    if not spans:
        raise InvalidReply("the reply holds no JSON object (no '{' found)")
    problems: list[tuple[int, str]] = []
    for span in spans:
        if span.end is None:
            problems.append(
                (
                    len(reply) - span.start,
                    "the JSON object is never closed (the reply may have been cut off at "
                    "max_tokens; keep it shorter)",
                )
            )
            continue
        text = reply[span.start : span.end]
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            problems.append(
                (len(text), f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}")
            )
            continue
        if isinstance(value, dict):  # always, for a balanced {...} span that decodes
            return value
    raise InvalidReply(max(problems, key=lambda problem: problem[0])[1])


def describe_validation_error(error: ValidationError) -> str:
    """``field.path: message`` for the first few errors, joined by "; " (for the model to read)."""
    details = error.errors(include_url=False)
    parts = [
        f"{'.'.join(str(part) for part in detail['loc']) or '(root)'}: {detail['msg']}"
        for detail in details[:MAX_LISTED_ERRORS]
    ]
    if len(details) > MAX_LISTED_ERRORS:
        parts.append(f"and {len(details) - MAX_LISTED_ERRORS} more")
    return "; ".join(parts)


def parse_reply(reply: str, schema: type[Schema]) -> Schema:
    """``reply`` as a validated ``schema`` instance; :class:`InvalidReply` says why not."""
    value = extract_json(reply)
    try:
        return schema.model_validate(value)
    except ValidationError as err:
        raise InvalidReply(describe_validation_error(err)) from err


def repair_request(schema: type[BaseModel], problem: str) -> ChatMessage:
    """The user message that asks the model to correct a reply that failed with ``problem``."""
    return ChatMessage(
        role="user",
        content=(
            f"That reply is not valid JSON for the {schema.__name__} schema: {problem}. "
            "Reply again with only the corrected JSON object: no prose, no code fences."
        ),
    )


async def validated(
    generate: Callable[[Sequence[ChatMessage]], Awaitable[str]],
    messages: Sequence[ChatMessage],
    schema: type[Schema],
    *,
    repairs: int = 2,
) -> Schema:
    """Call ``generate`` until its reply validates against ``schema`` (1 + ``repairs`` calls max).

    After a bad reply the conversation grows by that reply (as the assistant) and a user message
    quoting the problem and asking for corrected JSON only; ``messages`` itself is not modified.
    Errors raised by ``generate`` (e.g. :class:`serving.errors.LLMUnavailable`) propagate at once.
    Raises :class:`StructuredOutputError` naming the schema, the attempts and the last problem
    when every attempt fails, and ``ValueError`` when ``repairs`` is negative.
    """
    if repairs < 0:
        raise ValueError(f"repairs={repairs} must be 0 or more")
    conversation = list(messages)
    attempts = 1 + repairs
    last: InvalidReply | None = None
    for attempt in range(attempts):
        reply = await generate(conversation)
        try:
            return parse_reply(reply, schema)
        except InvalidReply as err:
            last = err
            if attempt + 1 < attempts:
                conversation += [
                    ChatMessage(role="assistant", content=reply),
                    repair_request(schema, str(err)),
                ]
    raise StructuredOutputError(
        f"no valid {schema.__name__} after {attempts} attempt(s) (1 + {repairs} repairs); "
        f"last problem: {last}"
    ) from last


class Accumulator:
    """Joins streamed pieces of one reply and reports the text so far to ``on_text``."""

    def __init__(self, on_text: OnText | None) -> None:
        self.on_text = on_text
        self.parts: list[str] = []

    def add(self, piece: str) -> None:
        if piece:
            self.parts.append(piece)
            if self.on_text is not None:
                self.on_text("".join(self.parts))

    @property
    def text(self) -> str:
        return "".join(self.parts)


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def streamed_field(reply: str, key: str) -> str | None:
    """The value of the top-level string field ``key`` in a JSON reply that may still be
    arriving: what has been decoded so far (an escape cut in half is left out), or None while
    the field has not started. Lets a UI show ``{"paragraph": "…`` as prose while it streams.
    """
    match = re.search(r'"' + re.escape(key) + r'"\s*:\s*"', reply)
    if match is None:
        return None
    out: list[str] = []
    index, end = match.end(), len(reply)
    while index < end:
        char = reply[index]
        if char == '"':
            break
        if char != "\\":
            out.append(char)
            index += 1
            continue
        if index + 1 >= end:
            break  # the escape's second half has not arrived
        code = reply[index + 1]
        if code == "u":
            digits = reply[index + 2 : index + 6]
            if len(digits) < 4:
                break
            try:
                point = int(digits, 16)
            except ValueError:
                break
            index += 6
            if 0xD800 <= point < 0xDC00:  # a surrogate pair: join it, or wait for its half
                low = re.match(r"\\u[dD][c-fC-F][0-9a-fA-F]{2}", reply[index : index + 6])
                if low is None:
                    break
                point = 0x10000 + ((point - 0xD800) << 10) + int(low.group()[2:], 16) - 0xDC00
                index += 6
            if not 0xDC00 <= point < 0xE000:  # a lone low surrogate cannot be shown: skip it
                out.append(chr(point))
        else:
            out.append(_ESCAPES.get(code, code))
            index += 2
    return "".join(out)
