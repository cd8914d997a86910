"""Values the memory package hands out: frozen, slotted, no ORM attached."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


@dataclass(frozen=True, slots=True)
class Namespace:
    """A tenant, story or agent: every record belongs to exactly one; no query crosses two."""

    id: int
    name: str
    embedding_model: str
    embedding_dim: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewEpisode:
    """An episode to store: a span of a source text (character offsets, end exclusive)."""

    text: str
    start_char: int = 0
    end_char: int | None = None  # None = start_char + len(text)
    token_count: int = 0
    document_id: int | None = None
    surprise_mean: float = 0.0
    surprise_max: float = 0.0
    importance: float = 1.0
    pinned: bool = False
    summary: str | None = None
    expires_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Episode:
    """A stored event: a contiguous span of text with its order, statistics and version."""

    id: int
    namespace_id: int
    document_id: int | None
    ordinal: int  # order index within the namespace: the axis of temporal contiguity
    text: str
    start_char: int
    end_char: int
    token_count: int
    surprise_mean: float
    surprise_max: float
    importance: float
    pinned: bool
    summary: str | None
    version: int  # 1 on creation, +1 on every edit
    created_at: datetime
    updated_at: datetime
    accessed_at: datetime
    expires_at: datetime | None
    metadata: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class EpisodeVersion:
    """One kept state of an episode: the state it had from ``version`` until the next edit."""

    episode_id: int
    version: int
    text: str
    summary: str | None
    importance: float
    pinned: bool
    reason: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Retention:
    """An episode's fields that decide whether it is forgotten."""

    episode_id: int
    importance: float
    pinned: bool
    accessed_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Document:
    """A source text ingested into a namespace."""

    id: int
    namespace_id: int
    name: str
    source: str | None
    char_count: int
    sha256: str
    created_at: datetime
    metadata: Mapping[str, Any]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Job:
    """Long work (ingest, summarise) tracked in the database so any worker can report on it."""

    id: str
    namespace_id: int | None
    kind: str
    status: JobStatus
    progress: float  # 0..1
    done: int
    total: int
    error: str | None
    payload: Mapping[str, Any]
    result: Mapping[str, Any] | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SearchHit:
    """An episode found by a search: ``score`` is cosine similarity in [-1, 1] for a vector
    search, the lexical rank score (higher is better, ``memory.lexical``) for a full-text one.
    """

    episode: Episode
    score: float


class StoryMode(StrEnum):
    NOVEL = "novel"  # the writer chooses among its own plans
    INTERACTIVE = "interactive"  # the reader is the protagonist and picks or types an action


@dataclass(frozen=True, slots=True)
class Story:
    """A RecurrentGPT story: its setting and the node of the story tree the writer is at.

    The story owns ``namespace``, which holds its long-term (episodic) memory.
    """

    id: int
    namespace_id: int
    namespace: str
    title: str
    genre: str
    premise: str
    outline: str
    mode: StoryMode
    head_node_id: int | None  # None until the first node is written
    created_at: datetime
    updated_at: datetime
    metadata: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class NewStoryNode:
    """One writer step to store: the paragraph written and the memory state after it."""

    paragraph: str
    instruction: str = ""  # the plan chosen or the reader's action; "" for the root
    short_term_memory: str = ""
    memory_reason: str = ""  # why the short-term memory changed as it did
    plans: Sequence[str] = ()  # the next plans offered
    episode_ids: Sequence[int] = ()  # long-term memory episodes made from ``paragraph``
    prompt: Mapping[str, Any] = field(default_factory=dict)  # what was sent, for inspection
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoryNode:
    """A stored step of a story tree. Restoring a node restores the writer's state at it."""

    id: int
    story_id: int
    parent_id: int | None  # None for the root
    depth: int  # 0 for the root, parent's depth + 1 otherwise
    instruction: str
    paragraph: str
    short_term_memory: str
    memory_reason: str
    plans: tuple[str, ...]
    episode_ids: tuple[int, ...]
    prompt: Mapping[str, Any]
    metadata: Mapping[str, Any]
    created_at: datetime


class BibleKind(StrEnum):
    CHARACTER = "character"
    PLACE = "place"
    FACT = "fact"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class BibleEntry:
    """A story-bible entry: what the writer must keep consistent about a character, place, fact."""

    id: int
    story_id: int
    kind: BibleKind
    name: str  # unique within the story
    aliases: tuple[str, ...]
    text: str
    created_at: datetime
    updated_at: datetime
