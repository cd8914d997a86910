"""Mneme's memory: episodes in SQL (the truth) and a vector index derived from it.

Public API: :class:`MemoryStore` over a :class:`Database`, a :class:`VectorIndex` and an
:class:`Embedder`; :class:`SqlStoryStore` for the writer's story trees; an agent's
:class:`TrajectoryStore` of :class:`WorkingMemory` and a LangGraph store's :class:`ItemStore`,
with their SQL implementations; the record types; the errors.
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
from memory.items import ItemStore, SqlItemStore, StoredItem
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
from memory.stories import SqlStoryStore, StoryStore
from memory.vectors import ChromaVectorIndex, VectorHit, VectorIndex
from memory.working import SqlTrajectoryStore, SqlWorkingMemory, TrajectoryStore, WorkingMemory

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
    "ItemStore",
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
    "SqlItemStore",
    "SqlStoryStore",
    "SqlTrajectoryStore",
    "SqlWorkingMemory",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "StoredItem",
    "Story",
    "StoryMode",
    "StoryNode",
    "StoryStore",
    "TrajectoryStore",
    "VectorHit",
    "VectorIndex",
    "WorkingMemory",
]
