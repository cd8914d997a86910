"""Story trees in SQL: RecurrentGPT stories, every writer step a node, and the story bible.

A story owns one namespace (its long-term episodic memory). Each step of the writer is a node whose
parent is the step before it; branching is a second child, undoing is moving the head back. Nodes
are never edited except for the writer's memory fields, and go only with their story.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from memory.database import Database
from memory.errors import InvalidRecord, NotFound
from memory.namespaces import namespace_row
from memory.records import BibleEntry, BibleKind, NewStoryNode, Story, StoryMode, StoryNode
from memory.tables import (
    BibleEntryRow,
    EpisodeRow,
    NamespaceRow,
    StoryNodeRow,
    StoryRow,
    utcnow,
)

TITLE_LIMIT = 500  # characters, the width of stories.title
GENRE_LIMIT = 200  # characters, the width of stories.genre
NAME_LIMIT = 200  # characters, the width of bible_entries.name


def to_story(row: StoryRow, namespace: str) -> Story:
    return Story(
        id=row.id,
        namespace_id=row.namespace_id,
        namespace=namespace,
        title=row.title,
        genre=row.genre,
        premise=row.premise,
        outline=row.outline,
        mode=StoryMode(row.mode),
        head_node_id=row.head_node_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        metadata=dict(row.meta),
    )


def to_node(row: StoryNodeRow) -> StoryNode:
    return StoryNode(
        id=row.id,
        story_id=row.story_id,
        parent_id=row.parent_id,
        depth=row.depth,
        instruction=row.instruction,
        paragraph=row.paragraph,
        short_term_memory=row.short_term_memory,
        memory_reason=row.memory_reason,
        plans=tuple(row.plans),
        episode_ids=tuple(row.episode_ids),
        prompt=dict(row.prompt),
        metadata=dict(row.meta),
        created_at=row.created_at,
    )


def to_entry(row: BibleEntryRow) -> BibleEntry:
    return BibleEntry(
        id=row.id,
        story_id=row.story_id,
        kind=BibleKind(row.kind),
        name=row.name,
        aliases=tuple(row.aliases),
        text=row.text,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _string(value: object, what: str, *, limit: int | None = None, required: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidRecord(f"{what} is {type(value).__name__} {value!r}; give a string")
    if required and not value.strip():
        raise InvalidRecord(f"{what} is empty; give it some text")
    if limit is not None and len(value) > limit:
        raise InvalidRecord(f"{what} has {len(value)} characters; the most is {limit}")
    return value


def _strings(values: object, what: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise InvalidRecord(f"{what} is {values!r}; give a list of strings")
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise InvalidRecord(f"{what} holds non-strings {bad!r}; give a list of strings")
    return list(values)


def _json(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidRecord(f"{what} is {type(value).__name__} {value!r}; give a mapping")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidRecord(
            f"{what} is not JSON ({err}); use strings, numbers, booleans, None, lists and dicts"
        ) from err
    return dict(value)


def _mode(mode: str) -> StoryMode:
    try:
        return StoryMode(mode)
    except ValueError as err:
        valid = ", ".join(repr(m.value) for m in StoryMode)
        raise InvalidRecord(f"story mode {mode!r} is not one of {valid}") from err


def _kind(kind: str) -> BibleKind:
    try:
        return BibleKind(kind)
    except ValueError as err:
        valid = ", ".join(repr(k.value) for k in BibleKind)
        raise InvalidRecord(f"bible entry kind {kind!r} is not one of {valid}") from err


def _episode_ids(session: Session, namespace_id: int, values: object) -> list[int]:
    """The ids as a list, if each names an episode in the story's namespace."""
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise InvalidRecord(f"episode_ids is {values!r}; give a list of episode ids")
    bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool)]
    if bad:
        raise InvalidRecord(f"episode_ids holds non-integers {bad!r}; give episode ids")
    ids = list(values)
    if ids:
        found = set(
            session.scalars(
                select(EpisodeRow.id).where(
                    EpisodeRow.namespace_id == namespace_id, EpisodeRow.id.in_(set(ids))
                )
            )
        )
        if missing := sorted(set(ids) - found):
            raise NotFound(
                f"episodes {missing} do not exist in the story's namespace; store the "
                "paragraph's episodes in that namespace first"
            )
    return ids


@dataclass(frozen=True, slots=True)
class Timeline:
    """What a step may recall along one branch."""

    episode_ids: list[int]
    """Long-term memory episodes of the nodes from the root down, in story order."""
    unremembered: list[int]
    """Nodes on the branch whose paragraph is not in long-term memory yet (ingest pending or
    interrupted)."""


class StoryStore(Protocol):
    """What the writer needs of a story tree: stories, their nodes and their bible."""

    def create(
        self,
        namespace: str,
        *,
        title: str,
        genre: str,
        premise: str,
        outline: str = "",
        mode: StoryMode | str = StoryMode.NOVEL,
        metadata: Mapping[str, Any] | None = None,
    ) -> Story: ...

    def get(self, story_id: int) -> Story: ...

    def node(self, story_id: int, node_id: int) -> StoryNode: ...

    def path(self, story_id: int, node_id: int) -> list[StoryNode]: ...

    def timeline(self, story_id: int, node_id: int) -> list[int]: ...

    def recall_timeline(self, story_id: int, node_id: int) -> Timeline: ...

    def set_head(self, story_id: int, node_id: int) -> Story: ...

    def add_node(
        self, story_id: int, parent_id: int | None, node: NewStoryNode, *, make_head: bool = True
    ) -> StoryNode: ...

    def update_node(
        self,
        story_id: int,
        node_id: int,
        *,
        paragraph: str | None = None,
        short_term_memory: str | None = None,
        plans: Sequence[str] | None = None,
        episode_ids: Sequence[int] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> StoryNode: ...

    def upsert_entry(
        self,
        story_id: int,
        *,
        kind: BibleKind | str,
        name: str,
        text: str,
        aliases: Sequence[str] = (),
    ) -> BibleEntry: ...

    def entries(self, story_id: int) -> list[BibleEntry]: ...


class ThreadedStoryStore:
    """A :class:`StoryStore` for async callers: each call runs in a worker thread
    (``asyncio.to_thread``), so an event loop serving other requests never waits on SQL.

    The one place where an async caller's story access crosses to a thread (issue 18); the
    methods, arguments, results and errors are the wrapped store's.
    """

    def __init__(self, stories: StoryStore) -> None:
        self.stories = stories
        """The blocking store every call runs on."""

    async def create(
        self,
        namespace: str,
        *,
        title: str,
        genre: str,
        premise: str,
        outline: str = "",
        mode: StoryMode | str = StoryMode.NOVEL,
        metadata: Mapping[str, Any] | None = None,
    ) -> Story:
        return await asyncio.to_thread(
            self.stories.create, namespace, title=title, genre=genre, premise=premise,
            outline=outline, mode=mode, metadata=metadata,
        )  # fmt: skip

    async def get(self, story_id: int) -> Story:
        return await asyncio.to_thread(self.stories.get, story_id)

    async def node(self, story_id: int, node_id: int) -> StoryNode:
        return await asyncio.to_thread(self.stories.node, story_id, node_id)

    async def path(self, story_id: int, node_id: int) -> list[StoryNode]:
        return await asyncio.to_thread(self.stories.path, story_id, node_id)

    async def timeline(self, story_id: int, node_id: int) -> list[int]:
        return await asyncio.to_thread(self.stories.timeline, story_id, node_id)

    async def recall_timeline(self, story_id: int, node_id: int) -> Timeline:
        return await asyncio.to_thread(self.stories.recall_timeline, story_id, node_id)

    async def set_head(self, story_id: int, node_id: int) -> Story:
        return await asyncio.to_thread(self.stories.set_head, story_id, node_id)

    async def add_node(
        self, story_id: int, parent_id: int | None, node: NewStoryNode, *, make_head: bool = True
    ) -> StoryNode:
        return await asyncio.to_thread(
            self.stories.add_node, story_id, parent_id, node, make_head=make_head
        )

    async def update_node(
        self,
        story_id: int,
        node_id: int,
        *,
        paragraph: str | None = None,
        short_term_memory: str | None = None,
        plans: Sequence[str] | None = None,
        episode_ids: Sequence[int] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> StoryNode:
        return await asyncio.to_thread(
            self.stories.update_node, story_id, node_id, paragraph=paragraph,
            short_term_memory=short_term_memory, plans=plans, episode_ids=episode_ids,
            metadata=metadata,
        )  # fmt: skip

    async def upsert_entry(
        self,
        story_id: int,
        *,
        kind: BibleKind | str,
        name: str,
        text: str,
        aliases: Sequence[str] = (),
    ) -> BibleEntry:
        return await asyncio.to_thread(
            self.stories.upsert_entry, story_id, kind=kind, name=name, text=text, aliases=aliases
        )

    async def entries(self, story_id: int) -> list[BibleEntry]:
        return await asyncio.to_thread(self.stories.entries, story_id)


class SqlStoryStore:
    """Stories, their trees of writer steps, and their bibles, in the SQL database.

    Every method takes a story id and raises :class:`NotFound` when the story, or a node or
    entry inside *that* story, does not exist; nothing reaches into another story.
    """

    def __init__(self, database: Database) -> None:
        self.database = database

    # -- stories ----------------------------------------------------------------------------

    def create(
        self,
        namespace: str,
        *,
        title: str,
        genre: str,
        premise: str,
        outline: str = "",
        mode: StoryMode | str = StoryMode.NOVEL,
        metadata: Mapping[str, Any] | None = None,
    ) -> Story:
        """A new story with no nodes, owning the existing ``namespace`` (one story each)."""
        values = {
            "title": _string(title, "the story's title", limit=TITLE_LIMIT, required=True),
            "genre": _string(genre, "the story's genre", limit=GENRE_LIMIT),
            "premise": _string(premise, "the story's premise"),
            "outline": _string(outline, "the story's outline"),
            "mode": _mode(mode).value,
            "meta": _json(metadata or {}, "the story's metadata"),
        }
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            taken = session.scalar(select(StoryRow).where(StoryRow.namespace_id == space.id))
            if taken is not None:
                raise InvalidRecord(
                    f"namespace {namespace!r} already holds story {taken.id} ({taken.title!r}); "
                    "give each story its own namespace"
                )
            row = StoryRow(namespace_id=space.id, **values)
            session.add(row)
            session.flush()
            return to_story(row, space.name)

    def get(self, story_id: int) -> Story:
        with self.database.session() as session:
            return to_story(*self._story(session, story_id))

    def all(self) -> list[Story]:
        """Every story, newest first."""
        with self.database.session() as session:
            rows = session.execute(
                select(StoryRow, NamespaceRow.name)
                .join(NamespaceRow, NamespaceRow.id == StoryRow.namespace_id)
                .order_by(StoryRow.created_at.desc(), StoryRow.id.desc())
            )
            return [to_story(row, name) for row, name in rows]

    def rename(self, story_id: int, title: str) -> Story:
        title = _string(title, "the story's title", limit=TITLE_LIMIT, required=True)
        with self.database.session() as session:
            row, namespace = self._story(session, story_id)
            row.title = title
            row.updated_at = utcnow()
            return to_story(row, namespace)

    def update(
        self,
        story_id: int,
        *,
        outline: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Story:
        """Replace the outline and/or the metadata (the whole mapping); None keeps a field."""
        new_outline = None if outline is None else _string(outline, "the story's outline")
        new_meta = None if metadata is None else _json(metadata, "the story's metadata")
        with self.database.session() as session:
            row, namespace = self._story(session, story_id)
            if new_outline is not None:
                row.outline = new_outline
            if new_meta is not None:
                row.meta = new_meta
            row.updated_at = utcnow()
            return to_story(row, namespace)

    def delete(self, story_id: int) -> str:
        """Delete a story with its nodes and bible; return its namespace's name.

        The namespace (and its episodes and vectors) stays: the caller drops it, e.g. with
        ``MemoryStore.delete_namespace``.
        """
        with self.database.session() as session:
            row, namespace = self._story(session, story_id)
            session.delete(row)
            return namespace

    # -- nodes ------------------------------------------------------------------------------

    def add_node(
        self,
        story_id: int,
        parent_id: int | None,
        node: NewStoryNode,
        *,
        make_head: bool = True,
    ) -> StoryNode:
        """Store a writer step under ``parent_id`` (None: the story's one root).

        With ``make_head`` the story's head moves to the new node in the same transaction.
        """
        values = {
            "instruction": _string(node.instruction, "the node's instruction"),
            "paragraph": _string(node.paragraph, "the node's paragraph"),
            "short_term_memory": _string(node.short_term_memory, "the node's short_term_memory"),
            "memory_reason": _string(node.memory_reason, "the node's memory_reason"),
            "plans": _strings(node.plans, "the node's plans"),
            "prompt": _json(node.prompt, "the node's prompt"),
            "meta": _json(node.metadata, "the node's metadata"),
        }
        with self.database.session() as session:
            story, _ = self._story(session, story_id)
            if parent_id is None:
                root = session.scalar(
                    select(StoryNodeRow.id).where(
                        StoryNodeRow.story_id == story_id, StoryNodeRow.parent_id.is_(None)
                    )
                )
                if root is not None:
                    raise InvalidRecord(
                        f"story {story_id} already has its root node {root}; pass a parent_id "
                        "to continue or branch from a node"
                    )
                depth = 0
            else:
                depth = self._node(session, story_id, parent_id, "parent node").depth + 1
            episode_ids = _episode_ids(session, story.namespace_id, node.episode_ids)
            row = StoryNodeRow(
                story_id=story_id,
                parent_id=parent_id,
                depth=depth,
                episode_ids=episode_ids,
                **values,
            )
            session.add(row)
            session.flush()
            if make_head:
                story.head_node_id = row.id
            story.updated_at = utcnow()
            return to_node(row)

    def node(self, story_id: int, node_id: int) -> StoryNode:
        with self.database.session() as session:
            return to_node(self._node(session, story_id, node_id))

    def children(self, story_id: int, node_id: int) -> list[StoryNode]:
        """The nodes continuing from ``node_id`` (its branches), oldest first."""
        with self.database.session() as session:
            self._node(session, story_id, node_id)
            rows = session.scalars(
                select(StoryNodeRow)
                .where(StoryNodeRow.story_id == story_id, StoryNodeRow.parent_id == node_id)
                .order_by(StoryNodeRow.id)
            )
            return [to_node(row) for row in rows]

    def timeline(self, story_id: int, node_id: int) -> list[int]:
        """The long-term memory episode ids of the nodes from the root down to ``node_id``, in
        order: what a step may recall."""
        return self.recall_timeline(story_id, node_id).episode_ids

    def recall_timeline(self, story_id: int, node_id: int) -> Timeline:
        """The episode ids from the root down to ``node_id`` and the nodes on that path whose
        paragraph has no episodes yet. One query, reading no paragraphs or prompts."""
        up = self._ancestors(story_id, node_id)
        with self.database.session() as session:
            rows = list(
                session.execute(
                    select(
                        StoryNodeRow.id,
                        StoryNodeRow.episode_ids,
                        func.length(StoryNodeRow.paragraph) > 0,
                    )
                    .join(up, StoryNodeRow.id == up.c.id)
                    .order_by(StoryNodeRow.depth)
                )
            )
            if not rows:
                self._story(session, story_id)
                self._node(session, story_id, node_id)
        return Timeline(
            episode_ids=[episode_id for _, ids, _ in rows for episode_id in ids],
            unremembered=[node for node, ids, written in rows if written and not ids],
        )

    @staticmethod
    def _ancestors(story_id: int, node_id: int) -> Any:
        """A recursive CTE of (id, parent_id) from ``node_id`` up to the root."""
        up = (
            select(StoryNodeRow.id, StoryNodeRow.parent_id)
            .where(StoryNodeRow.story_id == story_id, StoryNodeRow.id == node_id)
            .cte("ancestors", recursive=True)
        )
        return up.union_all(
            select(StoryNodeRow.id, StoryNodeRow.parent_id)
            .join(up, StoryNodeRow.id == up.c.parent_id)
            .where(StoryNodeRow.story_id == story_id)
        )

    def path(self, story_id: int, node_id: int) -> list[StoryNode]:
        """The nodes from the root down to ``node_id``, in order, in one query."""
        up = self._ancestors(story_id, node_id)
        with self.database.session() as session:
            rows = list(
                session.scalars(
                    select(StoryNodeRow)
                    .join(up, StoryNodeRow.id == up.c.id)
                    .order_by(StoryNodeRow.depth)
                )
            )
            if not rows:  # find out which of the two is missing and say so
                self._story(session, story_id)
                self._node(session, story_id, node_id)
            assert rows[0].parent_id is None and rows[-1].id == node_id, "broken story tree"
            return [to_node(row) for row in rows]

    def paragraphs(
        self, story_id: int, node_id: int, start: int = 0, stop: int | None = None
    ) -> list[str]:
        """Paragraphs ``[start:stop]`` of the path from the root down to ``node_id``, in one
        query that reads only those (a page of a long book, without every step's prompt)."""
        return [paragraph for _, paragraph in self.steps(story_id, node_id, start, stop)]

    def steps(
        self, story_id: int, node_id: int, start: int = 0, stop: int | None = None
    ) -> list[tuple[str, str]]:
        """(instruction, paragraph) of steps ``[start:stop]`` of the path down to ``node_id``:
        an interactive story's transcript (the reader's actions and what followed)."""
        if start < 0 or (stop is not None and stop < start):
            raise InvalidRecord(f"paragraphs [{start}:{stop}] is not a range from 0 forwards")
        up = self._ancestors(story_id, node_id)
        query = (
            select(StoryNodeRow.instruction, StoryNodeRow.paragraph)
            .join(up, StoryNodeRow.id == up.c.id)
            .order_by(StoryNodeRow.depth)
            .offset(start)
        )
        if stop is not None:
            query = query.limit(stop - start)
        with self.database.session() as session:
            self._story(session, story_id)  # NotFound naming the story, then the node
            self._node(session, story_id, node_id)
            return [(instruction, paragraph) for instruction, paragraph in session.execute(query)]

    def set_head(self, story_id: int, node_id: int) -> Story:
        """Move the writer to ``node_id`` (undo, or switch branch); nothing is deleted."""
        with self.database.session() as session:
            story, namespace = self._story(session, story_id)
            self._node(session, story_id, node_id)
            story.head_node_id = node_id
            story.updated_at = utcnow()
            return to_story(story, namespace)

    def update_node(
        self,
        story_id: int,
        node_id: int,
        *,
        paragraph: str | None = None,
        short_term_memory: str | None = None,
        plans: Sequence[str] | None = None,
        episode_ids: Sequence[int] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> StoryNode:
        """Edit a node's memory fields or its paragraph (None keeps a field; ``metadata``
        replaces the mapping). The writer keeps earlier paragraphs in the metadata."""
        values: dict[str, Any] = {}
        if paragraph is not None:
            values["paragraph"] = _string(paragraph, "the paragraph", required=True)
        if short_term_memory is not None:
            values["short_term_memory"] = _string(short_term_memory, "short_term_memory")
        if plans is not None:
            values["plans"] = _strings(plans, "plans")
        if metadata is not None:
            values["meta"] = _json(metadata, "the node's metadata")
        with self.database.session() as session:
            story, _ = self._story(session, story_id)
            row = self._node(session, story_id, node_id)
            if episode_ids is not None:
                values["episode_ids"] = _episode_ids(session, story.namespace_id, episode_ids)
            for name, value in values.items():
                setattr(row, name, value)
            story.updated_at = utcnow()
            session.flush()
            return to_node(row)

    def tree(self, story_id: int) -> list[tuple[int, int | None, int]]:
        """(id, parent id, depth) of every node, oldest first: enough to draw the tree."""
        with self.database.session() as session:
            self._story(session, story_id)
            rows = session.execute(
                select(StoryNodeRow.id, StoryNodeRow.parent_id, StoryNodeRow.depth)
                .where(StoryNodeRow.story_id == story_id)
                .order_by(StoryNodeRow.id)
            )
            return [(id_, parent, depth) for id_, parent, depth in rows]

    def previews(self, story_id: int, chars: int = 80) -> list[tuple[int, int | None, str]]:
        """(id, parent id, the paragraph's first ``chars`` characters) of every node, oldest
        first: the branch tree with a preview of each node, without reading whole paragraphs."""
        with self.database.session() as session:
            self._story(session, story_id)
            rows = session.execute(
                select(
                    StoryNodeRow.id,
                    StoryNodeRow.parent_id,
                    func.substr(StoryNodeRow.paragraph, 1, chars),
                )
                .where(StoryNodeRow.story_id == story_id)
                .order_by(StoryNodeRow.id)
            )
            return [(id_, parent, preview) for id_, parent, preview in rows]

    # -- bible ------------------------------------------------------------------------------

    def upsert_entry(
        self,
        story_id: int,
        *,
        kind: BibleKind | str,
        name: str,
        text: str,
        aliases: Sequence[str] = (),
    ) -> BibleEntry:
        """The entry called ``name`` (spaces around it ignored), created or replaced in place."""
        entry_kind = _kind(kind).value
        name = _string(name, "the entry's name", limit=NAME_LIMIT, required=True).strip()
        text = _string(text, "the entry's text", required=True)
        names = [a.strip() for a in _strings(aliases, "the entry's aliases")]
        if "" in names:
            raise InvalidRecord(f"the entry's aliases {list(aliases)!r} hold an empty one")
        with self.database.session() as session:
            self._story(session, story_id)
            row = session.scalar(
                select(BibleEntryRow).where(
                    BibleEntryRow.story_id == story_id, BibleEntryRow.name == name
                )
            )
            if row is None:
                row = BibleEntryRow(story_id=story_id, name=name)
                session.add(row)
            else:
                row.updated_at = utcnow()
            row.kind, row.text, row.aliases = entry_kind, text, names
            session.flush()
            return to_entry(row)

    def entries(self, story_id: int) -> list[BibleEntry]:
        """The story's bible, in the order the entries were first written."""
        with self.database.session() as session:
            self._story(session, story_id)
            rows = session.scalars(
                select(BibleEntryRow)
                .where(BibleEntryRow.story_id == story_id)
                .order_by(BibleEntryRow.id)
            )
            return [to_entry(row) for row in rows]

    def delete_entry(self, story_id: int, entry_id: int) -> None:
        with self.database.session() as session:
            self._story(session, story_id)
            row = session.scalar(
                select(BibleEntryRow).where(
                    BibleEntryRow.story_id == story_id, BibleEntryRow.id == entry_id
                )
            )
            if row is None:
                raise NotFound(
                    f"bible entry {entry_id} is not in story {story_id}; see entries({story_id})"
                )
            session.delete(row)

    # -- lookups ----------------------------------------------------------------------------

    @staticmethod
    def _story(session: Session, story_id: int) -> tuple[StoryRow, str]:
        found = session.execute(
            select(StoryRow, NamespaceRow.name)
            .join(NamespaceRow, NamespaceRow.id == StoryRow.namespace_id)
            .where(StoryRow.id == story_id)
        ).first()
        if found is None:
            raise NotFound(f"story {story_id} does not exist; see all() for the stories there are")
        row, namespace = found
        return row, namespace

    @staticmethod
    def _node(session: Session, story_id: int, node_id: int, what: str = "node") -> StoryNodeRow:
        row = session.scalar(
            select(StoryNodeRow).where(
                StoryNodeRow.story_id == story_id, StoryNodeRow.id == node_id
            )
        )
        if row is None:
            raise NotFound(
                f"{what} {node_id} is not in story {story_id}; pick one of its nodes "
                f"(see tree({story_id}))"
            )
        return row
