"""Composition of the writer: stories in SQL, each with its own episodic memory namespace.

Built on :class:`~app.reading.Reading` (the store, the token counter, the LLM on demand), so the
web app, the CLI and the REST API share one way of opening a story.
"""

from __future__ import annotations

import html
import io
import re
import uuid
import warnings
from dataclasses import replace
from pathlib import Path

from agents.writer import (
    Mode,
    RecurrentWriter,
    StoryTree,
    WriterConfig,
    check_opening,
    story_text,
)
from app.loaders import load_document
from app.reading import Reading
from app.settings import Settings
from memory.records import Story, StoryNode
from memory.stories import SqlStoryStore
from serving.rerank.reranker import Reranker

__all__ = ["Story", "StoryNode", "Writing", "story_namespace"]


def writer_config(settings: Settings) -> WriterConfig:
    """The writer's sampling and limits from the settings (``MNEME_WRITER_*``)."""
    return WriterConfig(
        candidates=settings.writer_candidates,
        temperature=settings.writer_temperature,
        top_p=settings.writer_top_p,
        min_p=settings.writer_min_p,
        repetition_penalty=settings.writer_repetition_penalty,
        presence_penalty=settings.writer_presence_penalty,
        frequency_penalty=settings.writer_frequency_penalty,
        paragraph_tokens=settings.writer_paragraph_tokens,
        step_timeout_s=settings.writer_step_timeout_s,
        step_target_s=settings.writer_step_target_s,
    )


def story_namespace(title: str) -> str:
    """A fresh namespace for a story's long-term memory: ``story-<slug>-<8 hex>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "untitled"
    return f"story-{slug}-{uuid.uuid4().hex[:8]}"


class Writing:
    """Stories: start, step, branch, undo, edit memory, export, delete."""

    def __init__(self, reading: Reading, config: WriterConfig | None = None) -> None:
        self.reading = reading
        self.stories = SqlStoryStore(reading.store.database)
        self.config = config or writer_config(reading.settings)
        self._writer: RecurrentWriter | None = None
        self.tree = StoryTree(self.stories)
        """Undo, switch, edit memory: the moves that need no model (so no model is loaded)."""

    @property
    def writer(self) -> RecurrentWriter:
        """The writer, built (and the LLM loaded) on first use, then kept: it holds the
        background ingests of new paragraphs."""
        if self._writer is None:
            config = self.config
            if not config.context_tokens:
                config = replace(config, context_tokens=self.reading.context_tokens())
            self._writer = RecurrentWriter(
                self.stories,
                self.reading.story_memory,
                self.reading.llm,
                config,
                reranker=self.reranker() if self.config.candidates > 1 else None,
            )
        return self._writer

    def reranker(self) -> Reranker:
        """The paragraph reranker of the settings (loaded now; a clear error if it cannot be)."""
        from serving.rerank import RerankerPool

        settings = self.reading.settings
        pool = RerankerPool.standard(self.reading.store.embedder, folders=settings.scorer_folders)
        return pool.get(settings.rerank_scorer)

    async def start(
        self, genre: str, premise: str, mode: Mode = "novel"
    ) -> tuple[Story, StoryNode]:
        check_opening(genre, premise, mode)  # before the model loads
        return await self.writer.start(story_namespace(premise[:40]), genre=genre,
                                       premise=premise, mode=mode)  # fmt: skip

    async def import_manuscript(
        self, path: Path, *, genre: str = "", mode: Mode = "novel", shown_as: str | None = None
    ) -> tuple[Story, StoryNode]:
        """A story continuing a manuscript file (text, Markdown, DOCX, EPUB, PDF); errors name
        it ``shown_as`` (an upload's own name) when given, else by its path."""
        loaded = load_document(path, name=shown_as)
        return await self.writer.adopt(story_namespace(loaded.title), loaded.text, genre=genre,
                                       title=loaded.title, mode=mode)  # fmt: skip

    def delete(self, story_id: int) -> None:
        """Delete a story with its tree, bible and long-term memory (SQL rows and vectors)."""
        namespace = self.stories.delete(story_id)
        self.reading.store.delete_namespace(namespace)

    def docx(self, story_id: int, node_id: int | None = None) -> bytes:
        """The story along the current branch as a Word document."""
        import docx

        story = self.stories.get(story_id)
        document = docx.Document()
        document.core_properties.title = story.title
        document.add_heading(story.title, level=0)
        document.add_paragraph().add_run(story.genre).italic = True
        for paragraph in story_text(self.stories, story_id, node_id).split("\n\n"):
            document.add_paragraph(paragraph)
        out = io.BytesIO()
        document.save(out)
        return out.getvalue()

    def epub(
        self, story_id: int, node_id: int | None = None, *, identifier: str | None = None
    ) -> bytes:
        """The story along the current branch as an EPUB book (one chapter); ``identifier``
        is the book's (default ``mneme-story-<row id>``; the REST API gives its public id)."""
        from ebooklib import epub

        story = self.stories.get(story_id)
        book = epub.EpubBook()
        book.set_identifier(identifier or f"mneme-story-{story.id}")
        book.set_title(story.title)
        book.set_language("en")
        body = "".join(
            f"<p>{html.escape(p)}</p>"
            for p in story_text(self.stories, story_id, node_id).split("\n\n")
        )
        chapter = epub.EpubHtml(title=story.title, file_name="story.xhtml", lang="en")
        chapter.content = f"<h1>{html.escape(story.title)}</h1>{body}"
        book.add_item(chapter)
        book.toc = [chapter]
        book.spine = ["nav", chapter]
        book.add_item(epub.EpubNcx())
        book.add_item(epub.EpubNav())
        out = io.BytesIO()
        with warnings.catch_warnings():  # ebooklib's own deprecation warnings
            warnings.simplefilter("ignore")
            epub.write_epub(out, book)
        return out.getvalue()

    def markdown(self, story_id: int, node_id: int | None = None) -> str:
        """The story along the current branch (or up to ``node_id``) as Markdown."""
        story = self.stories.get(story_id)
        body = story_text(self.stories, story_id, node_id)
        return f"# {story.title}\n\n*{story.genre}*\n\n{body}\n"
