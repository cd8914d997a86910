"""Source documents of a namespace."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.database import Database
from memory.episodes import Vectors, insert_episodes
from memory.errors import InvalidRecord, NotFound
from memory.namespaces import namespace_row
from memory.records import Document, Episode, NewEpisode
from memory.tables import DocumentRow


def sha256(text: str) -> str:
    """Hex SHA-256 of ``text`` in UTF-8: how a document's text is identified."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def to_document(row: DocumentRow) -> Document:
    return Document(
        id=row.id,
        namespace_id=row.namespace_id,
        name=row.name,
        source=row.source,
        char_count=row.char_count,
        sha256=row.sha256,
        created_at=row.created_at,
        metadata=dict(row.meta),
    )


class SqlDocumentStore:
    """Documents in SQL; deleting one deletes its episodes (by cascade)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def add(
        self,
        namespace: str,
        name: str,
        text: str,
        *,
        source: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Document:
        """Record a document (its name, size and checksum; the text itself lives in episodes)."""
        return self.ingest(namespace, name, text, [], None, source=source, metadata=metadata)[0]

    def ingest(
        self,
        namespace: str,
        name: str,
        text: str,
        episodes: Sequence[NewEpisode],
        embeddings: Vectors | None,
        *,
        source: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[Document, list[Episode]]:
        """Record a document and its episodes in one transaction: all of it, or nothing."""
        if not name.strip():
            raise InvalidRecord("a document needs a non-empty name")
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            row = DocumentRow(
                namespace_id=space.id,
                name=name.strip(),
                source=source,
                char_count=len(text),
                sha256=sha256(text),
                meta=dict(metadata or {}),
            )
            session.add(row)
            session.flush()
            stored = insert_episodes(session, space, episodes, embeddings, document_id=row.id)
            return to_document(row), stored

    def extend(
        self,
        namespace: str,
        document_id: int,
        text: str,
        episodes: Sequence[NewEpisode],
        embeddings: Vectors | None,
        metadata: Mapping[str, Any],
    ) -> tuple[Document, list[Episode]]:
        """A growing document (a stream) is now ``text``: store its new episodes and metadata
        in one transaction."""
        with self.database.session() as session:
            row = self._row(session, namespace, document_id)
            space = namespace_row(session, namespace)
            row.char_count = len(text)
            row.sha256 = sha256(text)
            row.meta = dict(metadata)
            stored = insert_episodes(session, space, episodes, embeddings, document_id=row.id)
            session.flush()
            return to_document(row), stored

    def find(
        self, namespace: str, *, name: str | None = None, digest: str | None = None
    ) -> list[Document]:
        """Documents of the namespace with this name and/or SHA-256 of their text, oldest first."""
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            query = select(DocumentRow).where(DocumentRow.namespace_id == space.id)
            if name is not None:
                query = query.where(DocumentRow.name == name)
            if digest is not None:
                query = query.where(DocumentRow.sha256 == digest)
            return [to_document(row) for row in session.scalars(query.order_by(DocumentRow.id))]

    def _row(self, session: Session, namespace: str, document_id: int) -> DocumentRow:
        space = namespace_row(session, namespace)
        row = session.get(DocumentRow, document_id)
        if row is None or row.namespace_id != space.id:
            raise NotFound(f"document {document_id} does not exist in namespace {namespace!r}")
        return row

    def get(self, namespace: str, document_id: int) -> Document:
        with self.database.session() as session:
            return to_document(self._row(session, namespace, document_id))

    def all(self, namespace: str) -> list[Document]:
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            rows = session.scalars(
                select(DocumentRow)
                .where(DocumentRow.namespace_id == space.id)
                .order_by(DocumentRow.id)
            )
            return [to_document(row) for row in rows]

    def delete(self, namespace: str, document_id: int) -> Document:
        with self.database.session() as session:
            row = self._row(session, namespace, document_id)
            document = to_document(row)
            session.delete(row)
            return document
