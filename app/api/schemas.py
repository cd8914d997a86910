"""Request and response bodies of the REST API (pydantic at the edge).

Requests forbid unknown fields and bound every string and list, so a malformed or oversized
request is a 4xx naming the field, never a 500. Responses are what the OpenAPI schema promises,
and the schema says what validation does (:func:`finish_openapi`): a request the schema allows
is refused only for its meaning (issue 17).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, NewType

from fastapi import Path
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from agents.writer_config import PREMISE_CHARS

SegmenterName = Literal["auto", "surprise", "embedding", "fixed"]
JobState = Literal["queued", "running", "done", "failed"]
DocumentState = Literal["queued", "running", "ready", "failed"]

MAX_QUERY_CHARS = 4_000
"""Longest query or question, in characters (a search budget is far smaller anyway)."""
MAX_EVENT_CHARS = 16_000
"""Longest agent event, in characters."""
MAX_NAME_CHARS = 200
"""Longest document name, in characters."""


def clean(text: str) -> str:
    """``text`` if it can be stored anywhere (UTF-8, no NUL), else a ValueError naming why."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"contains an unpaired surrogate at character {err.start}; send valid Unicode"
        ) from err
    if "\x00" in text:
        raise ValueError(f"contains a NUL character at {text.index(chr(0))}; remove it")
    return text


def filled(text: str) -> str:
    """``text`` if it holds more than whitespace, else a ValueError (nothing to read or find)."""
    if not text.strip():
        raise ValueError("is blank (only whitespace); give some text")
    return text


def worded(text: str) -> str:
    """``text`` if it holds a word (as :func:`agents.quality.words` finds them), else a
    ValueError: a story cannot start from a premise without one."""
    if not re.search(f"[{WORD}]", text):
        raise ValueError("holds no words; describe the story in a sentence or two")
    return text


def integral(value: Any) -> Any:
    """A float without a fraction (``6774.0``) as its int: JSON Schema counts it an integer, so
    a strict int field must take it; any other value is left for the field to judge."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass(frozen=True, slots=True)
class Checked:
    """A string annotation: ``check`` validates (its ValueError names the fix) and ``pattern``
    states the same rule in the JSON schema (tests compare the two). Of two, the last one's
    pattern is the schema's, so it must imply the first's."""

    check: Callable[[str], str]
    pattern: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, core: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core)
        schema["pattern"] = self.pattern
        return schema


# Every character str.isspace() counts, as \x/\u escapes that ECMA-262, Python and Rust regexes
# read alike (their \s differ), so the schema's patterns judge exactly what filled() does.
SPACE = r"\x09-\x0d\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
STORABLE = r"^[^\x00]*$"
"""Pattern of text that can be stored: no NUL (clean() refuses it, and unpaired surrogates,
which are not Unicode text at all)."""
FILLED = rf"^[{SPACE}]*[^\x00{SPACE}][^\x00]*$"
"""Pattern of storable text that is not blank (clean() and filled() together); linear time."""
WORD = "A-Za-z0-9'"
"""The characters of a word to agents.quality.words() (the tests compare the two)."""
WORDED = rf"^[^\x00{WORD}]*[{WORD}][^\x00]*$"
"""Pattern of storable text with a word in it (clean() and worded() together)."""

Clean = Checked(clean, STORABLE)
Filled = Checked(filled, FILLED)
Query = Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS), Clean, Filled]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS), Clean, Filled]
DocumentBody = Annotated[str, StringConstraints(min_length=1), Clean, Filled]
Genre = Annotated[str, StringConstraints(min_length=1, max_length=200), Clean, Filled]
Premise = Annotated[
    str, StringConstraints(min_length=1, max_length=PREMISE_CHARS), Clean, Checked(worded, WORDED)
]
Instruction = Annotated[str, StringConstraints(max_length=2_000), Clean]
"""A plan or an action; blank is allowed (the writer chooses)."""
EventText = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_EVENT_CHARS), Clean, Filled
]
Integral = BeforeValidator(integral)
"""Lets a strict int field take integral floats such as ``6774.0``; it goes after the field's
bounds (before them, pydantic cannot put the bounds in the schema)."""
MAX_ID = 2**62
"""Largest record id accepted (SQL integers are 64-bit). A power of two: FastAPI carries schema
bounds as floats, and this one survives that exactly (:func:`finish_openapi` turns it back)."""
PublicId = NewType("PublicId", int)
"""An id as the API shows it: a keyed permutation of the row id (``app/api/ids.py``). Response
fields that hold ids have this type, so a row id put in one is a type error."""
Id = Annotated[int, Field(ge=1, le=MAX_ID), Integral]
"""A public id in a request body (routes decode it to the row id)."""
RecordId = Annotated[
    int, Path(ge=1, le=MAX_ID, description="The record's id, as the API gave it (opaque).")
]
"""A public id in a path (routes decode it to the row id)."""
Budget = Annotated[
    int, Field(ge=1, le=100_000, description="Most tokens of text returned."), Integral
]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# -- errors ------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    type: str = Field(description="What kind of error: not_found, invalid_request, …")
    message: str = Field(description="One line naming the problem and the fix.")
    detail: Any = Field(default=None, description="Structured detail (e.g. each invalid field).")


class ErrorBody(BaseModel):
    error: ErrorDetail


# -- jobs --------------------------------------------------------------------------------------


class JobOut(BaseModel):
    id: str
    kind: str = Field(description="ingest or summarize")
    status: JobState
    progress: float = Field(ge=0, le=1)
    done: int = Field(description="Units of work done (of total).")
    total: int
    error: str | None
    result: dict[str, Any] | None = Field(description="What the job produced, once done.")
    document_id: PublicId | None
    created_at: datetime
    updated_at: datetime


# -- documents ---------------------------------------------------------------------------------


class DocumentText(Request):
    name: Name
    text: DocumentBody = Field(description="The document's text (size limit from settings).")
    segmenter: SegmenterName | None = Field(
        default=None, description="How the text is cut into episodes; default MNEME_SEGMENTER."
    )


class Accepted(BaseModel):
    document_id: PublicId
    job_id: str


class DocumentOut(BaseModel):
    id: PublicId
    name: str
    status: DocumentState
    job_id: str | None
    error: str | None
    chars: int | None = Field(description="Characters of text, once read.")
    episodes: int | None = Field(description="Episodes (events) stored, once read.")
    tokens: int | None
    segmenter: str | None
    created_at: datetime


class DocumentList(BaseModel):
    documents: list[DocumentOut]


class SearchRequest(Request):
    query: Query
    budget_tokens: Budget | None = None
    k_similar: Annotated[int, Field(ge=1, le=100), Integral] | None = None
    k_contiguous: Annotated[int, Field(ge=0, le=100), Integral] | None = None


class Hit(BaseModel):
    """One recalled passage, as ``mneme doc search --json`` prints it."""

    episode_id: PublicId
    document_id: PublicId | None
    text: str
    start: int = Field(description="Character offset of the passage in its document.")
    end: int = Field(description="Character offset just after the passage.")
    tokens: int
    score: float
    reason: Literal["similarity", "contiguity"]


class Hits(BaseModel):
    hits: list[Hit]


class AskRequest(Request):
    question: Query
    budget_tokens: Budget | None = None
    stream: bool = Field(default=False, description="Answer as server-sent events.")


class Citation(BaseModel):
    number: int
    episode_id: PublicId
    document_id: PublicId | None
    start: int
    end: int
    text: str


class AnswerOut(BaseModel):
    answer: str
    citations: list[Citation]


class Deleted(BaseModel):
    id: PublicId | str
    deleted: bool


# -- stories -----------------------------------------------------------------------------------


class StoryCreate(Request):
    genre: Genre
    premise: Premise
    mode: Literal["novel", "interactive"] = "novel"


class StepRequest(Request):
    plan: Instruction | None = None
    action: Instruction | None = Field(
        default=None, description="The reader's action (interactive stories)."
    )
    parent_id: Id | None = Field(default=None, description="Write after this node; default head.")


class RunOut(BaseModel):
    """A writer step while it runs: the paragraph exactly as it has streamed so far."""

    id: str
    status: Literal["queued", "running", "done", "failed"]
    phase: str = Field(description="queued, frame, paragraph, notes or storing.")
    instruction: str
    paragraph: str = Field(description="The paragraph so far, as it will be stored.")
    attempt: int
    notice: str = Field(description="Why an earlier try was discarded, if one was.")
    error: str | None
    node_id: PublicId | None = Field(description="The stored node, once the step is done.")


class BranchRequest(Request):
    node_id: Id = Field(description="Continue the story from this node.")


class NodeOut(BaseModel):
    id: PublicId
    parent_id: PublicId | None
    depth: int
    instruction: str
    paragraph: str
    short_term_memory: str
    plans: list[str]
    created_at: datetime


class StoryOut(BaseModel):
    id: PublicId
    title: str
    genre: str
    premise: str
    outline: str
    mode: str
    head: NodeOut | None
    created_at: datetime
    updated_at: datetime


class StoryList(BaseModel):
    stories: list[StoryOut]


# -- memories ----------------------------------------------------------------------------------


class EventIn(Request):
    text: EventText
    importance: Annotated[float, Field(ge=0, le=1_000)] = 1.0
    pinned: bool = False
    ttl_s: Annotated[int, Field(ge=1, le=10 * 365 * 86_400), Integral] | None = Field(
        default=None, description="Forget the event after this many seconds."
    )


class EventsRequest(Request):
    events: list[EventIn] = Field(min_length=1, max_length=64)


class EpisodeOut(BaseModel):
    id: PublicId
    text: str
    importance: float
    pinned: bool
    version: int
    created_at: datetime
    expires_at: datetime | None


class Episodes(BaseModel):
    episodes: list[EpisodeOut]


class PinRequest(Request):
    episode_ids: list[Id] = Field(min_length=1, max_length=1_000)
    pinned: bool = True


class ForgetRequest(Request):
    # Both half_life_s and threshold (numbers), or neither (absent or null), in the schema too.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {
                    "required": ["half_life_s", "threshold"],
                    "properties": {
                        "half_life_s": {"type": "number"},
                        "threshold": {"type": "number"},
                    },
                },
                {"properties": {"half_life_s": {"type": "null"}, "threshold": {"type": "null"}}},
            ]
        }
    )

    episode_ids: list[Id] = Field(default_factory=list, max_length=1_000)
    half_life_s: Annotated[float, Field(ge=0.001, le=1e10)] | None = Field(
        default=None, description="With threshold: forget what decayed (importance x recency)."
    )
    threshold: Annotated[float, Field(ge=0, le=1_000)] | None = None

    @model_validator(mode="after")
    def _decay_needs_both(self) -> ForgetRequest:
        if (self.half_life_s is None) != (self.threshold is None):
            raise ValueError("give both half_life_s and threshold to forget by decay, or neither")
        return self


class Forgotten(BaseModel):
    forgotten: list[PublicId]


class MemoryOut(BaseModel):
    namespace: str
    episodes: int
    created_at: datetime


class MemoryList(BaseModel):
    memories: list[MemoryOut]


# -- the OpenAPI schema ------------------------------------------------------------------------

READ_BY_HAND: tuple[type[BaseModel], ...] = (DocumentText,)
"""Bodies a route parses itself (the upload takes JSON or multipart), which FastAPI therefore
never adds to the schema's components although the route's schema refers to them."""

_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


def _integer_bounds(node: Any) -> None:
    """Integer schemas under ``node`` given integer bounds again, in place."""
    if isinstance(node, list):
        for item in node:
            _integer_bounds(item)
    elif isinstance(node, dict):
        kinds = node.get("type")
        if kinds == "integer" or (isinstance(kinds, list) and "integer" in kinds):
            for key in _BOUNDS:
                bound = node.get(key)
                if isinstance(bound, float) and bound.is_integer():
                    node[key] = int(bound)
        for value in node.values():
            _integer_bounds(value)


def finish_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's OpenAPI document made true to the models, in place (and idempotent).

    FastAPI's own schema models hold every bound as a float, so ``maximum: 2**62`` came out as
    ``4.611686018427388e+18`` on an integer; each integer schema gets its integer bounds back
    (exactly: every integer bound here, :data:`MAX_ID` included, is a float without rounding).
    The :data:`READ_BY_HAND` bodies are added to the components, so every ``$ref`` resolves."""
    _integer_bounds(schema)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in READ_BY_HAND:
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
    schema["components"]["schemas"] = dict(sorted(components.items()))
    return schema
