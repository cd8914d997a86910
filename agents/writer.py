"""RecurrentWriter: long fiction paragraph by paragraph (RecurrentGPT, Zhou et al. 2023).

RecurrentGPT replaces an RNN's hidden state with language: each step the model reads a short-term
memory (a running summary it rewrites), passages recalled from long-term memory, the last
paragraph and the chosen plan, and writes the next paragraph, the updated short-term memory (with
its reason) and three plans for what comes next. Here:

- the step is split as RecurrentGPT's content is: the paragraph is plain prose, generated as a
  continuation and streamed, and what streams is exactly what is stored; then one smaller
  structured call (guided decoding where the backend has it, length limits in the schema) gives
  the memory update, the three plans and the story-bible suggestions;
- nothing is stored that fails :mod:`agents.quality` (empty, degenerate, echoing instructions or
  repair requests); a step that cannot produce valid content within its attempts and its time
  limit raises :class:`StepFailed` with one sentence a writer understands, and stores nothing;
- long-term memory is the story's :class:`~memory.episodic.EpisodicMemory`; each new paragraph is
  ingested on its own (never the whole story again), and recall is limited to the current
  node's ancestors, in their order (``search(within=...)``), so branches never see each other;
- every step is a node of a story tree (:class:`~memory.stories.StoryStore`) keeping its
  short-term memory, plans and exactly what was sent, so undo, branch and regenerate restore
  that node's state; its SQL runs in worker threads (:class:`~memory.stories.ThreadedStoryStore`),
  so a step never blocks the event loop that serves other requests;
- every part of the prompt has a token budget, so its size is bounded however long the story.

This module holds the step itself (prose, storing, long-term memory). Its parts live beside it:
the config and progress in :mod:`agents.writer_config`, the notes tries in :mod:`agents.notes`,
the model calls by prompt style in :mod:`agents.story_model`, the prompts' texts in
:mod:`agents.story_prompt`, the checks in :mod:`agents.quality`, and the moves that need no
model in :mod:`agents.story_tree`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any, Literal, TypeVar, cast

from agents.errors import NOTHING_STORED, AgentConfigError, StepFailed
from agents.notes import NotesWriter, kept_notes, untitled_notes
from agents.quality import clean_paragraph, prose_problem, words
from agents.replies import ImportFrame, OpeningNotes, StepNotes
from agents.story_model import StoryModel
from agents.story_prompt import (
    INSTRUCTION_TEXTS,
    INTERACTIVE,
    NOVEL,
    OPENING_ASK,
    PROSE_ASK,
    Prompt,
    pick_entries,
    tail,
)
from agents.story_tree import StoryTree
from agents.writer_config import (
    GENRE_CHARS,
    Mode,
    OnProgress,
    Progress,
    WriterConfig,
    check_opening,
)
from memory.episodic import EpisodicMemory
from memory.errors import InvalidRecord, NotFound
from memory.records import NewStoryNode, Story, StoryNode
from memory.retrieval import clip
from memory.stories import StoryStore, ThreadedStoryStore
from serving.llm import LLM, ChatMessage
from serving.rerank.reranker import Reranker

log = logging.getLogger(__name__)

T = TypeVar("T")

_PLAN_CHARS = 300
_IMPORT_HEAD_TOKENS = 600
_IMPORT_TAIL_TOKENS = 1500
_MIN_PARAGRAPH_WORDS = 12
_DEGENERATE_AFTER_WORDS = 48
"""A paragraph still streaming is checked for a repetition loop once it has this many words."""


def _quiet(progress: Progress) -> None:
    """The default progress listener: nobody is watching."""


def _shown(on_progress: OnProgress, attempt: int, notice: str, text: str) -> None:
    on_progress(Progress("paragraph", text, attempt, notice))


class RecurrentWriter(StoryTree):
    """Writes a story in a tree of steps, each with its own memory state."""

    def __init__(
        self,
        stories: StoryStore,
        memory_for: Callable[[str], EpisodicMemory],
        llm: LLM,
        config: WriterConfig = WriterConfig(),
        *,
        reranker: Reranker | None = None,
    ) -> None:
        if not 1 <= config.candidates <= 16:
            raise AgentConfigError(f"candidates={config.candidates} must be in [1, 16]")
        super().__init__(stories)
        self._stories = ThreadedStoryStore(stories)
        """The same store for the async methods: every call in a worker thread, so a step never
        blocks the event loop (the REST API's) on SQL. The sync moves of :class:`StoryTree` use
        ``stories`` directly."""
        self.memory_for = memory_for
        self.config = config
        self.reranker = reranker
        self._model = StoryModel(llm, config)
        """How the model is asked (chat or continuation) and each prompt fitted to its context."""
        self._notes_writer = NotesWriter(self._model)
        self._pending: dict[int, asyncio.Task[list[int]]] = {}
        """Background ingests of new paragraphs, by node id (see :meth:`settle`)."""

    @property
    def llm(self) -> LLM:
        """The model every call of this writer goes to."""
        return self._model.llm

    @llm.setter
    def llm(self, llm: LLM) -> None:
        self._model.llm = llm

    @property
    def style(self) -> Literal["chat", "completion"]:
        """How the model is asked now (``auto`` moves to completion once the backend says the
        model has no chat template)."""
        return self._model.style

    # -- starting ---------------------------------------------------------------------------

    async def start(
        self,
        namespace: str,
        *,
        genre: str,
        premise: str,
        mode: Mode = "novel",
        on_progress: OnProgress = _quiet,
    ) -> tuple[Story, StoryNode]:
        """A new story from a genre and a premise: a title and outline, the opening paragraph
        (streamed), its short-term memory and three plans. ``namespace`` will hold its long-term
        memory. Nothing is stored unless every part is valid."""
        check_opening(genre, premise, mode)
        began = time.monotonic()
        memory = self.memory_for(namespace)
        count = self._model.count = memory.count_tokens
        async with self._limit():
            premise_text = clip(premise.strip(), 400, count)
            setting = f"Genre: {genre.strip()}\nPremise: {premise_text}"
            system = INTERACTIVE if mode == "interactive" else NOVEL
            ask = OPENING_ASK.format(words=self._words())
            prose = self._prose_prompt(system, setting, "", ask, {"story": count(setting)})
            # The opening streams first; its title and outline come with its notes (one call).
            paragraph, ranking = await self._paragraph(prose, "", on_progress)
            notes, notes_prompt = await self._notes_writer.notes(
                setting, premise_text, paragraph, mode, on_progress, opening=True,
                target=began + self.config.step_target_s, kept=untitled_notes(premise),
            )  # fmt: skip
            frame = cast(OpeningNotes, notes)
            on_progress(Progress("storing", paragraph))

        async def store() -> tuple[Story, StoryNode]:
            await asyncio.to_thread(memory.store.namespace, namespace)
            story = await self._stories.create(
                namespace,
                title=frame.title.strip(),
                genre=genre.strip(),
                premise=premise.strip(),
                outline=frame.outline.strip(),
                mode=mode,
            )
            root = await self._store_node(
                story.id, None, "", paragraph, notes, prose, notes_prompt, ranking, "the start"
            )
            return story, root

        # Outside the time limit, as a step's storing is. Stopped during the ingest, the opening
        # is ingested by the first step that recalls past it.
        story, root = await _uninterrupted(store())
        root = await self._stories.update_node(
            story.id, root.id, episode_ids=await self._remember(memory, paragraph)
        )
        return await self._stories.get(story.id), root

    async def adopt(
        self,
        namespace: str,
        manuscript: str,
        *,
        genre: str,
        title: str | None = None,
        mode: Mode = "novel",
        on_progress: OnProgress = _quiet,
    ) -> tuple[Story, StoryNode]:
        """A story that continues an existing manuscript: the whole text goes to long-term
        memory; the model reads its opening and its end (a bounded prompt however long it is)
        and gives a title, an outline and the first bible entries, then the short-term memory
        and three plans as after any paragraph."""
        if not manuscript.strip():
            raise InvalidRecord("the manuscript is empty; import a file with some text")
        if len(genre) > GENRE_CHARS:
            raise InvalidRecord(f"the genre has {len(genre)} characters; the most is {GENRE_CHARS}")
        memory = self.memory_for(namespace)
        count = self._model.count = memory.count_tokens
        head = clip(manuscript.strip(), _IMPORT_HEAD_TOKENS, count)
        ending = tail(manuscript.strip(), _IMPORT_TAIL_TOKENS, count)
        async with self._limit():
            setting = (
                f"Genre: {genre.strip() or 'unknown'}\n\nThe manuscript begins:\n{head}\n\n"
                f"It currently ends:\n{ending}"
            )
            frame = await self._notes_writer.frame(setting, ImportFrame, on_progress)
            context = f"Title: {title or frame.title}\nOutline: {frame.outline}"
            notes, notes_prompt = await self._notes_writer.notes(
                context, "", ending, mode, on_progress
            )
            on_progress(Progress("storing"))
            await asyncio.to_thread(memory.store.namespace, namespace)
            done = await memory.ingest(manuscript, name="manuscript")
        accepted = [*frame.bible, *notes.bible]
        notes = notes.model_copy(update={"bible": []})  # accepted already, not suggestions

        async def store() -> tuple[Story, StoryNode]:
            story = await self._stories.create(
                namespace,
                title=(title or frame.title).strip(),
                genre=genre.strip() or "unknown",
                premise=clip(manuscript.strip(), 200, count),
                outline=frame.outline.strip(),
                mode=mode,
            )
            for item in accepted:
                await self._stories.upsert_entry(
                    story.id, kind=item.kind, name=item.name, text=item.text
                )
            root = await self._store_node(
                story.id,
                None,
                "",
                manuscript.strip(),
                notes,
                Prompt([], {}),
                notes_prompt,
                None,
                "imported manuscript",
                [e.id for e in done.episodes],
            )
            return await self._stories.get(story.id), root

        return await _uninterrupted(store())

    # -- stepping ---------------------------------------------------------------------------

    async def step(
        self,
        story_id: int,
        *,
        plan: str | None = None,
        action: str | None = None,
        parent_id: int | None = None,
        on_progress: OnProgress = _quiet,
    ) -> StoryNode:
        """Write the paragraph after ``parent_id`` (default: the head) following ``plan`` (or,
        in interactive mode, the reader's ``action``); the new node becomes the head.

        ``on_progress`` hears the paragraph as it streams (exactly what will be stored), a try
        that was discarded and why, and the phase. Cancelling the call stores nothing (but once
        the node is being written, the write finishes first); :class:`StepFailed` stores
        nothing."""
        story = await self._stories.get(story_id)
        parent = await self._stories.node(story_id, parent_id or self._head(story))
        instruction = (action if story.mode == "interactive" and action else plan) or ""
        if not instruction.strip():
            instruction = parent.plans[0] if parent.plans else "Continue the story."
        memory = self.memory_for(story.namespace)
        self._model.count = memory.count_tokens
        began = time.monotonic()
        async with self._limit():
            prose = await self.prompt(story, parent, instruction, memory)
            paragraph, ranking = await self._paragraph(prose, parent.paragraph, on_progress)
            context = self._context(story, memory)
            notes, notes_prompt = await self._notes_writer.notes(
                context, parent.short_term_memory, paragraph, story.mode.value, on_progress,
                target=began + self.config.step_target_s, kept=kept_notes(parent, instruction),
            )  # fmt: skip
            on_progress(Progress("storing", paragraph))
            background = self.config.remember_in_background
            episode_ids = [] if background else await self._remember(memory, paragraph)

        async def store() -> StoryNode:
            node = await self._store_node(
                story_id,
                parent.id,
                instruction.strip(),
                paragraph,
                notes,
                prose,
                notes_prompt,
                ranking,
                "",
                episode_ids,
            )
            if background:
                self._pending[node.id] = asyncio.create_task(
                    self._remember_node(story_id, node.id, memory, paragraph)
                )
            return node

        # Outside the time limit, and whole once begun: a step that raises StepFailed stored
        # nothing, and one stopped during these few writes stops once they are done.
        return await _uninterrupted(store())

    async def _store_node(
        self,
        story_id: int,
        parent_id: int | None,
        instruction: str,
        paragraph: str,
        notes: StepNotes,
        prose: Prompt,
        notes_prompt: Prompt,
        ranking: dict[str, Any] | None,
        default_reason: str,
        episode_ids: Sequence[int] = (),
    ) -> StoryNode:
        metadata: dict[str, Any] = {}
        if ranking:
            metadata["rerank"] = ranking
        if notes.bible:
            metadata["bible_suggestions"] = [item.model_dump() for item in notes.bible]
        record = prose.record()
        record["notes"] = notes_prompt.record()
        return await self._stories.add_node(
            story_id,
            parent_id,
            NewStoryNode(
                instruction=instruction,
                paragraph=paragraph,
                short_term_memory=notes.short_term_memory.strip(),
                memory_reason=notes.reason.strip() or default_reason,
                plans=[p.strip()[:_PLAN_CHARS] for p in notes.plans],
                episode_ids=episode_ids,
                prompt=record,
                metadata=metadata,
            ),
        )

    async def regenerate(
        self, story_id: int, node_id: int, on_progress: OnProgress = _quiet
    ) -> StoryNode:
        """Another take on a step: a sibling of ``node_id`` with the same instruction."""
        node = await self._stories.node(story_id, node_id)
        if node.parent_id is None:
            raise InvalidRecord("the opening cannot be regenerated; start a new story instead")
        story = await self._stories.get(story_id)
        parent, instruction = node.parent_id, node.instruction
        if story.mode == "interactive":
            return await self.step(
                story_id, parent_id=parent, action=instruction, on_progress=on_progress
            )
        return await self.step(
            story_id, parent_id=parent, plan=instruction, on_progress=on_progress
        )

    async def edit_paragraph(self, story_id: int, node_id: int, paragraph: str) -> StoryNode:
        """The writer's own text for a stored paragraph: the node keeps every earlier version
        (``metadata["versions"]``), and its long-term memory is replaced by the new text's
        episodes (re-embedded), so recall finds what the story now says."""
        if not paragraph.strip():
            raise InvalidRecord("a paragraph cannot be empty; write some text or undo the step")
        story = await self._stories.get(story_id)
        node = await self._stories.node(story_id, node_id)
        if paragraph.strip() == node.paragraph:
            return node
        memory = self.memory_for(story.namespace)
        await self._wait_for(node_id)
        node = await self._stories.node(story_id, node_id)
        versions = [*node.metadata.get("versions", []), {
            "paragraph": node.paragraph, "replaced_at": time.time()
        }]  # fmt: skip
        episode_ids = await self._remember(memory, paragraph.strip())
        edited = await self._stories.update_node(
            story_id,
            node_id,
            paragraph=paragraph.strip(),
            episode_ids=episode_ids,
            metadata={**node.metadata, "versions": versions},
        )
        if node.episode_ids:
            await memory.forget(list(node.episode_ids))
        return edited

    # -- the parts of a step ----------------------------------------------------------------

    def _limit(self) -> AbstractAsyncContextManager[None]:
        return _deadline(self.config.step_timeout_s)

    def _words(self) -> int:
        return max(20, int(self.config.paragraph_tokens * 0.6))

    async def _paragraph(
        self, prose: Prompt, prefix: str, on_progress: OnProgress
    ) -> tuple[str, dict[str, Any] | None]:
        """The paragraph, streamed: up to ``attempts`` tries, each shown; with several
        candidates, the reranker's choice among valid drafts (the choice is reported)."""
        notice = ""
        for attempt in range(1, self.config.attempts + 1):
            on_progress(Progress("paragraph", "", attempt, notice))
            drafts = [self._draft(prose, partial(_shown, on_progress, attempt, notice))]
            drafts += [self._draft(prose, None) for _ in range(self.config.candidates - 1)]
            results = await asyncio.gather(*drafts)
            valid = [(text, problem) for text, problem in results if problem is None]
            if valid:
                texts = [text for text, _ in valid]
                if len(texts) == 1 or self.reranker is None:
                    return texts[0], None
                scores = await asyncio.to_thread(self.reranker.score, prefix, texts)
                best = max(range(len(scores)), key=lambda i: (scores[i], -i))
                ranking = {
                    "scorer": self.reranker.name,
                    "scores": [float(x) for x in scores],
                    "chosen": best,
                }
                chosen = f"The reranker kept draft {best + 1} of {len(texts)}."
                on_progress(Progress("paragraph", texts[best], attempt, chosen))
                return texts[best], ranking
            problem = results[0][1] or "the draft was unusable"
            notice = f"Try {attempt} was discarded: {problem}."
            log.info("paragraph try %d discarded: %s", attempt, problem)
        raise StepFailed(
            f"The model could not write a usable paragraph ({problem}). {NOTHING_STORED}"
        )

    async def _draft(
        self, prose: Prompt, shown: Callable[[str], None] | None
    ) -> tuple[str, str | None]:
        """One draft of the paragraph and why it is unusable (None when it is fine). A draft
        that falls into a repetition loop is stopped early."""
        prose, max_tokens = self._model.fit(prose, self.config.paragraph_tokens)
        params = self.config.sampling(max_tokens)
        text = ""
        async for piece in self._model.stream(prose, params):
            text += piece
            cleaned = clean_paragraph(text)
            if shown is not None:
                shown(cleaned)
            count = len(words(cleaned))
            looping = count >= _DEGENERATE_AFTER_WORDS and count % 8 == 0
            if looping and (problem := prose_problem(cleaned, min_words=0)) is not None:
                return cleaned, problem
        cleaned = clean_paragraph(text)
        problem = prose_problem(
            cleaned, min_words=_MIN_PARAGRAPH_WORDS, instructions=INSTRUCTION_TEXTS
        )
        return cleaned, problem

    # -- the prompt -------------------------------------------------------------------------

    def _context(self, story: Story, memory: EpisodicMemory) -> str:
        outline = clip(story.outline, self.config.outline_tokens, memory.count_tokens)
        return f"Title: {story.title}\nGenre: {story.genre}\nOutline: {outline}"

    async def prompt(
        self, story: Story, parent: StoryNode, instruction: str, memory: EpisodicMemory
    ) -> Prompt:
        """The paragraph's prompt, every part within its budget (so bounded in story length)."""
        config, count = self.config, memory.count_tokens
        # The ancestors' events: the parent's paragraph is in the prompt already.
        timeline = await self._timeline(story.id, parent.parent_id, memory)
        instruction = clip(instruction.strip(), config.instruction_tokens, count)
        last = tail(parent.paragraph, config.last_paragraph_tokens, count)
        query = clip(f"{instruction}\n{last[-600:]}", config.recall_tokens // 2, count)
        recalled = (
            await memory.search(query, budget_tokens=config.recall_tokens, within=timeline)
            if timeline and query.strip()
            else []
        )
        entries = await self._stories.entries(story.id)
        bible = pick_entries(entries, f"{instruction}\n{last}", config.bible_tokens, count)
        parts = {
            "story": self._context(story, memory),
            "short-term memory": clip(parent.short_term_memory, config.short_term_tokens, count),
            "story bible": "\n".join(f"- {e.name} ({e.kind}): {e.text}" for e in bible),
            "recalled events": "\n---\n".join(r.text.strip() for r in recalled),
            "last paragraph": last,
            "instruction": instruction,
        }
        ask = "The reader's action" if story.mode == "interactive" else "What happens next"
        context = "\n\n".join(
            [
                parts["story"],
                f"What the reader must keep in mind:\n{parts['short-term memory']}",
                *([f"Story bible:\n{parts['story bible']}"] if bible else []),
                *([f"Earlier events:\n{parts['recalled events']}"] if recalled else []),
            ]
        )
        system = INTERACTIVE if story.mode == "interactive" else NOVEL
        return self._prose_prompt(
            system,
            context,
            last,
            f"{ask}: {instruction}\n\n{PROSE_ASK.format(words=self._words())}",
            {name: count(text) for name, text in parts.items()},
            count,
        )

    @staticmethod
    def _prose_prompt(
        system: str,
        context: str,
        last: str,
        ask: str,
        sizes: dict[str, int],
        count: Callable[[str], int] = lambda text: len(text.split()),
    ) -> Prompt:
        """Messages for the prose call: the context, the story's end, then what to write."""
        ending = f"The story so far ends:\n{last}\n\n" if last else ""
        body = f"{context}\n\n{ending}{ask}"
        sizes = dict(sizes)
        sizes["instructions"] = max(0, count(system) + count(body) - sum(sizes.values()))
        continuation = f"{context}\n\n{ask}\n\n{last}\n\n" if last else f"{context}\n\n{ask}\n\n"
        return Prompt(
            [ChatMessage("system", system), ChatMessage("user", body)], sizes, continuation
        )

    # -- long-term memory ---------------------------------------------------------------------

    async def settle(self) -> None:
        """Wait for the paragraphs still being ingested in the background. Call it before the
        event loop ends; a paragraph whose ingest was cut short is ingested by the next step
        that recalls past it, so nothing is lost either way."""
        while self._pending:
            node_id = next(iter(self._pending))
            await self._wait_for(node_id)

    async def _wait_for(self, node_id: int) -> bool:
        """Wait for a node's background ingest, if any; whether it stored the paragraph.

        A task of another event loop (a caller that ran each step in its own ``asyncio.run``)
        was cancelled when that loop closed, so it counts as not stored."""
        task = self._pending.pop(node_id, None)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            return False
        await asyncio.wait([task])
        # An exception was logged by the task; the next step retries the paragraph.
        return not task.cancelled() and task.exception() is None

    async def _timeline(
        self, story_id: int, node_id: int | None, memory: EpisodicMemory
    ) -> list[int]:
        """Episode ids from the root to ``node_id``, first ingesting any paragraph on the way
        that is not in long-term memory yet (pending in the background, failed, or cut off by
        a crash)."""
        if node_id is None:
            return []
        timeline = await self._stories.recall_timeline(story_id, node_id)
        if not timeline.unremembered:
            return timeline.episode_ids
        for missing in timeline.unremembered:
            if await self._wait_for(missing):
                continue
            # Retried here: errors reach the caller.
            node = await self._stories.node(story_id, missing)
            await self._remember_node(story_id, missing, memory, node.paragraph)
        return await self._stories.timeline(story_id, node_id)

    async def _remember_node(
        self, story_id: int, node_id: int, memory: EpisodicMemory, paragraph: str
    ) -> list[int]:
        """Ingest a node's paragraph and record its episodes on the node."""
        try:
            episode_ids = await self._remember(memory, paragraph)
            try:
                await self._stories.update_node(story_id, node_id, episode_ids=episode_ids)
            except NotFound:
                # The story was deleted meanwhile: drop what this ingest wrote (it may have
                # re-created the namespace), so no memory of a deleted story survives.
                if await self._exists(story_id):
                    raise  # the node alone is gone: not this ingest's to clean up
                await asyncio.to_thread(memory.store.delete_namespace, memory.namespace)
                return []
        except Exception:
            # Runs as a background task with no caller to raise to: log it; the next step that
            # recalls past this node ingests the paragraph again and raises to its caller.
            log.exception("could not store the paragraph of node %s in long-term memory", node_id)
            raise
        return episode_ids

    async def _exists(self, story_id: int) -> bool:
        try:
            await self._stories.get(story_id)
        except NotFound:
            return False
        return True

    async def _remember(self, memory: EpisodicMemory, paragraph: str) -> list[int]:
        """Ingest one paragraph into long-term memory; its episode ids, in order."""
        if not paragraph.strip():
            return []
        done = await memory.ingest(paragraph, name="paragraph")
        return [e.id for e in done.episodes]


async def _uninterrupted(work: Awaitable[T]) -> T:
    """``work`` (a step's last writes) run to its end even when the caller is cancelled
    meanwhile, then the cancellation goes on: the writes run in worker threads and cannot stop
    halfway, so none may leave a story without its opening or a node without its ingest."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            try:
                await asyncio.wait([task])
            except asyncio.CancelledError:
                continue  # cancelled again: the writes still finish first
        raise


@asynccontextmanager
async def _deadline(seconds: float) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as err:
        raise StepFailed(
            f"The model took longer than {seconds:.0f} s, so the step was stopped. {NOTHING_STORED}"
        ) from err


__all__: Sequence[str] = ["Progress", "RecurrentWriter", "StepFailed", "WriterConfig"]
