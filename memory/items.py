"""Key-value items under hierarchical paths inside a namespace (what a LangGraph store holds).

An item is a JSON object at ``(path, key)``; ``path`` is a tuple of labels (no label holds a
period). An item may point at the episode that makes it searchable by meaning; the episode lives
in the same namespace and is managed by the caller (``agents.graphstore``).

:class:`ItemStore` is what the caller needs; :class:`SqlItemStore` keeps the items in SQL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from memory.database import Database
from memory.errors import InvalidRecord
from memory.namespaces import namespace_row
from memory.tables import StoreItemRow, utcnow

PATH_LIMIT = 1000  # characters, the width of store_items.path
KEY_LIMIT = 500  # characters, the width of store_items.key


@dataclass(frozen=True, slots=True)
class StoredItem:
    path: tuple[str, ...]
    key: str
    value: dict[str, Any]
    episode_id: int | None
    created_at: datetime
    updated_at: datetime


class ItemStore(Protocol):
    """Items of one namespace at a time; every method names the namespace (which must exist:
    :class:`NotFound` otherwise). Bad paths, keys and values raise :class:`InvalidRecord`."""

    def get(self, namespace: str, path: Sequence[str], key: str) -> StoredItem | None: ...

    def put(
        self,
        namespace: str,
        path: Sequence[str],
        key: str,
        value: Mapping[str, Any],
        episode_id: int | None,
    ) -> tuple[StoredItem, int | None]:
        """Insert or overwrite an item; also returns the episode the old value pointed at
        (the caller deletes it)."""
        ...

    def delete(self, namespace: str, path: Sequence[str], key: str) -> int | None:
        """Delete an item if it exists; returns the episode it pointed at."""
        ...

    def under(self, namespace: str, prefix: Sequence[str]) -> list[StoredItem]:
        """Every item whose path starts with ``prefix``, oldest first."""
        ...

    def by_episodes(self, namespace: str, episode_ids: Sequence[int]) -> dict[int, StoredItem]:
        """The items that point at these episodes, by episode id."""
        ...

    def paths(self, namespace: str) -> list[tuple[str, ...]]:
        """Every distinct path holding an item."""
        ...


def _to_item(row: StoreItemRow) -> StoredItem:
    return StoredItem(
        path=tuple(row.path.split(".")) if row.path else (),
        key=row.key,
        value=dict(row.value),
        episode_id=row.episode_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def join_path(path: Sequence[str]) -> str:
    """``path`` as stored; raises :class:`InvalidRecord` for labels that are empty, not strings
    or hold a period."""
    bad = [label for label in path if not isinstance(label, str) or not label or "." in label]
    if bad:
        raise InvalidRecord(
            f"namespace path {tuple(path)!r} has labels {bad!r}; labels are non-empty strings "
            "without periods"
        )
    joined = ".".join(path)
    if len(joined) > PATH_LIMIT:
        raise InvalidRecord(
            f"namespace path has {len(joined)} characters; the most is {PATH_LIMIT}"
        )
    return joined


def _item_row(session: Session, namespace_id: int, path: str, key: str) -> StoreItemRow | None:
    return session.scalar(
        select(StoreItemRow).where(
            StoreItemRow.namespace_id == namespace_id,
            StoreItemRow.path == path,
            StoreItemRow.key == key,
        )
    )


def _like(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + ".%"


class SqlItemStore:
    """:class:`ItemStore` in SQL (table ``store_items``); every method names the namespace,
    none crosses two."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def get(self, namespace: str, path: Sequence[str], key: str) -> StoredItem | None:
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            row = _item_row(session, space.id, join_path(path), key)
            return None if row is None else _to_item(row)

    def put(
        self,
        namespace: str,
        path: Sequence[str],
        key: str,
        value: Mapping[str, Any],
        episode_id: int | None,
    ) -> tuple[StoredItem, int | None]:
        """Insert or overwrite an item; also returns the episode the old value pointed at
        (the caller deletes it)."""
        if not isinstance(key, str) or not key or len(key) > KEY_LIMIT:
            raise InvalidRecord(f"item key {key!r} must be a string of 1-{KEY_LIMIT} characters")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise InvalidRecord(f"the value of item {key!r} is not JSON: {err}") from err
        joined = join_path(path)
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            row = _item_row(session, space.id, joined, key)
            previous = None
            if row is None:
                row = StoreItemRow(
                    namespace_id=space.id,
                    path=joined,
                    key=key,
                    value=dict(value),
                    episode_id=episode_id,
                )
                session.add(row)
            else:
                previous = row.episode_id
                row.value, row.episode_id, row.updated_at = dict(value), episode_id, utcnow()
            session.flush()
            return _to_item(row), previous

    def delete(self, namespace: str, path: Sequence[str], key: str) -> int | None:
        """Delete an item if it exists; returns the episode it pointed at."""
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            row = _item_row(session, space.id, join_path(path), key)
            if row is None:
                return None
            episode = row.episode_id
            session.execute(delete(StoreItemRow).where(StoreItemRow.id == row.id))
            return episode

    def under(self, namespace: str, prefix: Sequence[str]) -> list[StoredItem]:
        """Every item whose path starts with ``prefix``, oldest first."""
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            query = select(StoreItemRow).where(StoreItemRow.namespace_id == space.id)
            if prefix:
                joined = join_path(prefix)
                query = query.where(
                    or_(StoreItemRow.path == joined, StoreItemRow.path.like(_like(joined), "\\"))
                )
            return [_to_item(row) for row in session.scalars(query.order_by(StoreItemRow.id))]

    def by_episodes(self, namespace: str, episode_ids: Sequence[int]) -> dict[int, StoredItem]:
        """The items that point at these episodes, by episode id."""
        if not episode_ids:
            return {}
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            rows = session.scalars(
                select(StoreItemRow).where(
                    StoreItemRow.namespace_id == space.id,
                    StoreItemRow.episode_id.in_(list(episode_ids)),
                )
            )
            return {row.episode_id: _to_item(row) for row in rows if row.episode_id is not None}

    def paths(self, namespace: str) -> list[tuple[str, ...]]:
        """Every distinct path holding an item."""
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            rows = session.scalars(
                select(StoreItemRow.path).where(StoreItemRow.namespace_id == space.id).distinct()
            )
            return [tuple(p.split(".")) if p else () for p in rows]
