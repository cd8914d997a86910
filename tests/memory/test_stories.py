"""Story trees in SQL: stories, branching nodes, paths, heads, bibles and cascading deletes."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, func, insert, select

from memory import (
    BibleKind,
    Database,
    InvalidRecord,
    NewEpisode,
    NewStoryNode,
    NotFound,
    SqlStoryStore,
    StoryMode,
    StoryNode,
)
from memory.episodes import SqlEpisodeStore
from memory.lexical import is_lexical_name
from memory.namespaces import SqlNamespaceStore
from memory.stories import ThreadedStoryStore
from memory.tables import Base, BibleEntryRow, StoryNodeRow, StoryRow


@pytest.fixture
def stories(database: Database) -> SqlStoryStore:
    return SqlStoryStore(database)


def make_namespace(database: Database, name: str) -> None:
    SqlNamespaceStore(database).ensure(name, embedding_model="test-model", embedding_dim=4)


def new_story(stories: SqlStoryStore, namespace: str, title: str = "The Lighthouse") -> int:
    make_namespace(stories.database, namespace)
    return stories.create(namespace, title=title, genre="mystery", premise="A keeper vanishes.").id


def step(text: str, instruction: str = "") -> NewStoryNode:
    return NewStoryNode(
        paragraph=text,
        instruction=instruction,
        short_term_memory=f"memory after {text}",
        memory_reason="kept the keeper",
        plans=(f"{text}: plan 1", f"{text}: plan 2", f"{text}: plan 3"),
        prompt={"parts": {"instructions": {"tokens": 12}}, "messages": [{"role": "user"}]},
    )


def count(database: Database, table: type[Base]) -> int:
    with database.session() as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def test_migrations_match_the_tables(database: Database) -> None:
    with database.engine.connect() as connection:
        options = {"compare_type": True, "include_name": lambda name, *_: not is_lexical_name(name)}
        context = MigrationContext.configure(connection, opts=options)
        assert compare_metadata(context, Base.metadata) == []


def test_create_get_list_rename_update_delete(stories: SqlStoryStore) -> None:
    make_namespace(stories.database, "story-a")
    first = stories.create(
        "story-a",
        title="The Lighthouse",
        genre="mystery",
        premise="A keeper vanishes.",
        outline="1. the lamp goes dark",
        metadata={"language": "en"},
    )
    assert (first.namespace, first.title, first.mode, first.head_node_id) == (
        "story-a",
        "The Lighthouse",
        StoryMode.NOVEL,
        None,
    )
    assert first.created_at.tzinfo is not None
    assert stories.get(first.id) == first
    second_id = new_story(stories, "story-b", "Caves")
    assert stories.get(second_id).mode == "novel"
    assert [s.id for s in stories.all()] == [second_id, first.id]  # newest first

    renamed = stories.rename(first.id, "The Dark Lamp")
    assert renamed.title == "The Dark Lamp" and renamed.outline == first.outline
    assert renamed.updated_at >= first.updated_at
    updated = stories.update(first.id, outline="1. dark\n2. light", metadata={"pov": "first"})
    assert (updated.title, updated.outline, dict(updated.metadata)) == (
        "The Dark Lamp",
        "1. dark\n2. light",
        {"pov": "first"},
    )
    assert stories.update(first.id, metadata={"pov": "third"}).outline == "1. dark\n2. light"
    assert stories.get(first.id).metadata == {"pov": "third"}

    assert stories.delete(first.id) == "story-a"
    with pytest.raises(NotFound, match=f"story {first.id} does not exist"):
        stories.get(first.id)
    with pytest.raises(NotFound):
        stories.delete(first.id)
    assert [s.id for s in stories.all()] == [second_id]
    assert SqlNamespaceStore(stories.database).get("story-a").name == "story-a"  # caller drops it


def test_create_rejects_bad_stories_with_the_fix(stories: SqlStoryStore) -> None:
    make_namespace(stories.database, "book")
    with pytest.raises(InvalidRecord, match="title is empty"):
        stories.create("book", title="  ", genre="", premise="")
    with pytest.raises(InvalidRecord, match="'poem' is not one of 'novel', 'interactive'"):
        stories.create("book", title="T", genre="", premise="", mode="poem")
    with pytest.raises(InvalidRecord, match="the most is 500"):
        stories.create("book", title="T" * 501, genre="", premise="")
    with pytest.raises(InvalidRecord, match="not JSON"):
        stories.create("book", title="T", genre="", premise="", metadata={"when": object()})
    with pytest.raises(NotFound, match="namespace 'nowhere' does not exist"):
        stories.create("nowhere", title="T", genre="", premise="")
    story = stories.create("book", title="T", genre="", premise="", mode="interactive")
    assert story.mode is StoryMode.INTERACTIVE
    with pytest.raises(InvalidRecord, match=f"already holds story {story.id}.*own namespace"):
        stories.create("book", title="Again", genre="", premise="")
    with pytest.raises(InvalidRecord, match="title is empty"):
        stories.rename(story.id, "")
    with pytest.raises(NotFound, match="story 999999 does not exist"):
        stories.rename(999_999, "x")
    assert [s.title for s in stories.all()] == ["T"]


def test_branching_tree_paths_children_and_head(stories: SqlStoryStore) -> None:
    story = new_story(stories, "tree")
    root = stories.add_node(story, None, step("root"))
    a = stories.add_node(story, root.id, step("a", "go to the lamp"))
    b = stories.add_node(story, a.id, step("b", "climb"))
    c = stories.add_node(story, b.id, step("c", "look out"))
    assert stories.get(story).head_node_id == c.id
    # A branch from a, written without moving the head (e.g. a preview of a regeneration).
    b2 = stories.add_node(story, a.id, step("b2", "descend"), make_head=False)
    assert stories.get(story).head_node_id == c.id
    c2 = stories.add_node(story, b2.id, step("c2", "open the door"))
    assert stories.get(story).head_node_id == c2.id

    assert (root.depth, root.parent_id, root.instruction) == (0, None, "")
    assert [(n.depth, n.parent_id) for n in (a, b, c, b2, c2)] == [
        (1, root.id),
        (2, a.id),
        (3, b.id),
        (2, a.id),
        (3, b2.id),
    ]
    assert stories.path(story, c.id) == [root, a, b, c]
    assert stories.path(story, c2.id) == [root, a, b2, c2]
    assert stories.path(story, root.id) == [root]
    assert stories.children(story, a.id) == [b, b2]  # oldest first
    assert stories.children(story, c.id) == []
    assert stories.node(story, b2.id) == b2
    assert b2.plans == ("b2: plan 1", "b2: plan 2", "b2: plan 3")
    assert b2.prompt["parts"] == {"instructions": {"tokens": 12}}
    assert stories.tree(story) == [
        (root.id, None, 0),
        (a.id, root.id, 1),
        (b.id, a.id, 2),
        (c.id, b.id, 3),
        (b2.id, a.id, 2),
        (c2.id, b2.id, 3),
    ]

    assert stories.set_head(story, b.id).head_node_id == b.id  # undo two steps
    assert stories.get(story).head_node_id == b.id
    assert len(stories.tree(story)) == 6  # undo deletes nothing
    with pytest.raises(NotFound, match=f"node 999999 is not in story {story}"):
        stories.set_head(story, 999_999)
    assert stories.get(story).head_node_id == b.id


def test_one_root_and_no_parents_from_other_stories(stories: SqlStoryStore) -> None:
    first, second = new_story(stories, "first"), new_story(stories, "second")
    root = stories.add_node(first, None, step("root"))
    other_root = stories.add_node(second, None, step("other root"))
    with pytest.raises(InvalidRecord, match=f"already has its root node {root.id}.*parent_id"):
        stories.add_node(first, None, step("second root"))
    with pytest.raises(NotFound, match=f"parent node {other_root.id} is not in story {first}"):
        stories.add_node(first, other_root.id, step("stray"))
    with pytest.raises(NotFound, match=f"node {other_root.id} is not in story {first}"):
        stories.node(first, other_root.id)
    with pytest.raises(NotFound, match=f"node {other_root.id} is not in story {first}"):
        stories.path(first, other_root.id)
    with pytest.raises(NotFound):
        stories.children(first, other_root.id)
    with pytest.raises(NotFound):
        stories.set_head(first, other_root.id)
    with pytest.raises(NotFound, match="story 999999 does not exist"):
        stories.add_node(999_999, None, step("orphan"))
    with pytest.raises(NotFound, match="story 999999 does not exist"):
        stories.path(999_999, root.id)
    assert stories.tree(first) == [(root.id, None, 0)]
    assert stories.get(first).head_node_id == root.id
    assert stories.get(second).head_node_id == other_root.id


def test_nodes_are_validated(stories: SqlStoryStore) -> None:
    story = new_story(stories, "checks")
    with pytest.raises(InvalidRecord, match="plans is 'one plan'; give a list of strings"):
        stories.add_node(story, None, NewStoryNode(paragraph="p", plans="one plan"))  # type: ignore[arg-type]
    with pytest.raises(InvalidRecord, match=r"non-strings \[3\]"):
        stories.add_node(story, None, NewStoryNode(paragraph="p", plans=["a", 3]))  # type: ignore[list-item]
    with pytest.raises(InvalidRecord, match="prompt is not JSON"):
        stories.add_node(story, None, NewStoryNode(paragraph="p", prompt={"x": float("nan")}))
    with pytest.raises(InvalidRecord, match="paragraph is NoneType"):
        stories.add_node(story, None, NewStoryNode(paragraph=None))  # type: ignore[arg-type]
    with pytest.raises(NotFound, match=r"episodes \[999999\] do not exist"):
        stories.add_node(story, None, NewStoryNode(paragraph="p", episode_ids=[999_999]))
    assert stories.tree(story) == []
    assert stories.get(story).head_node_id is None


def test_update_node_edits_memory_and_checks_episodes(stories: SqlStoryStore) -> None:
    database = stories.database
    story = new_story(stories, "edits")
    make_namespace(database, "elsewhere")
    episodes = SqlEpisodeStore(database)
    [own] = episodes.add("edits", [NewEpisode(text="the keeper lit the lamp")])
    [foreign] = episodes.add("elsewhere", [NewEpisode(text="unrelated")])
    node = stories.add_node(story, None, step("root"))
    edited = stories.update_node(
        story,
        node.id,
        short_term_memory="the keeper is missing",
        plans=["search the rocks"],
        episode_ids=[own.id],
        metadata={"edited_by": "reader"},
    )
    assert (edited.short_term_memory, edited.plans, edited.episode_ids) == (
        "the keeper is missing",
        ("search the rocks",),
        (own.id,),
    )
    assert edited.metadata == {"edited_by": "reader"}
    assert (edited.paragraph, edited.memory_reason, edited.prompt) == (
        node.paragraph,
        node.memory_reason,
        node.prompt,
    )
    assert stories.node(story, node.id) == edited
    assert stories.update_node(story, node.id) == edited  # None keeps every field
    with pytest.raises(NotFound, match=rf"episodes \[{foreign.id}\] do not exist"):
        stories.update_node(story, node.id, episode_ids=[own.id, foreign.id])
    with pytest.raises(InvalidRecord, match="non-integers"):
        stories.update_node(story, node.id, episode_ids=[True])
    child = stories.add_node(story, node.id, NewStoryNode(paragraph="p", episode_ids=[own.id]))
    assert child.episode_ids == (own.id,)
    other = new_story(stories, "other")
    with pytest.raises(NotFound, match=f"node {node.id} is not in story {other}"):
        stories.update_node(other, node.id, short_term_memory="hijack")
    assert stories.node(story, node.id) == edited


def test_bible_upsert_updates_in_place(stories: SqlStoryStore) -> None:
    story = new_story(stories, "bible")
    keeper = stories.upsert_entry(story, kind="character", name="Ada", text="The keeper.")
    lamp = stories.upsert_entry(
        story, kind=BibleKind.PLACE, name="The Lamp Room", text="Top of the tower.", aliases=["top"]
    )
    again = stories.upsert_entry(
        story, kind="character", name=" Ada ", text="The keeper, 60.", aliases=["the keeper"]
    )
    assert again.id == keeper.id and again.created_at == keeper.created_at
    assert (again.text, again.aliases, again.kind) == (
        "The keeper, 60.",
        ("the keeper",),
        "character",
    )
    assert again.updated_at >= keeper.updated_at
    assert stories.entries(story) == [again, lamp]

    with pytest.raises(InvalidRecord, match="'monster' is not one of 'character', 'place'"):
        stories.upsert_entry(story, kind="monster", name="Kraken", text="big")
    with pytest.raises(InvalidRecord, match="name is empty"):
        stories.upsert_entry(story, kind="fact", name=" ", text="x")
    with pytest.raises(InvalidRecord, match="text is empty"):
        stories.upsert_entry(story, kind="fact", name="Tides", text="")
    with pytest.raises(InvalidRecord, match="aliases is 'top'; give a list of strings"):
        stories.upsert_entry(story, kind="place", name="Lamp", text="x", aliases="top")

    other = new_story(stories, "other-bible")
    with pytest.raises(NotFound, match=f"bible entry {lamp.id} is not in story {other}"):
        stories.delete_entry(other, lamp.id)
    stories.delete_entry(story, lamp.id)
    assert stories.entries(story) == [again]
    assert stories.entries(other) == []


def test_deleting_a_story_or_its_namespace_deletes_nodes_and_bible(
    stories: SqlStoryStore,
) -> None:
    database = stories.database
    doomed, kept = new_story(stories, "doomed"), new_story(stories, "kept")
    for story in (doomed, kept):
        root = stories.add_node(story, None, step("root"))
        branch = stories.add_node(story, root.id, step("a"))
        stories.add_node(story, root.id, step("b"))
        stories.add_node(story, branch.id, step("c"))
        stories.upsert_entry(story, kind="fact", name="Tide", text="High at dawn.")
    assert (count(database, StoryNodeRow), count(database, BibleEntryRow)) == (8, 2)

    stories.delete(doomed)
    assert (count(database, StoryNodeRow), count(database, BibleEntryRow)) == (4, 1)
    assert len(stories.tree(kept)) == 4 and len(stories.entries(kept)) == 1

    SqlNamespaceStore(database).delete("kept")  # the namespace owns the story
    assert (count(database, StoryRow), count(database, StoryNodeRow)) == (0, 0)
    assert count(database, BibleEntryRow) == 0


def test_path_of_a_1500_deep_chain_is_one_query(stories: SqlStoryStore) -> None:
    database = stories.database
    story = new_story(stories, "saga")
    depth = 1500
    root = stories.add_node(story, None, step("root"))
    # Built in one transaction (1500 add_node calls would time commits, not the path query).
    with database.session() as session:
        session.execute(
            insert(StoryNodeRow),
            [
                {
                    "id": root.id + i,
                    "story_id": story,
                    "parent_id": root.id + i - 1,
                    "depth": i,
                    "instruction": f"plan {i}",
                    "paragraph": f"paragraph {i}",
                    "short_term_memory": "",
                    "memory_reason": "",
                    "plans": [],
                    "episode_ids": [],
                    "prompt": {},
                    "meta": {},
                }
                for i in range(1, depth)
            ],
        )
    leaf = root.id + depth - 1

    def path_and_statements(node_id: int) -> tuple[list[StoryNode], list[str]]:
        statements: list[str] = []

        def record(*args: Any) -> None:
            statements.append(args[2])

        event.listen(database.engine, "before_cursor_execute", record)
        try:
            return stories.path(story, node_id), statements
        finally:
            event.remove(database.engine, "before_cursor_execute", record)

    path, statements = path_and_statements(leaf)
    assert len(path) == depth
    assert [n.depth for n in path] == list(range(depth))
    assert [n.id for n in path] == list(range(root.id, leaf + 1))
    assert path[-1].paragraph == f"paragraph {depth - 1}"
    # One query over the nodes, however deep: the whole call issues the same statements for
    # the 1500-deep leaf as for the root alone (counted, not timed: timings fail when loaded).
    assert len([s for s in statements if "story_nodes" in s]) == 1
    shallow, shallow_statements = path_and_statements(root.id)
    assert [n.id for n in shallow] == [root.id]
    assert statements == shallow_statements
    page = stories.paragraphs(story, leaf, depth - 20, depth)  # the last page of the book
    assert page == [n.paragraph for n in path[-20:]]
    assert stories.paragraphs(story, leaf, 0, 2) == [path[0].paragraph, "paragraph 1"]
    assert stories.paragraphs(story, leaf, depth + 5) == []
    # A cascade along parent_id would recurse once per level (SQLite stops at 1000).
    assert stories.delete(story) == "saga"
    assert count(database, StoryNodeRow) == 0


def test_timeline_is_the_episodes_of_the_path(database: Database) -> None:
    """The writer recalls from the ancestors' episodes only, in story order."""
    from memory.episodes import SqlEpisodeStore
    from memory.namespaces import SqlNamespaceStore
    from memory.records import NewEpisode, NewStoryNode
    from memory.stories import SqlStoryStore

    SqlNamespaceStore(database).ensure("tl", embedding_model="m", embedding_dim=2)
    ids = [
        e.id
        for e in SqlEpisodeStore(database).add("tl", [NewEpisode(text=f"e{i}") for i in range(5)])
    ]
    stories = SqlStoryStore(database)
    story = stories.create("tl", title="T", genre="g", premise="p")
    root = stories.add_node(story.id, None, NewStoryNode(paragraph="a", episode_ids=ids[:2]))
    left = stories.add_node(story.id, root.id, NewStoryNode(paragraph="b", episode_ids=ids[2:3]))
    right = stories.add_node(story.id, root.id, NewStoryNode(paragraph="c", episode_ids=ids[3:]))
    assert stories.timeline(story.id, left.id) == ids[:3]
    assert stories.timeline(story.id, right.id) == ids[:2] + ids[3:]
    assert stories.timeline(story.id, root.id) == ids[:2]


def test_paragraphs_name_what_is_wrong(stories: SqlStoryStore) -> None:
    story = new_story(stories, "short")
    root = stories.add_node(story, None, step("root"))
    assert stories.paragraphs(story, root.id) == [root.paragraph]
    with pytest.raises(NotFound):
        stories.paragraphs(story, root.id + 999)
    with pytest.raises(NotFound, match="story"):
        stories.paragraphs(story + 999, root.id)
    with pytest.raises(InvalidRecord, match="not a range"):
        stories.paragraphs(story, root.id, 5, 2)


def test_the_threaded_store_answers_as_the_store_does_off_the_event_loop(
    stories: SqlStoryStore,
) -> None:
    make_namespace(stories.database, "tale")
    threads: list[threading.Thread] = []

    def record(*_: Any) -> None:
        threads.append(threading.current_thread())

    async def scenario() -> tuple[threading.Thread, list[str], list[StoryNode]]:
        threaded = ThreadedStoryStore(stories)
        story = await threaded.create("tale", title="The Lighthouse", genre="mystery",
                                      premise="A keeper vanishes.")  # fmt: skip
        root = await threaded.add_node(story.id, None, step("one"))
        child = await threaded.add_node(story.id, root.id, step("two"))
        await threaded.update_node(story.id, child.id, short_term_memory="edited")
        await threaded.upsert_entry(story.id, kind="character", name="Ada", text="The keeper.")
        with pytest.raises(NotFound, match="node 999 is not in story"):
            await threaded.node(story.id, 999)
        names = [e.name for e in await threaded.entries(story.id)]
        return threading.current_thread(), names, await threaded.path(story.id, child.id)

    event.listen(stories.database.engine, "before_cursor_execute", record)
    try:
        loop_thread, names, path = asyncio.run(scenario())
    finally:
        event.remove(stories.database.engine, "before_cursor_execute", record)
    assert names == ["Ada"]
    assert [n.paragraph for n in path] == ["one", "two"] and path[1].short_term_memory == "edited"
    assert path == stories.path(path[0].story_id, path[1].id)  # the same answers as the store's
    assert threads and loop_thread not in threads  # every statement ran in a worker thread
