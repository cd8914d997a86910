"""Request and response bodies of the REST API (pydantic at the edge).

Requests forbid unknown fields and bound every string and list, so a malformed or oversized
request is a 4xx naming the field, never a 500. Responses are what the OpenAPI schema promises.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from agents.writer import PREMISE_CHARS

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


Clean = AfterValidator(clean)
Query = Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS), Clean]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS), Clean]
DocumentBody = Annotated[str, StringConstraints(min_length=1), Clean]
Genre = Annotated[str, StringConstraints(min_length=1, max_length=200), Clean]
Premise = Annotated[str, StringConstraints(min_length=1, max_length=PREMISE_CHARS), Clean]
Instruction = Annotated[str, StringConstraints(max_length=2_000), Clean]
EventText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_EVENT_CHARS), Clean]
MAX_ID = 2**62
"""Largest record id accepted (SQL integers are 64-bit)."""
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
RecordId = Annotated[int, Path(ge=1, le=MAX_ID, description="The record's id.")]
Budget = Annotated[int, Field(ge=1, le=100_000, description="Most tokens of text returned.")]


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
    document_id: int | None
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
    document_id: int
    job_id: str


class DocumentOut(BaseModel):
    id: int
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
    k_similar: Annotated[int, Field(ge=1, le=100)] | None = None
    k_contiguous: Annotated[int, Field(ge=0, le=100)] | None = None


class Hit(BaseModel):
    """One recalled passage, as ``mneme doc search --json`` prints it."""

    episode_id: int
    document_id: int | None
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
    episode_id: int
    document_id: int | None
    start: int
    end: int
    text: str


class AnswerOut(BaseModel):
    answer: str
    citations: list[Citation]


class Deleted(BaseModel):
    id: int | str
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
    node_id: int | None = Field(description="The stored node, once the step is done.")


class BranchRequest(Request):
    node_id: Id = Field(description="Continue the story from this node.")


class NodeOut(BaseModel):
    id: int
    parent_id: int | None
    depth: int
    instruction: str
    paragraph: str
    short_term_memory: str
    plans: list[str]
    created_at: datetime


class StoryOut(BaseModel):
    id: int
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
    ttl_s: Annotated[int, Field(ge=1, le=10 * 365 * 86_400)] | None = Field(
        default=None, description="Forget the event after this many seconds."
    )


class EventsRequest(Request):
    events: list[EventIn] = Field(min_length=1, max_length=64)


class EpisodeOut(BaseModel):
    id: int
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
    episode_ids: list[Id] = Field(default_factory=list, max_length=1_000)
    half_life_s: Annotated[float, Field(ge=0.001, le=1e10)] | None = Field(
        default=None, description="With threshold: forget what decayed (importance x recency)."
    )
    threshold: Annotated[float, Field(ge=0, le=1_000)] | None = None


class Forgotten(BaseModel):
    forgotten: list[int]


class MemoryOut(BaseModel):
    namespace: str
    episodes: int
    created_at: datetime


class MemoryList(BaseModel):
    memories: list[MemoryOut]
