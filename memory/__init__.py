"""Mneme's memory: episodes in SQL (the truth) and a vector index derived from it.

Public API: :class:`MemoryStore` over a :class:`Database`, a :class:`VectorIndex` and an
:class:`Embedder`; the record types; the errors.
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
    Document,
    Episode,
    EpisodeVersion,
    Job,
    JobStatus,
    Namespace,
    NewEpisode,
    SearchHit,
)
from memory.store import MemoryStore
from memory.vectors import ChromaVectorIndex, VectorHit, VectorIndex

__all__ = [
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
    "NotFound",
    "ReconcileReport",
    "SchemaOutOfDate",
    "SearchHit",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "VectorHit",
    "VectorIndex",
]
