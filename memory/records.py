"""Values the memory package hands out: frozen, slotted, no ORM attached."""

from __future__ import annotations

from collections.abc import Mapping
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
    """An episode found by vector similarity; ``score`` is cosine similarity in [-1, 1]."""

    episode: Episode
    score: float
