"""Namespaces: the isolation unit (tenant, story, agent) every record belongs to."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from memory.database import Database
from memory.errors import InvalidRecord, NotFound, StoreError
from memory.records import Namespace
from memory.tables import NamespaceRow

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid namespace name, else raise :class:`InvalidRecord`."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRecord(
            f"namespace {name!r} is not valid: use 1-200 characters from letters, digits and "
            "._:/@- starting with a letter or digit"
        )
    return name


def to_namespace(row: NamespaceRow) -> Namespace:
    return Namespace(
        id=row.id,
        name=row.name,
        embedding_model=row.embedding_model,
        embedding_dim=row.embedding_dim,
        created_at=row.created_at,
    )


def namespace_row(session: Session, name: str) -> NamespaceRow:
    """The row of an existing namespace, or :class:`NotFound`."""
    row = session.scalar(select(NamespaceRow).where(NamespaceRow.name == check_name(name)))
    if row is None:
        raise NotFound(f"namespace {name!r} does not exist")
    return row


class SqlNamespaceStore:
    """Create, find, list and delete namespaces (deleting cascades to everything inside)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def ensure(self, name: str, *, embedding_model: str, embedding_dim: int) -> Namespace:
        """The namespace called ``name``, created on first use with the given embedding model.

        Raises :class:`InvalidRecord` if it exists with another embedding model: its vectors
        would not be comparable with new ones.
        """
        check_name(name)
        try:
            return self._ensure(name, embedding_model, embedding_dim)
        except StoreError as err:
            if not isinstance(err.__cause__, IntegrityError):
                raise
            # Another writer created it between our read and our insert: use theirs.
            return self._ensure(name, embedding_model, embedding_dim)

    def _ensure(self, name: str, embedding_model: str, embedding_dim: int) -> Namespace:
        with self.database.session() as session:
            row = session.scalar(select(NamespaceRow).where(NamespaceRow.name == name))
            if row is None:
                row = NamespaceRow(
                    name=name, embedding_model=embedding_model, embedding_dim=embedding_dim
                )
                session.add(row)
                session.flush()
            elif (row.embedding_model, row.embedding_dim) != (embedding_model, embedding_dim):
                raise InvalidRecord(
                    f"namespace {name!r} was embedded with {row.embedding_model!r} "
                    f"(dimension {row.embedding_dim}), not {embedding_model!r} "
                    f"(dimension {embedding_dim}); set MNEME_EMBEDDING_MODEL back to "
                    f"{row.embedding_model!r} or use another namespace"
                )
            return to_namespace(row)

    def get(self, name: str) -> Namespace:
        with self.database.session() as session:
            return to_namespace(namespace_row(session, name))

    def all(self) -> list[Namespace]:
        with self.database.session() as session:
            rows = session.scalars(select(NamespaceRow).order_by(NamespaceRow.id))
            return [to_namespace(row) for row in rows]

    def delete(self, name: str) -> Namespace:
        """Delete a namespace and (by cascade) its documents, episodes, versions and jobs."""
        with self.database.session() as session:
            row = namespace_row(session, name)
            namespace = to_namespace(row)
            session.delete(row)
            return namespace
