"""Composition of the writer: stories in SQL, each with its own episodic memory namespace.

Built on :class:`~app.reading.Reading` (the store, the token counter, the LLM on demand), so the
web app, the CLI and the REST API share one way of opening a story. :class:`Writing`'s methods are
the writer's use-cases; the surfaces call them, never the store or the writer beneath.
"""

from __future__ import annotations

import html
import io
import re
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from agents.story_tree import StoryTree, story_text
from agents.writer import RecurrentWriter
from agents.writer_config import (
    GENRE_CHARS,
    PREMISE_CHARS,
    Mode,
    OnProgress,
    Progress,
    WriterConfig,
    check_opening,
)
from app.loaders import load_document
from app.reading import Reading
from app.settings import Settings
from memory import Embedder
from memory.errors import NotFound
from memory.records import BibleEntry, Episode, Story, StoryNode
from memory.retrieval import Recall
from memory.stories import SqlStoryStore
from serving.rerank.reranker import Reranker

__all__ = [
    "GENRE_CHARS",
    "PREMISE_CHARS",
    "BibleEntry",
    "Episode",
    "Recall",
    "Reranker",
    "Story",
    "StoryNode",
    "Writing",
    "reranker_for",
    "story_namespace",
]


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


def reranker_for(settings: Settings, embedder: Embedder) -> Reranker:
    """The paragraph reranker ``settings`` name (``MNEME_RERANK_SCORER``), loaded now over
    ``embedder``; a clear error if it cannot be."""
    from serving.rerank import RerankerPool

    pool = RerankerPool.standard(embedder, folders=settings.scorer_folders)
    return pool.get(settings.rerank_scorer)


def _suggestion(node: StoryNode, index: int) -> dict[str, str]:
    """The node's suggested bible entry ``index`` (NotFound once it is gone)."""
    suggested = node.metadata.get("bible_suggestions", [])
    if not 0 <= index < len(suggested):
        raise NotFound(
            f"node {node.id} has no suggested entry {index}; it has {len(suggested)} (0 up)"
        )
    return dict(suggested[index])


def _quiet(progress: Progress) -> None:
    """Hears no progress."""


class Writing:
    """The writer's use-cases, shared by the web app and the REST API: start or import a story,
    step, branch, undo, edit memory and the bible, search the story's events, export, delete."""

    def __init__(self, reading: Reading, config: WriterConfig | None = None) -> None:
        self.reading = reading
        self.stories = SqlStoryStore(reading.store.database)
        """The stories' SQL store (the surfaces use the methods below instead)."""
        self.config = config or writer_config(reading.settings)
        self._writer: RecurrentWriter | None = None
        self._tree = StoryTree(self.stories)
        """Undo, switch, edit memory: the moves that need no model (so no model is loaded)."""

    # -- the model's work -----------------------------------------------------------------------

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

    def load(self) -> None:
        """Build the writer now (the LLM, and the reranker when drafts are above 1), so a model
        that cannot be loaded fails here, before a run is started."""
        _ = self.writer

    def reranker(self) -> Reranker:
        """The paragraph reranker of the settings (loaded now; a clear error if it cannot be)."""
        return reranker_for(self.reading.settings, self.reading.store.embedder)

    async def start(
        self,
        genre: str,
        premise: str,
        mode: Mode = "novel",
        *,
        namespace: str | None = None,
        on_progress: OnProgress = _quiet,
    ) -> tuple[Story, StoryNode]:
        """A new story from a genre and a premise (bad input is refused before the model
        loads); its long-term memory goes to ``namespace`` (default: a fresh
        :func:`story_namespace`). ``on_progress`` hears the opening as it streams."""
        check_opening(genre, premise, mode)
        return await self.writer.start(namespace or story_namespace(premise[:40]), genre=genre,
                                       premise=premise, mode=mode,
                                       on_progress=on_progress)  # fmt: skip

    async def import_manuscript(
        self, path: Path, *, genre: str = "", mode: Mode = "novel", shown_as: str | None = None
    ) -> tuple[Story, StoryNode]:
        """A story continuing a manuscript file (text, Markdown, DOCX, EPUB, PDF); errors name
        it ``shown_as`` (an upload's own name) when given, else by its path."""
        loaded = load_document(path, name=shown_as)
        return await self.writer.adopt(story_namespace(loaded.title), loaded.text, genre=genre,
                                       title=loaded.title, mode=mode)  # fmt: skip

    async def step(
        self,
        story_id: int,
        *,
        plan: str | None = None,
        action: str | None = None,
        parent_id: int | None = None,
        on_progress: OnProgress = _quiet,
    ) -> StoryNode:
        """The next paragraph after ``parent_id`` (default: the head), following ``plan`` (or an
        interactive story's ``action``); it becomes the head. Cancelling stores nothing."""
        return await self.writer.step(story_id, plan=plan, action=action, parent_id=parent_id,
                                      on_progress=on_progress)  # fmt: skip

    async def edit_paragraph(self, story_id: int, node_id: int, paragraph: str) -> StoryNode:
        """The writer's own text for a node's paragraph (earlier versions are kept, the node's
        events re-embedded)."""
        return await self.writer.edit_paragraph(story_id, node_id, paragraph)

    # -- reading stories ------------------------------------------------------------------------

    def list_stories(self) -> list[Story]:
        """Every story, newest first."""
        return self.stories.all()

    def story(self, story_id: int) -> Story:
        return self.stories.get(story_id)

    def node(self, story_id: int, node_id: int) -> StoryNode:
        """A node of the story (NotFound if it is another story's, or none)."""
        return self.stories.node(story_id, node_id)

    def path(self, story_id: int, node_id: int) -> list[StoryNode]:
        """The nodes from the opening down to ``node_id``."""
        return self.stories.path(story_id, node_id)

    def transcript(
        self, story_id: int, node_id: int, start: int = 0, stop: int | None = None
    ) -> list[tuple[str, str]]:
        """(instruction, paragraph) of steps ``[start:stop]`` of the branch down to ``node_id``
        (a page of a long book, read in one query)."""
        return self.stories.steps(story_id, node_id, start, stop)

    def previews(self, story_id: int) -> list[tuple[int, int | None, str]]:
        """(id, parent id, the paragraph's first 80 characters) of every node, oldest first."""
        return self.stories.previews(story_id)

    # -- changing stories (no model) ------------------------------------------------------------

    def rename(self, story_id: int, title: str) -> Story:
        return self.stories.rename(story_id, title)

    def save_draft(self, story_id: int, draft: str) -> Story:
        """Keep the writer's unsent instruction with the story (``metadata["draft"]``)."""
        story = self.stories.get(story_id)
        return self.stories.update(story_id, metadata={**story.metadata, "draft": draft})

    def undo(self, story_id: int) -> StoryNode:
        """Move the head back to its parent (the undone step stays, as a branch); InvalidRecord
        at the opening."""
        return self._tree.undo(story_id)

    def branch(self, story_id: int, node_id: int) -> StoryNode:
        """Continue from any node: it becomes the head; the next step sees its memory."""
        return self._tree.switch(story_id, node_id)

    def edit_memory(self, story_id: int, node_id: int, short_term_memory: str) -> StoryNode:
        """The writer's own short-term memory for a node (the next step reads it)."""
        return self._tree.edit_memory(story_id, node_id, short_term_memory)

    def delete(self, story_id: int) -> None:
        """Delete a story with its tree, bible and long-term memory (SQL rows and vectors)."""
        namespace = self.stories.delete(story_id)
        self.reading.store.delete_namespace(namespace)

    # -- the bible ------------------------------------------------------------------------------

    def entries(self, story_id: int) -> list[BibleEntry]:
        """The story's bible, in the order the entries were first written."""
        return self.stories.entries(story_id)

    def save_entry(self, story_id: int, *, kind: str, name: str, text: str) -> BibleEntry:
        """The entry called ``name``, created or replaced."""
        return self.stories.upsert_entry(story_id, kind=kind, name=name, text=text)

    def delete_entry(self, story_id: int, entry_id: int) -> None:
        self.stories.delete_entry(story_id, entry_id)

    def accept_suggestion(self, story_id: int, node_id: int, index: int) -> BibleEntry:
        """Save the node's suggested bible entry ``index`` and drop it from the suggestions."""
        item = _suggestion(self.stories.node(story_id, node_id), index)
        entry = self.save_entry(story_id, kind=item["kind"], name=item["name"], text=item["text"])
        self.dismiss_suggestion(story_id, node_id, index)
        return entry

    def dismiss_suggestion(self, story_id: int, node_id: int, index: int) -> StoryNode:
        """Drop the node's suggested bible entry ``index``."""
        node = self.stories.node(story_id, node_id)
        _suggestion(node, index)
        rest = [s for i, s in enumerate(node.metadata["bible_suggestions"]) if i != index]
        metadata = {**node.metadata, "bible_suggestions": rest}
        return self.stories.update_node(story_id, node_id, metadata=metadata)

    # -- long-term memory -----------------------------------------------------------------------

    async def events(self, story_id: int, node_id: int) -> list[Episode]:
        """The events (stored paragraphs) along the branch down to ``node_id``, oldest first;
        a paragraph stored a moment ago may not be one yet."""
        story = self.stories.get(story_id)
        held = {e.id: e for e in await self.reading.story_memory(story.namespace).episodes()}
        return [held[i] for i in self._timeline(story_id, node_id) if i in held]

    async def search_events(self, story_id: int, node_id: int, query: str) -> list[Recall]:
        """The branch's events that answer ``query``, best first."""
        memory = self.reading.story_memory(self.stories.get(story_id).namespace)
        return await memory.search(query, within=self._timeline(story_id, node_id))

    async def pin_event(self, story_id: int, episode_id: int, pinned: bool = True) -> Episode:
        """Pin (or unpin) an event: a pinned one is never forgotten."""
        memory = self.reading.story_memory(self.stories.get(story_id).namespace)
        return await memory.pin(episode_id, pinned)

    async def forget_event(self, story_id: int, episode_id: int) -> None:
        """Forget an event (InvalidRecord if it is pinned, NotFound if it is not the story's)."""
        memory = self.reading.story_memory(self.stories.get(story_id).namespace)
        await memory.forget([episode_id])

    def novelty(self, texts: Sequence[str]) -> list[float]:
        """How new each text is against the one before it: 1 - cosine of their embeddings (the
        first counts as wholly new). Events are a story's paragraphs, so this varies."""
        if not texts:
            return []
        vectors = np.asarray(self.reading.store.embedder.embed(list(texts)), dtype=np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
        similar = (vectors[1:] * vectors[:-1]).sum(axis=1)  # (n - 1,)
        return [1.0, *(1.0 - similar).round(4).tolist()]

    def _timeline(self, story_id: int, node_id: int) -> list[int]:
        return [eid for node in self.stories.path(story_id, node_id) for eid in node.episode_ids]

    # -- export ---------------------------------------------------------------------------------

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
