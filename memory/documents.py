"""Source documents of a namespace."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.database import Database
from memory.errors import InvalidRecord, NotFound
from memory.namespaces import namespace_row
from memory.records import Document
from memory.tables import DocumentRow


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
        if not name.strip():
            raise InvalidRecord("a document needs a non-empty name")
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            row = DocumentRow(
                namespace_id=space.id,
                name=name.strip(),
                source=source,
                char_count=len(text),
                sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                meta=dict(metadata or {}),
            )
            session.add(row)
            session.flush()
            return to_document(row)

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
