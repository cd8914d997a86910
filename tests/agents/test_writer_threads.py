"""The writer's SQL runs in worker threads, never on the event loop (issue 18), and a step stopped
while its node is being written leaves that node whole."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from agents.writer import RecurrentWriter
from memory import MemoryStore
from memory.episodic import EpisodicMemory
from memory.records import BibleEntry, BibleKind, NewStoryNode, Story, StoryMode, StoryNode
from memory.segmentation import SegmenterConfig
from memory.segmenters import FixedSegmenter
from memory.stories import SqlStoryStore, Timeline
from tests.agents.test_writer import echo, run
from tests.fakes import ScriptedLLM

MANUSCRIPT = (
    "The lighthouse keeper counted the ships every night. One autumn a ship came in without a "
    "crew, its lamps lit and its sails furled, and the keeper rowed out to it alone."
)


class ThreadRecordingStories:
    """The StoryStore over SQL, recording the thread each call ran on. A call of ``hold`` (a
    method's name) waits for ``release`` once it has begun (``entered``)."""

    def __init__(self, stories: SqlStoryStore) -> None:
        self.stories = stories
        self.calls: list[tuple[str, threading.Thread]] = []
        self.hold = ""
        self.entered = threading.Event()
        self.release = threading.Event()

    def _call(self, name: str) -> None:
        self.calls.append((name, threading.current_thread()))
        if name == self.hold:
            self.entered.set()
            assert self.release.wait(timeout=30), "the test never released the held call"

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
        self._call("create")
        return self.stories.create(namespace, title=title, genre=genre, premise=premise,
                                   outline=outline, mode=mode, metadata=metadata)  # fmt: skip

    def get(self, story_id: int) -> Story:
        self._call("get")
        return self.stories.get(story_id)

    def node(self, story_id: int, node_id: int) -> StoryNode:
        self._call("node")
        return self.stories.node(story_id, node_id)

    def path(self, story_id: int, node_id: int) -> list[StoryNode]:
        self._call("path")
        return self.stories.path(story_id, node_id)

    def timeline(self, story_id: int, node_id: int) -> list[int]:
        self._call("timeline")
        return self.stories.timeline(story_id, node_id)

    def recall_timeline(self, story_id: int, node_id: int) -> Timeline:
        self._call("recall_timeline")
        return self.stories.recall_timeline(story_id, node_id)

    def set_head(self, story_id: int, node_id: int) -> Story:
        self._call("set_head")
        return self.stories.set_head(story_id, node_id)

    def add_node(
        self, story_id: int, parent_id: int | None, node: NewStoryNode, *, make_head: bool = True
    ) -> StoryNode:
        self._call("add_node")
        return self.stories.add_node(story_id, parent_id, node, make_head=make_head)

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
        self._call("update_node")
        return self.stories.update_node(
            story_id, node_id, paragraph=paragraph, short_term_memory=short_term_memory,
            plans=plans, episode_ids=episode_ids, metadata=metadata,
        )  # fmt: skip

    def upsert_entry(
        self,
        story_id: int,
        *,
        kind: BibleKind | str,
        name: str,
        text: str,
        aliases: Sequence[str] = (),
    ) -> BibleEntry:
        self._call("upsert_entry")
        return self.stories.upsert_entry(story_id, kind=kind, name=name, text=text,
                                         aliases=aliases)  # fmt: skip

    def entries(self, story_id: int) -> list[BibleEntry]:
        self._call("entries")
        return self.stories.entries(story_id)


def recorded(store: MemoryStore) -> tuple[RecurrentWriter, ThreadRecordingStories]:
    stories = ThreadRecordingStories(SqlStoryStore(store.database))
    segmenter = FixedSegmenter(SegmenterConfig(min_tokens=4, max_tokens=120))
    writer = RecurrentWriter(
        stories, lambda ns: EpisodicMemory(store, ns, segmenter), ScriptedLLM(echo)
    )
    return writer, stories


def test_no_story_sql_runs_on_the_event_loop(store: MemoryStore) -> None:
    writer, stories = recorded(store)

    async def scenario() -> tuple[threading.Thread, dict[str, int]]:
        counts: dict[str, int] = {}
        story, _ = await writer.start("story-1", genre="adventure", premise="A courier.")
        counts["start"] = len(stories.calls)
        first = await writer.step(story.id, plan="The keeper gave Mara a brass compass.")
        counts["step"] = len(stories.calls)
        await writer.step(story.id, plan="Mara looks at the brass compass.")  # recalls `first`
        await writer.regenerate(story.id, first.id)
        await writer.edit_paragraph(story.id, first.id, "Mara held the compass to the light.")
        await writer.adopt("story-2", MANUSCRIPT, genre="mystery")
        await writer.settle()
        return threading.current_thread(), counts

    loop_thread, counts = run(scenario())
    names = [name for name, _ in stories.calls]
    assert counts["start"] >= 3 and counts["step"] > counts["start"]  # both used the store
    assert {"create", "get", "node", "add_node", "update_node", "entries"} <= set(names)
    assert {"recall_timeline", "timeline"} & set(names)  # the step that recalled
    on_loop = [name for name, thread in stories.calls if thread is loop_thread]
    assert on_loop == []


def test_a_step_stopped_while_its_node_is_written_leaves_it_whole(store: MemoryStore) -> None:
    writer, stories = recorded(store)

    async def scenario() -> tuple[StoryNode, StoryNode]:
        story, root = await writer.start("story-1", genre="adventure", premise="A courier.")
        stories.hold = "add_node"
        task = asyncio.create_task(writer.step(story.id, plan="Go on."))
        assert await asyncio.to_thread(stories.entered.wait, 30)  # the node is being written
        task.cancel()
        await asyncio.sleep(0)  # the step hears the cancel while the write runs
        stories.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await writer.settle()
        head = stories.stories.get(story.id).head_node_id
        assert head is not None
        return root, stories.stories.node(story.id, head)

    root, head = run(scenario())
    assert head.parent_id == root.id  # the write finished: the node is the head ...
    assert head.episode_ids  # ... and its paragraph went to long-term memory, as for any step
