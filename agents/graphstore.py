"""``MnemeStore``: a LangGraph ``BaseStore`` over Mneme's stores.

LangGraph namespaces (tuples of labels) and keys map to items of an :class:`ItemStore`
(:mod:`memory.items`; ``app`` passes the SQL one) inside one Mneme namespace; an indexed item's
text is also an episode in that namespace, embedded by Mneme's embedder and searched through its
vector index, so ``search(prefix, query=…)`` ranks by meaning. Values are JSON objects; filters
follow LangGraph's (equality, nested objects, ``$eq`` ``$ne`` ``$gt`` ``$gte`` ``$lt`` ``$lte``).
TTLs are not supported (``supports_ttl = False``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from typing import Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    get_text_at_path,
    tokenize_path,
)

from memory import ItemStore, MemoryStore, NewEpisode, StoredItem

SEARCH_OVERFETCH = 4
"""Vector hits fetched per result wanted, since a prefix or a filter drops some."""


def _item(stored: StoredItem) -> Item:
    return Item(
        value=stored.value,
        key=stored.key,
        namespace=stored.path,
        created_at=stored.created_at,
        updated_at=stored.updated_at,
    )


def _search_item(stored: StoredItem, score: float | None) -> SearchItem:
    return SearchItem(
        stored.path, stored.key, stored.value, stored.created_at, stored.updated_at, score
    )


def _compare(value: Any, wanted: Any) -> bool:
    """LangGraph's filter semantics (those of its in-memory and PostgreSQL stores)."""
    if isinstance(wanted, dict):
        if any(k.startswith("$") for k in wanted):
            return all(_operator(value, op, operand) for op, operand in wanted.items())
        return isinstance(value, dict) and all(_compare(value.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list | tuple):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(wanted)
            and all(_compare(a, b) for a, b in zip(value, wanted, strict=True))
        )
    return bool(value == wanted)


def _operator(value: Any, operator: str, operand: Any) -> bool:
    if operator == "$eq":
        return bool(value == operand)
    if operator == "$ne":
        return bool(value != operand)
    comparisons = {
        "$gt": float.__gt__,
        "$gte": float.__ge__,
        "$lt": float.__lt__,
        "$lte": float.__le__,
    }
    if operator not in comparisons:
        raise ValueError(
            f"filter operator {operator!r} is not supported; use $eq, $ne, $gt, $gte, $lt, $lte"
        )
    try:
        return bool(comparisons[operator](float(value), float(operand)))
    except (TypeError, ValueError):
        return False


def _matches(condition: MatchCondition, path: tuple[str, ...]) -> bool:
    wanted = tuple(condition.path)
    if len(path) < len(wanted):
        return False
    pairs = (
        zip(path, wanted, strict=False)
        if condition.match_type == "prefix"
        else zip(reversed(path), reversed(wanted), strict=False)
    )
    return all(w == "*" or p == w for p, w in pairs)


class MnemeStore(BaseStore):
    """LangGraph long-term memory in Mneme's stores, under Mneme namespace ``namespace``
    (created on first use): values in ``items``, their indexed text as episodes of ``store``.
    ``index_fields`` are the JSON paths embedded for search by default (``["$"]``: the whole
    value); ``put(..., index=[...])`` overrides them per item and ``index=False`` stores an item
    that only ``get`` and filters find. ``app.agent.Agents.graph_store`` wires one."""

    supports_ttl = False

    def __init__(
        self,
        store: MemoryStore,
        namespace: str,
        *,
        items: ItemStore,
        index_fields: Sequence[str] = ("$",),
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.items = items
        self.index_fields = list(index_fields)
        self._ready = False

    def _space(self) -> None:
        if not self._ready:
            self.store.namespace(self.namespace)
            self._ready = True

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        self._space()
        return [self._apply(op) for op in ops]

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.to_thread(self.batch, list(ops))

    def _apply(self, op: Op) -> Result:
        if isinstance(op, GetOp):
            stored = self.items.get(self.namespace, op.namespace, op.key)
            return None if stored is None else _item(stored)
        if isinstance(op, PutOp):
            self._put(op)
            return None
        if isinstance(op, SearchOp):
            return self._search(op)
        if isinstance(op, ListNamespacesOp):
            return self._list(op)
        raise ValueError(f"unknown store operation {type(op).__name__}")

    def _text(self, value: dict[str, Any], fields: Sequence[str]) -> str:
        texts: list[str] = []
        for field in fields:
            if field == "$":
                texts.append(json.dumps(value, ensure_ascii=False, sort_keys=True))
            else:
                texts += get_text_at_path(value, tokenize_path(field))
        return "\n".join(t for t in texts if t.strip())

    def _put(self, op: PutOp) -> None:
        if op.value is None:
            old = self.items.delete(self.namespace, op.namespace, op.key)
            if old is not None:
                self.store.delete(self.namespace, [old])
            return
        value = dict(op.value)
        episode_id = None
        if op.index is not False:
            text = self._text(value, self.index_fields if op.index is None else op.index)
            if text:
                meta = {"store_path": ".".join(op.namespace), "store_key": op.key}
                (episode,) = self.store.add(self.namespace, [NewEpisode(text, metadata=meta)])
                episode_id = episode.id
        _, old = self.items.put(self.namespace, op.namespace, op.key, value, episode_id)
        if old is not None:
            self.store.delete(self.namespace, [old])

    def _search(self, op: SearchOp) -> list[SearchItem]:
        def keep(stored: StoredItem) -> bool:
            if stored.path[: len(op.namespace_prefix)] != tuple(op.namespace_prefix):
                return False
            return all(_compare(stored.value.get(k), v) for k, v in (op.filter or {}).items())

        if not op.query:
            found = [s for s in self.items.under(self.namespace, op.namespace_prefix) if keep(s)]
            return [_search_item(s, None) for s in found[op.offset : op.offset + op.limit]]
        wanted = op.offset + op.limit
        hits = self.store.search(self.namespace, op.query, k=max(wanted * SEARCH_OVERFETCH, 16))
        items = self.items.by_episodes(self.namespace, [h.episode.id for h in hits])
        ranked: list[tuple[StoredItem, float | None]] = [
            (items[h.episode.id], h.score)
            for h in hits
            if h.episode.id in items and keep(items[h.episode.id])
        ]
        if len(ranked) < wanted:  # items with no embedding come after, unscored
            seen = {(s.path, s.key) for s, _ in ranked}
            rest = [
                s
                for s in self.items.under(self.namespace, op.namespace_prefix)
                if keep(s) and (s.path, s.key) not in seen
            ]
            ranked += [(s, None) for s in rest[: wanted - len(ranked)]]
        return [_search_item(s, score) for s, score in ranked[op.offset : wanted]]

    def _list(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        paths = self.items.paths(self.namespace)
        conditions = op.match_conditions or ()
        paths = [p for p in paths if all(_matches(c, p) for c in conditions)]
        if op.max_depth is not None:
            paths = [p[: op.max_depth] for p in paths]
        return sorted(set(paths))[op.offset : op.offset + op.limit]
