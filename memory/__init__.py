"""Mneme's memory: episodes in SQL (the truth) and a vector index derived from it.

Public API: :class:`MemoryStore` over a :class:`Database`, a :class:`VectorIndex` and an
:class:`Embedder`; :class:`SqlStoryStore` for the writer's story trees; the record types; the
errors.
"""

from memory.database import Database
from memory.embedder import Embedder
from memory.errors import (
    InvalidRecord,
    NotFound,
    SchemaOutOfDate,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
)
from memory.reconcile import ReconcileReport
from memory.records import (
    BibleEntry,
    BibleKind,
    Document,
    Episode,
    EpisodeVersion,
    Job,
    JobStatus,
    Namespace,
    NewEpisode,
    NewStoryNode,
    SearchHit,
    Story,
    StoryMode,
    StoryNode,
)
from memory.store import MemoryStore
from memory.stories import SqlStoryStore
from memory.vectors import ChromaVectorIndex, VectorHit, VectorIndex

__all__ = [
    "BibleEntry",
    "BibleKind",
    "ChromaVectorIndex",
    "Database",
    "Document",
    "Embedder",
    "Episode",
    "EpisodeVersion",
    "InvalidRecord",
    "Job",
    "JobStatus",
    "MemoryStore",
    "Namespace",
    "NewEpisode",
    "NewStoryNode",
    "NotFound",
    "ReconcileReport",
    "SchemaOutOfDate",
    "SearchHit",
    "SqlStoryStore",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "Story",
    "StoryMode",
    "StoryNode",
    "VectorHit",
    "VectorIndex",
]
