"""Episodes in SQL: round trips, document order, versioned edits, pins, expiry."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from memory.database import Database
from memory.errors import InvalidRecord, NotFound
from memory.namespaces import namespace_row
from memory.records import Episode, EpisodeVersion, NewEpisode, Retention
from memory.tables import DocumentRow, EpisodeRow, EpisodeVersionRow, NamespaceRow, utcnow

Vectors = npt.NDArray[np.float32]

_UNSET = object()


def to_episode(row: EpisodeRow) -> Episode:
    return Episode(
        id=row.id,
        namespace_id=row.namespace_id,
        document_id=row.document_id,
        ordinal=row.ordinal,
        text=row.text,
        start_char=row.start_char,
        end_char=row.end_char,
        token_count=row.token_count,
        surprise_mean=row.surprise_mean,
        surprise_max=row.surprise_max,
        importance=row.importance,
        pinned=row.pinned,
        summary=row.summary,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        accessed_at=row.accessed_at,
        expires_at=row.expires_at,
        metadata=dict(row.meta),
    )


def _snapshot(row: EpisodeRow, reason: str | None) -> EpisodeVersionRow:
    return EpisodeVersionRow(
        episode_id=row.id,
        version=row.version,
        text=row.text,
        summary=row.summary,
        importance=row.importance,
        pinned=row.pinned,
        reason=reason,
        created_at=row.updated_at,
    )


def _check(episode: NewEpisode, dimension: int, vector: Vectors | None) -> int:
    """Validate a new episode; return its end offset."""
    if not isinstance(episode.text, str) or not episode.text.strip():
        raise InvalidRecord("an episode's text is empty; give it the span's text")
    end = episode.start_char + len(episode.text) if episode.end_char is None else episode.end_char
    if episode.start_char < 0 or end < episode.start_char:
        raise InvalidRecord(
            f"offsets [{episode.start_char}, {end}) are not a span; need 0 <= start <= end"
        )
    if episode.token_count < 0:
        raise InvalidRecord(f"token_count {episode.token_count} is negative")
    if vector is not None and vector.shape != (dimension,):
        raise InvalidRecord(
            f"embedding of shape {vector.shape} does not fit the namespace's dimension {dimension}"
        )
    return end


def check_documents(session: Session, namespace_id: int, ids: set[int | None]) -> None:
    """Raise :class:`NotFound` unless every document id is in the namespace."""
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return
    found = set(
        session.scalars(
            select(DocumentRow.id).where(
                DocumentRow.namespace_id == namespace_id, DocumentRow.id.in_(wanted)
            )
        )
    )
    if missing := sorted(wanted - found):
        raise NotFound(f"documents {missing} do not exist in this namespace")


def insert_episodes(
    session: Session,
    space: NamespaceRow,
    episodes: Sequence[NewEpisode],
    embeddings: Vectors | None,
    document_id: int | None = None,
) -> list[Episode]:
    """Append episodes after the namespace's last one, inside the caller's transaction.

    ``document_id``, when given, overrides each episode's own.
    """
    if embeddings is not None and len(embeddings) != len(episodes):
        raise InvalidRecord(f"{len(episodes)} episodes but {len(embeddings)} embeddings")
    now = utcnow()
    # Writers to one namespace take turns, so two concurrent ingests never pick the same
    # ordinals: PostgreSQL's FOR NO KEY UPDATE holds the namespace row until commit without
    # conflicting with the key-share locks that foreign keys take (no deadlock); SQLite has
    # one writer anyway.
    session.execute(
        select(NamespaceRow.id).where(NamespaceRow.id == space.id).with_for_update(key_share=True)
    )
    last = session.scalar(
        select(func.max(EpisodeRow.ordinal)).where(EpisodeRow.namespace_id == space.id)
    )
    ordinal = -1 if last is None else last
    rows = []
    for index, episode in enumerate(episodes):
        vector = None if embeddings is None else embeddings[index]
        end = _check(episode, space.embedding_dim, vector)
        ordinal += 1
        rows.append(
            EpisodeRow(
                namespace_id=space.id,
                document_id=episode.document_id if document_id is None else document_id,
                ordinal=ordinal,
                text=episode.text,
                start_char=episode.start_char,
                end_char=end,
                token_count=episode.token_count,
                surprise_mean=episode.surprise_mean,
                surprise_max=episode.surprise_max,
                importance=episode.importance,
                pinned=episode.pinned,
                summary=episode.summary,
                embedding=None if vector is None else vector.astype("<f4").tobytes(),
                version=1,
                meta=dict(episode.metadata),
                created_at=now,
                updated_at=now,
                accessed_at=now,
                expires_at=episode.expires_at,
            )
        )
    session.add_all(rows)
    session.flush()
    return [to_episode(row) for row in rows]


class SqlEpisodeStore:
    """Episodes of a namespace in SQL. Every method takes the namespace name: nothing crosses."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def add(
        self,
        namespace: str,
        episodes: Sequence[NewEpisode],
        embeddings: Vectors | None = None,
    ) -> list[Episode]:
        """Append episodes after the namespace's last one, in one transaction.

        ``embeddings`` (n, dim) float32, row i for episode i, are kept in SQL so the vector
        index can always be rebuilt from here. All or nothing: a bad episode writes none.
        """
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            check_documents(session, space.id, {e.document_id for e in episodes})
            return insert_episodes(session, space, episodes, embeddings)

    def _row(self, session: Session, namespace: str, episode_id: int) -> EpisodeRow:
        space = namespace_row(session, namespace)
        row = session.get(EpisodeRow, episode_id)
        if row is None or row.namespace_id != space.id:
            raise NotFound(f"episode {episode_id} does not exist in namespace {namespace!r}")
        return row

    def get(self, namespace: str, episode_id: int) -> Episode:
        with self.database.session() as session:
            return to_episode(self._row(session, namespace, episode_id))

    def get_many(self, namespace: str, episode_ids: Sequence[int]) -> list[Episode]:
        """The episodes among ``episode_ids`` that exist in the namespace, in ordinal order."""
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            rows = session.scalars(
                select(EpisodeRow)
                .where(EpisodeRow.namespace_id == space.id, EpisodeRow.id.in_(episode_ids))
                .order_by(EpisodeRow.ordinal)
            )
            return [to_episode(row) for row in rows]

    def page(
        self,
        namespace: str,
        *,
        document_id: int | None = None,
        after_ordinal: int = -1,
        limit: int = 1000,
    ) -> list[Episode]:
        """Episodes in order, a page at a time (``after_ordinal`` = last ordinal seen)."""
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            query = select(EpisodeRow).where(
                EpisodeRow.namespace_id == space.id, EpisodeRow.ordinal > after_ordinal
            )
            if document_id is not None:
                query = query.where(EpisodeRow.document_id == document_id)
            rows = session.scalars(query.order_by(EpisodeRow.ordinal).limit(limit))
            return [to_episode(row) for row in rows]

    def at_ordinals(self, namespace: str, ordinals: Sequence[int]) -> list[Episode]:
        """The episodes at the given order positions (those that exist), in order."""
        if not ordinals:
            return []
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            rows = session.scalars(
                select(EpisodeRow)
                .where(EpisodeRow.namespace_id == space.id, EpisodeRow.ordinal.in_(ordinals))
                .order_by(EpisodeRow.ordinal)
            )
            return [to_episode(row) for row in rows]

    def retention(self, namespace: str) -> list[Retention]:
        """What forgetting needs of every episode, without loading texts or embeddings."""
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            rows = session.execute(
                select(
                    EpisodeRow.id,
                    EpisodeRow.importance,
                    EpisodeRow.pinned,
                    EpisodeRow.accessed_at,
                    EpisodeRow.expires_at,
                ).where(EpisodeRow.namespace_id == space.id)
            )
            return [Retention(*row) for row in rows]

    def count(self, namespace: str) -> int:
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            return (
                session.scalar(select(func.count()).where(EpisodeRow.namespace_id == space.id)) or 0
            )

    def edit(
        self,
        namespace: str,
        episode_id: int,
        *,
        text: str | None = None,
        summary: str | object | None = _UNSET,
        importance: float | None = None,
        pinned: bool | None = None,
        embedding: Vectors | None = None,
        reason: str | None = None,
    ) -> Episode:
        """Change an episode; the state before the edit is kept as a version (see ``history``).

        A text change must come with its new ``embedding`` so SQL and the index stay one truth.
        """
        with self.database.session() as session:
            row = self._row(session, namespace, episode_id)
            space = namespace_row(session, namespace)
            if text is not None:
                if not text.strip():
                    raise InvalidRecord("an episode's text cannot be edited to empty")
                if embedding is None and row.embedding is not None:
                    raise InvalidRecord("a text edit needs the new text's embedding")
            if embedding is not None and embedding.shape != (space.embedding_dim,):
                raise InvalidRecord(
                    f"embedding of shape {embedding.shape} does not fit dimension "
                    f"{space.embedding_dim}"
                )
            session.add(_snapshot(row, reason))
            if text is not None:
                row.text = text
            if summary is not _UNSET:
                row.summary = summary  # type: ignore[assignment]
            if importance is not None:
                row.importance = importance
            if pinned is not None:
                row.pinned = pinned
            if embedding is not None:
                row.embedding = embedding.astype("<f4").tobytes()
            row.version += 1
            row.updated_at = utcnow()
            session.flush()
            return to_episode(row)

    def history(self, namespace: str, episode_id: int) -> list[EpisodeVersion]:
        """Every earlier state of the episode, oldest first (the current state is ``get``)."""
        with self.database.session() as session:
            self._row(session, namespace, episode_id)
            rows = session.scalars(
                select(EpisodeVersionRow)
                .where(EpisodeVersionRow.episode_id == episode_id)
                .order_by(EpisodeVersionRow.version)
            )
            return [
                EpisodeVersion(
                    episode_id=r.episode_id,
                    version=r.version,
                    text=r.text,
                    summary=r.summary,
                    importance=r.importance,
                    pinned=r.pinned,
                    reason=r.reason,
                    created_at=r.created_at,
                )
                for r in rows
            ]

    def touch(
        self, namespace: str, episode_ids: Sequence[int], when: datetime | None = None
    ) -> None:
        """Record that episodes were recalled (feeds recency in forgetting)."""
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            session.execute(
                update(EpisodeRow)
                .where(EpisodeRow.namespace_id == space.id, EpisodeRow.id.in_(episode_ids))
                .values(accessed_at=when or utcnow())
            )

    def delete(self, namespace: str, episode_ids: Sequence[int]) -> list[int]:
        """Delete episodes (and their versions); return the ids that existed."""
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            existing = list(
                session.scalars(
                    select(EpisodeRow.id).where(
                        EpisodeRow.namespace_id == space.id, EpisodeRow.id.in_(episode_ids)
                    )
                )
            )
            session.execute(delete(EpisodeRow).where(EpisodeRow.id.in_(existing)))
            return existing

    def vector_state(self, namespace_id: int) -> dict[int, int]:
        """episode id → version for every episode with an embedding (what the index should hold)."""
        with self.database.session() as session:
            rows = session.execute(
                select(EpisodeRow.id, EpisodeRow.version).where(
                    EpisodeRow.namespace_id == namespace_id, EpisodeRow.embedding.is_not(None)
                )
            )
            return {episode_id: version for episode_id, version in rows}

    def embeddings(
        self, namespace_id: int, episode_ids: Sequence[int]
    ) -> tuple[list[int], Vectors]:
        """(ids, (n, dim) float32) of the given episodes' stored embeddings, in id order."""
        with self.database.session() as session:
            rows = session.execute(
                select(EpisodeRow.id, EpisodeRow.embedding)
                .where(
                    EpisodeRow.namespace_id == namespace_id,
                    EpisodeRow.id.in_(episode_ids),
                    EpisodeRow.embedding.is_not(None),
                )
                .order_by(EpisodeRow.id)
            ).all()
        ids = [episode_id for episode_id, _ in rows]
        if not rows:
            return ids, np.zeros((0, 0), dtype=np.float32)
        vectors = np.stack([np.frombuffer(blob or b"", dtype="<f4") for _, blob in rows])
        return ids, vectors.astype(np.float32, copy=False)
