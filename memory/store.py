"""MemoryStore: SQL and the vector index kept as one truth (SQL written first, index second).

SQL also holds the lexical index (:mod:`memory.lexical`), written with the episodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from memory.database import Database
from memory.documents import SqlDocumentStore
from memory.embedder import Embedder
from memory.episodes import SqlEpisodeStore, Vectors
from memory.errors import InvalidRecord
from memory.jobs import SqlJobStore
from memory.lexical import SqlLexicalIndex
from memory.namespaces import SqlNamespaceStore
from memory.reconcile import ReconcileReport, reconcile
from memory.records import Document, Episode, Namespace, NewEpisode, SearchHit
from memory.vectors import VectorIndex


class MemoryStore:
    """Every record in SQL, every embedding also in the vector index, per namespace.

    Build it through ``open``: that repairs any drift a crash left between the two stores.
    """

    def __init__(self, database: Database, index: VectorIndex, embedder: Embedder) -> None:
        self.database = database
        self.index = index
        self.embedder = embedder
        self.namespaces = SqlNamespaceStore(database)
        self.episodes = SqlEpisodeStore(database)
        self.documents = SqlDocumentStore(database)
        self.jobs = SqlJobStore(database)
        self.lexical = SqlLexicalIndex(database)

    @classmethod
    def open(
        cls, database: Database, index: VectorIndex, embedder: Embedder
    ) -> tuple[MemoryStore, ReconcileReport]:
        """A store whose index has been reconciled with SQL; also returns what was repaired."""
        database.check_schema()
        store = cls(database, index, embedder)
        return store, store.reconcile()

    def reconcile(self) -> ReconcileReport:
        return reconcile(self.namespaces, self.episodes, self.index, self.lexical)

    def namespace(self, name: str) -> Namespace:
        """The namespace ``name``, created on first use with this store's embedding model."""
        return self.namespaces.ensure(
            name, embedding_model=self.embedder.model_name, embedding_dim=self.embedder.dimension
        )

    def add(
        self,
        namespace: str,
        episodes: Sequence[NewEpisode],
        embeddings: Vectors | None = None,
    ) -> list[Episode]:
        """Store episodes and their vectors; embeds the texts unless ``embeddings`` are given."""
        if not episodes:
            return []
        space = self.namespace(namespace)
        vectors = (
            self.embedder.embed([e.text for e in episodes])
            if embeddings is None
            else (np.asarray(embeddings, dtype=np.float32))
        )
        stored = self.episodes.add(namespace, episodes, vectors)
        self._index(space.id, stored, vectors)
        return stored

    def add_document(
        self,
        namespace: str,
        name: str,
        text: str,
        episodes: Sequence[NewEpisode],
        embeddings: Vectors,
        *,
        source: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[Document, list[Episode]]:
        """Store a document with its episodes atomically in SQL, then index their vectors."""
        space = self.namespace(namespace)
        document, stored = self.documents.ingest(
            namespace, name, text, episodes, embeddings, source=source, metadata=metadata
        )
        self._index(space.id, stored, embeddings)
        return document, stored

    def extend_document(
        self,
        namespace: str,
        document_id: int,
        text: str,
        episodes: Sequence[NewEpisode],
        embeddings: Vectors,
        metadata: Mapping[str, Any],
    ) -> tuple[Document, list[Episode]]:
        """A growing document is now ``text``: its new episodes in SQL atomically, then indexed."""
        space = self.namespaces.get(namespace)
        document, stored = self.documents.extend(
            namespace, document_id, text, episodes, embeddings, metadata
        )
        self._index(space.id, stored, embeddings)
        return document, stored

    def _index(self, namespace_id: int, stored: Sequence[Episode], vectors: Vectors) -> None:
        if stored:
            self.index.upsert(
                namespace_id, [e.id for e in stored], vectors, [e.version for e in stored]
            )

    def search(self, namespace: str, query: str | Vectors, k: int = 10) -> list[SearchHit]:
        """The ``k`` episodes most similar to ``query`` (text or unit vector), best first."""
        if k <= 0:
            raise InvalidRecord(f"k={k}: ask for at least one result")
        space = self.namespaces.get(namespace)
        vector = self.embedder.embed([query])[0] if isinstance(query, str) else query
        hits = self.index.query(space.id, np.asarray(vector, dtype=np.float32), k)
        found = {e.id: e for e in self.episodes.get_many(namespace, [h.id for h in hits])}
        # An id the index holds but SQL does not (drift not yet repaired) is skipped: SQL decides.
        return [SearchHit(found[h.id], h.score) for h in hits if h.id in found]

    def lexical_search(
        self, namespace: str, query: str, k: int = 10, *, document_id: int | None = None
    ) -> list[SearchHit]:
        """The ``k`` episodes whose words best match ``query`` (full text), best first.

        ``score`` is the lexical rank score (higher is better; comparable within one call).
        ``document_id`` limits the search to one document.
        """
        if k <= 0:
            raise InvalidRecord(f"k={k}: ask for at least one result")
        space = self.namespaces.get(namespace)
        hits = self.lexical.search(space.id, query, k, document_id=document_id)
        found = {e.id: e for e in self.episodes.get_many(namespace, [h.id for h in hits])}
        return [SearchHit(found[h.id], h.score) for h in hits if h.id in found]

    def edit(
        self,
        namespace: str,
        episode_id: int,
        *,
        text: str | None = None,
        importance: float | None = None,
        pinned: bool | None = None,
        reason: str | None = None,
    ) -> Episode:
        """Edit an episode (versioned); a new text is re-embedded and re-indexed."""
        space = self.namespaces.get(namespace)
        vector = None if text is None else self.embedder.embed([text])[0]
        episode = self.episodes.edit(
            namespace,
            episode_id,
            text=text,
            importance=importance,
            pinned=pinned,
            embedding=vector,
            reason=reason,
        )
        if vector is not None:
            self.index.upsert(space.id, [episode.id], vector[None, :], [episode.version])
        return episode

    def delete(self, namespace: str, episode_ids: Sequence[int]) -> list[int]:
        space = self.namespaces.get(namespace)
        deleted = self.episodes.delete(namespace, episode_ids)
        self.index.delete(space.id, deleted)
        return deleted

    def delete_document(self, namespace: str, document_id: int) -> None:
        space = self.namespaces.get(namespace)
        ids = [e.id for e in self.episodes.page(namespace, document_id=document_id, limit=10**9)]
        self.documents.delete(namespace, document_id)
        self.index.delete(space.id, ids)

    def delete_namespace(self, namespace: str) -> None:
        space = self.namespaces.delete(namespace)
        self.index.drop(space.id)

    def touch(
        self, namespace: str, episode_ids: Sequence[int], when: datetime | None = None
    ) -> None:
        self.episodes.touch(namespace, episode_ids, when)
