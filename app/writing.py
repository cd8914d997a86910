"""Composition of the writer: stories in SQL, each with its own episodic memory namespace.

Built on :class:`~app.reading.Reading` (the store, the token counter, the LLM on demand), so the
web app, the CLI and the REST API share one way of opening a story.
"""

from __future__ import annotations

import re
import uuid

from agents.writer import Mode, RecurrentWriter, WriterConfig, story_text
from app.reading import Reading
from memory.records import Story, StoryNode
from memory.stories import SqlStoryStore

__all__ = ["Story", "StoryNode", "Writing", "story_namespace"]


def story_namespace(title: str) -> str:
    """A fresh namespace for a story's long-term memory: ``story-<slug>-<8 hex>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "untitled"
    return f"story-{slug}-{uuid.uuid4().hex[:8]}"


class Writing:
    """Stories: start, step, branch, undo, edit memory, export, delete."""

    def __init__(self, reading: Reading, config: WriterConfig | None = None) -> None:
        self.reading = reading
        self.stories = SqlStoryStore(reading.store.database)
        self.config = config or WriterConfig()

    @property
    def writer(self) -> RecurrentWriter:
        """The writer (loads the LLM on first use)."""
        return RecurrentWriter(
            self.stories, lambda ns: self.reading.memory(ns, "embedding"), self.reading.llm,
            self.config,
        )  # fmt: skip

    async def start(
        self, genre: str, premise: str, mode: Mode = "novel"
    ) -> tuple[Story, StoryNode]:
        return await self.writer.start(story_namespace(premise[:40]), genre=genre,
                                       premise=premise, mode=mode)  # fmt: skip

    def delete(self, story_id: int) -> None:
        """Delete a story with its tree, bible and long-term memory (SQL rows and vectors)."""
        namespace = self.stories.delete(story_id)
        self.reading.store.delete_namespace(namespace)

    def markdown(self, story_id: int, node_id: int | None = None) -> str:
        """The story along the current branch (or up to ``node_id``) as Markdown."""
        story = self.stories.get(story_id)
        body = story_text(self.stories, story_id, node_id)
        return f"# {story.title}\n\n*{story.genre}*\n\n{body}\n"
