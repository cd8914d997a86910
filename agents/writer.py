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
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal, TypeVar, cast

from agents.errors import AgentConfigError, StepFailed
from agents.quality import plans_problem, prose_problem, words
from agents.replies import BibleItem, ImportFrame, OpeningNotes, StepNotes, StoryFrame
from agents.story_prompt import (
    FRAME,
    FRAME_ASK,
    INSTRUCTION_TEXTS,
    INTERACTIVE,
    NOTES,
    NOTES_ASK,
    NOVEL,
    OPENING_ASK,
    PLANS,
    PROSE_ASK,
    Prompt,
    pick_entries,
    tail,
)
from memory.episodic import EpisodicMemory
from memory.errors import InvalidRecord, NotFound
from memory.records import NewStoryNode, Story, StoryNode
from memory.retrieval import clip
from memory.stories import StoryStore, ThreadedStoryStore
from serving.errors import RequestRejected, StructuredOutputError
from serving.llm import LLM, ChatMessage, SamplingParams
from serving.rerank.reranker import Reranker

log = logging.getLogger(__name__)

T = TypeVar("T")

Mode = Literal["novel", "interactive"]
PromptStyle = Literal["auto", "chat", "completion"]
Phase = Literal["frame", "paragraph", "notes", "storing"]

PREMISE_CHARS = 2000
"""Longest premise a story may start from (characters); longer is refused before any model."""
GENRE_CHARS = 200
"""Longest genre (characters), the width of the stories table's column."""


@dataclass(frozen=True, slots=True)
class WriterConfig:
    """Token budgets of each prompt part, sampling and limits; ``app`` builds one and passes it.

    The sampling defaults were chosen by ``benchmarks/writer_quality.py`` (see the README)."""

    short_term_tokens: int = 300
    """Most tokens of short-term memory shown (and asked for)."""
    recall_tokens: int = 600
    """Most tokens of recalled long-term memory per step."""
    last_paragraph_tokens: int = 400
    """Most tokens of the last paragraph shown (its end, if longer)."""
    bible_tokens: int = 300
    """Most tokens of story-bible entries per step."""
    outline_tokens: int = 300
    """Most tokens of the outline shown."""
    instruction_tokens: int = 200
    """Most tokens of the plan or the reader's action."""
    paragraph_tokens: int = 220
    """Most tokens of a paragraph (its generation stops there)."""
    notes_tokens: int = 480
    """Most tokens of the structured notes call (memory, reason, three plans, bible)."""
    temperature: float = 0.8
    """Sampling temperature of generation."""
    top_p: float = 0.95
    """Nucleus sampling mass of generation."""
    min_p: float = 0.05
    """Drop tokens below this share of the likeliest token's probability (vLLM's min_p)."""
    repetition_penalty: float = 1.15
    """vLLM's repetition penalty over prompt and output tokens (1 = off)."""
    presence_penalty: float = 0.0
    """OpenAI's presence penalty (0 = off)."""
    frequency_penalty: float = 0.0
    """OpenAI's frequency penalty (0 = off)."""
    candidates: int = 1
    """Paragraphs drafted per step; with a reranker the best-scored one is kept (RankGen's
    over-generate-and-rerank), without one the first."""
    attempts: int = 2
    """Tries of the paragraph before the step fails; each try is shown."""
    notes_attempts: int = 3
    """Tries of the notes (memory, plans) before the step fails; nothing of a failed try is
    shown or stored."""
    notes_temperature: float = 0.5
    """Sampling temperature of the notes: a summary and plans want less randomness than prose."""
    notes_repetition_penalty: float = 1.05
    """A mild repetition penalty for the notes (they must repeat the story's names)."""
    step_timeout_s: float = 180.0
    """A step that has not finished after this many seconds fails (nothing is stored)."""
    step_target_s: float = 60.0
    """A step (or opening) aims to end within this many seconds: a notes try is stopped when
    the target passes (the first try always gets at least 15 s), and another starts only if,
    judged by the last, it would end in time. When no try of the notes is usable, the step
    keeps its paragraph (already shown) with the previous memory and the plans not taken; an
    opening keeps its paragraph with the premise as its outline. The memory's reason says
    so."""
    context_tokens: int = 0
    """The model's context (prompt + reply); a prompt that would not fit loses its start (the
    story's end and the request are kept) and a reply is capped at half of it. 0 = unknown."""
    prompt_style: PromptStyle = "auto"
    """``chat`` (instruction-tuned models), ``completion`` (base models: the paragraph continues
    the story's text, notes are written field by field), or ``auto``: chat, and completion once
    the backend says the model has no chat template."""
    remember_in_background: bool = True
    """Ingest each new paragraph into long-term memory while the next step is being written
    (its recall never needs it: the last paragraph is in the prompt verbatim)."""

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= 5 or not 1 <= self.notes_attempts <= 5:
            raise AgentConfigError(
                f"attempts={self.attempts} and notes_attempts={self.notes_attempts} must be in "
                "[1, 5]"
            )
        if self.step_timeout_s <= 0 or self.step_target_s <= 0:
            raise AgentConfigError(
                f"step_timeout_s={self.step_timeout_s} and step_target_s={self.step_target_s} "
                "must be positive"
            )
        if self.paragraph_tokens < 16:
            raise AgentConfigError(f"paragraph_tokens={self.paragraph_tokens} must be at least 16")

    def sampling(self, max_tokens: int, *, notes: bool = False) -> SamplingParams:
        """How the writer samples prose, or ``notes``: cooler, and with only a mild repetition
        penalty, since notes must repeat the story's names (and vLLM's repetition penalty counts
        the prompt's tokens too)."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.notes_temperature if notes else self.temperature,
            top_p=self.top_p,
            min_p=self.min_p,
            repetition_penalty=self.notes_repetition_penalty if notes else self.repetition_penalty,
            presence_penalty=0.0 if notes else self.presence_penalty,
            frequency_penalty=0.0 if notes else self.frequency_penalty,
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a running step is: what the page shows while it runs."""

    phase: Phase
    paragraph: str = ""
    """The paragraph so far, exactly as it will be stored if the step succeeds."""
    attempt: int = 1
    notice: str = ""
    """Why an earlier try was discarded (shown with the new one), or what was chosen."""


OnProgress = Callable[[Progress], None]

_PLAN_CHARS = 300
_IMPORT_HEAD_TOKENS = 600
_IMPORT_TAIL_TOKENS = 1500
_MIN_PARAGRAPH_WORDS = 12
_MIN_MEMORY_WORDS = 5
_CONTEXT_MARGIN = 48
"""Tokens kept free of a model's context for its chat template and counting differences."""
_NOTES_LEAST_S = 15.0
"""The first notes try runs at least this long, however long the paragraph took."""
_STORING_S = 2.0
"""Seconds of a step's target kept for what follows the notes (storing the node)."""
_DEGENERATE_AFTER_WORDS = 48
"""A paragraph still streaming is checked for a repetition loop once it has this many words."""


def _kept(parent: StoryNode, instruction: str) -> StepNotes:
    """The notes a step keeps when the model gives none: the parent's memory and the plans it
    offered but the writer did not take (maybe none: the writer then writes their own, or the
    next step continues the story)."""
    taken = " ".join(instruction.split()).casefold()
    plans = [p for p in parent.plans if " ".join(p.split()).casefold() != taken]
    return StepNotes.model_construct(  # stored as they were written: no re-validation
        short_term_memory=parent.short_term_memory, reason="", plans=plans, bible=[]
    )


def _untitled(premise: str) -> OpeningNotes:
    """The notes an opening keeps when the model gives none: the premise's first words as the
    title, the premise as the outline, and no memory or plans yet (the writer writes their own,
    or the next step continues the story)."""
    first = premise.split()
    title = " ".join(first[:8]).rstrip(".,;:!?") + ("…" if len(first) > 8 else "")
    return OpeningNotes.model_construct(  # the writer's own words: no re-validation
        short_term_memory="", reason="", plans=[], bible=[], title=title[:80],
        outline=" ".join(first)[:400],
    )  # fmt: skip


def _quiet(progress: Progress) -> None:
    """The default progress listener: nobody is watching."""


def _shown(on_progress: OnProgress, attempt: int, notice: str, text: str) -> None:
    on_progress(Progress("paragraph", text, attempt, notice))


class StoryTree:
    """A story tree's moves that need no model: undo, switch branch, edit memory, read."""

    def __init__(self, stories: StoryStore) -> None:
        self.stories = stories

    def undo(self, story_id: int) -> StoryNode:
        """Move the head back to its parent (the undone step stays, as a branch)."""
        story = self.stories.get(story_id)
        head = self.stories.node(story_id, self._head(story))
        if head.parent_id is None:
            raise InvalidRecord("nothing to undo: the story is at its opening")
        self.stories.set_head(story_id, head.parent_id)
        return self.stories.node(story_id, head.parent_id)

    def switch(self, story_id: int, node_id: int) -> StoryNode:
        """Continue from any node (another branch): the next step sees that node's memory."""
        self.stories.set_head(story_id, node_id)
        return self.stories.node(story_id, node_id)

    def edit_memory(self, story_id: int, node_id: int, short_term_memory: str) -> StoryNode:
        """The writer's own short-term memory for a node (the next step reads it)."""
        if not short_term_memory.strip():
            raise InvalidRecord("short-term memory cannot be empty; write a sentence or two")
        return self.stories.update_node(story_id, node_id, short_term_memory=short_term_memory)

    def text(self, story_id: int, node_id: int | None = None) -> str:
        """The story from its opening to ``node_id`` (default: the head)."""
        return story_text(self.stories, story_id, node_id)

    @staticmethod
    def _head(story: Story) -> int:
        if story.head_node_id is None:
            raise InvalidRecord(f"story {story.id} has no opening yet; start it first")
        return story.head_node_id


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
        self.llm = llm
        self.config = config
        self.reranker = reranker
        self.style: Literal["chat", "completion"] = (
            "completion" if config.prompt_style == "completion" else "chat"
        )
        self._count: Callable[[str], int] = lambda text: len(text.split())
        """The story memory's token counter (set by each start, adopt and step)."""
        self._pending: dict[int, asyncio.Task[list[int]]] = {}
        """Background ingests of new paragraphs, by node id (see :meth:`settle`)."""

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
        count = self._count = memory.count_tokens
        async with self._limit():
            premise_text = clip(premise.strip(), 400, count)
            setting = f"Genre: {genre.strip()}\nPremise: {premise_text}"
            system = INTERACTIVE if mode == "interactive" else NOVEL
            ask = OPENING_ASK.format(words=self._words())
            prose = self._prose_prompt(system, setting, "", ask, {"story": count(setting)})
            # The opening streams first; its title and outline come with its notes (one call).
            paragraph, ranking = await self._paragraph(prose, "", on_progress)
            notes, notes_prompt = await self._notes(
                setting, premise_text, paragraph, mode, on_progress, opening=True,
                target=began + self.config.step_target_s, kept=_untitled(premise),
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
        count = self._count = memory.count_tokens
        head = clip(manuscript.strip(), _IMPORT_HEAD_TOKENS, count)
        ending = tail(manuscript.strip(), _IMPORT_TAIL_TOKENS, count)
        async with self._limit():
            setting = (
                f"Genre: {genre.strip() or 'unknown'}\n\nThe manuscript begins:\n{head}\n\n"
                f"It currently ends:\n{ending}"
            )
            frame = await self._frame(setting, ImportFrame, on_progress)
            context = f"Title: {title or frame.title}\nOutline: {frame.outline}"
            notes, notes_prompt = await self._notes(context, "", ending, mode, on_progress)
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
        self._count = memory.count_tokens
        began = time.monotonic()
        async with self._limit():
            prose = await self.prompt(story, parent, instruction, memory)
            paragraph, ranking = await self._paragraph(prose, parent.paragraph, on_progress)
            context = self._context(story, memory)
            notes, notes_prompt = await self._notes(
                context, parent.short_term_memory, paragraph, story.mode.value, on_progress,
                target=began + self.config.step_target_s, kept=_kept(parent, instruction),
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

    async def _frame(self, setting: str, schema: type[StoryFrame], on_progress: OnProgress) -> Any:
        """Title and outline (and, for an import, bible entries), validated like all content."""
        on_progress(Progress("frame"))
        ask = FRAME_ASK + (
            " Add up to twelve story-bible entries (main characters, places, facts)."
            if schema is ImportFrame
            else ""
        )
        frame: StoryFrame | None = None
        if self.style == "chat":
            messages = [ChatMessage("system", FRAME), ChatMessage("user", f"{setting}\n\n{ask}")]
            budget = 300 + (720 if schema is ImportFrame else 0)
            try:
                frame = await self._structured(messages, schema, budget)
            except StructuredOutputError as err:
                log.info("frame failed: %s", err)
                raise StepFailed(
                    "The model could not plan this story (it did not answer in the expected "
                    f"format). {_RETRY}"
                ) from err
        if frame is None:  # a base model: each field a short continuation
            title = await self._field(f"{setting}\n\nTitle:", 20)
            outline = await self._field(f"{setting}\n\nTitle: {title}\nOutline:", 120)
            frame = schema(title=title[:80] or "Untitled", outline=outline[:800] or "-")
        if (problem := frame_problem(frame)) is not None:
            raise StepFailed(f"The model could not plan this story ({problem}). {_RETRY}")
        return frame

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
        raise StepFailed(f"The model could not write a usable paragraph ({problem}). {_RETRY}")

    async def _draft(
        self, prose: Prompt, shown: Callable[[str], None] | None
    ) -> tuple[str, str | None]:
        """One draft of the paragraph and why it is unusable (None when it is fine). A draft
        that falls into a repetition loop is stopped early."""
        prose, max_tokens = self._fit(prose, self.config.paragraph_tokens)
        params = self.config.sampling(max_tokens)
        text = ""
        async for piece in self._stream(prose, params):
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

    async def _stream(self, prose: Prompt, params: SamplingParams) -> AsyncIterator[str]:
        """The prose call's text as it arrives, by the writer's prompt style (``auto`` moves to
        completion once the backend refuses chat for want of a chat template)."""
        if self.style == "chat":
            try:
                async for delta in self.llm.stream_chat(prose.messages, params):
                    if delta.index == 0:
                        yield delta.text
                return
            except RequestRejected as err:
                if self.config.prompt_style != "auto" or "chat template" not in str(err):
                    raise
                log.info("%s has no chat template: writing by continuation", self.llm.model)
                self.style = "completion"
        async for delta in self.llm.stream_complete(as_continuation(prose), params):
            if delta.index == 0:
                yield delta.text

    async def _notes(
        self,
        context: str,
        memory_before: str,
        paragraph: str,
        mode: str,
        on_progress: OnProgress,
        *,
        opening: bool = False,
        target: float | None = None,
        kept: StepNotes | None = None,
    ) -> tuple[StepNotes, Prompt]:
        """The memory update, three plans (or actions) and bible suggestions after
        ``paragraph`` (and, after an opening, the story's title and outline): up to
        ``attempts`` fresh tries, each validated as content; a try after the first only if it
        should end before ``target`` (a monotonic time). When none is usable: ``kept`` (the
        previous notes, with a reason saying why they were kept) if given, else
        :class:`StepFailed`."""
        plans = PLANS["interactive" if mode == "interactive" else "novel"]
        schema = OpeningNotes if opening else StepNotes
        body = (
            f"{context}\n\nWhat the reader had to keep in mind:\n{memory_before or '(nothing yet)'}"
            f"\n\nThe newest paragraph:\n{paragraph}\n\n{NOTES_ASK.format(plans=plans)}"
            + (f" Last, {FRAME_ASK[0].lower()}{FRAME_ASK[1:]}" if opening else "")
        )
        count = self._count
        sizes = {"story": count(context), "short-term memory": count(memory_before),
                 "paragraph": count(paragraph)}  # fmt: skip
        sizes["instructions"] = max(0, count(NOTES) + count(body) - sum(sizes.values()))
        prompt = Prompt([ChatMessage("system", NOTES), ChatMessage("user", body)], sizes)
        problem = "the notes were unusable"
        last_s = 0.0
        target = None if target is None else target - _STORING_S
        for attempt in range(1, self.config.notes_attempts + 1):
            if attempt > 1 and target is not None and time.monotonic() + last_s > target:
                log.info("no time for notes try %d within the step's target", attempt)
                break
            on_progress(Progress("notes", paragraph, attempt))
            started = time.monotonic()
            limit = None if target is None else max(target - started, _NOTES_LEAST_S)
            try:
                notes = None
                async with asyncio.timeout(limit):
                    if self.style == "chat":
                        budget = self.config.notes_tokens + (200 if opening else 0)
                        notes = await self._structured(prompt.messages, schema, budget)
                    if notes is None:
                        notes = await self._notes_by_fields(context, paragraph, opening)
            except TimeoutError:
                problem = f"the notes took past the step's {self.config.step_target_s:.0f} s"
                log.info("notes try %d stopped: %s", attempt, problem)
                break
            except StructuredOutputError as err:
                problem = "the model did not answer in the notes' format"
                log.info("notes try %d failed: %s", attempt, err)
                last_s = time.monotonic() - started
                continue
            last_s = time.monotonic() - started
            notes = clean_notes(notes)
            found = notes_problem(notes)
            if found is None:
                return notes, prompt
            problem = found
            log.info("notes try %d discarded: %s", attempt, problem)
        if kept is None:
            raise StepFailed(
                f"The model could not update the memory and plans ({problem}). {_RETRY}"
            )
        kept_plans = "the plans not taken were kept" if kept.plans else "no plan was left over"
        reason = (  # stored: says what happened, quotes nothing of the discarded notes
            "Not updated: the model could not write notes after the opening; the premise is "
            "the outline. Write the memory and a plan yourself, or continue the story."
            if opening
            else "Not updated: the model could not write new notes after this paragraph; the "
            f"previous memory was kept and {kept_plans}. Edit them, or Regenerate."
        )
        on_progress(Progress("notes", paragraph, attempt, f"{reason} (Last try: {problem}.)"))
        return kept.model_copy(update={"reason": reason}), prompt

    async def _notes_by_fields(self, context: str, paragraph: str, opening: bool) -> StepNotes:
        """Notes for a base model (no chat template): each field a short continuation."""
        lead = f"{context}\n\nStory so far:\n{tail(paragraph, 300, lambda t: len(t.split()))}\n\n"
        memory = await self._field(f"{lead}Summary of the story so far:", 90)
        plans = [
            await self._field(f"{lead}Summary: {memory}\nWhat happens next, idea {i}:", 40)
            for i in (1, 2, 3)
        ]
        fields: dict[str, Any] = {
            "short_term_memory": memory or "-",
            "reason": "rewritten after the newest paragraph",
            "plans": [p or "-" for p in plans],
        }
        if not opening:
            return StepNotes(**fields)
        title = await self._field(f"{lead}Title of the story:", 20)
        outline = await self._field(f"{lead}Title: {title}\nOutline of the whole story:", 120)
        return OpeningNotes(**fields, title=title[:80] or "-", outline=outline[:800] or "-")

    async def _field(self, prompt: str, max_tokens: int) -> str:
        budget, max_tokens = self._room(max_tokens)
        prompt = tail(prompt, budget, self._count)
        params = replace(self.config.sampling(max_tokens, notes=True), stop=("\n",))
        completion = await self.llm.complete(prompt, params)
        return completion.text.strip()

    async def _structured(
        self, messages: Sequence[ChatMessage], schema: type[Any], max_tokens: int
    ) -> Any:
        """A validated reply, or None once the backend says the model has no chat template
        (``auto`` style: the writer moves to completion, and the caller asks field by field)."""
        fitted, max_tokens = self._fit(Prompt(list(messages), {}), max_tokens)
        messages = fitted.messages
        try:
            params = self.config.sampling(max_tokens, notes=True)
            # No repair requests: a retry is a fresh try (see :meth:`_notes`), so no repair text
            # can be echoed into content, and a reply cut at max_tokens costs one call, not three.
            return await self.llm.generate_json(messages, schema, params, repairs=0)
        except RequestRejected as err:
            if self.config.prompt_style != "auto" or "chat template" not in str(err):
                raise
            log.info("%s has no chat template: writing by continuation", self.llm.model)
            self.style = "completion"
            return None

    def _room(self, max_tokens: int) -> tuple[int, int]:
        """(tokens a prompt may take, tokens the reply may take) within the model's context."""
        if not self.config.context_tokens:
            return 1 << 30, max_tokens
        room = max(64, self.config.context_tokens - _CONTEXT_MARGIN)
        max_tokens = max(8, min(max_tokens, room // 2))
        return room - max_tokens, max_tokens

    def _fit(self, prompt: Prompt, max_tokens: int) -> tuple[Prompt, int]:
        """``prompt`` within the model's context: the user message (and the continuation) lose
        their start when too long (the story's end and the request are at their end)."""
        budget, max_tokens = self._room(max_tokens)
        count = self._count
        *rest, user = prompt.messages
        fixed = sum(count(m.content) for m in rest)
        if fixed + count(user.content) > budget:
            body, _, ask = user.content.rpartition("\n\n")  # the request stays whole
            least = fixed + count(ask) + 16
            if least > budget:  # the reply gives way, down to a few tokens
                room = budget + max_tokens
                max_tokens = room - least
                if max_tokens < 16:
                    raise StepFailed(
                        f"The model's context ({self.config.context_tokens} tokens) is too small "
                        "for the writer's prompts; use a model with at least 1,024 tokens of "
                        "context."
                    )
                budget = least
            user = ChatMessage(
                user.role, f"{tail(body, budget - fixed - count(ask), count)}\n\n{ask}"
            )
        continuation = prompt.continuation
        if continuation and count(continuation) > budget:
            continuation = tail(continuation, budget, count)
        return Prompt([*rest, user], prompt.parts, continuation), max_tokens

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


_RETRY = "Nothing was stored; press Regenerate to try again."

_LABEL = re.compile(
    r"^\s*(?:#+\s*|\*\*)?(?:(?:the\s+)?(?:next\s+|opening\s+)?paragraph(?:\s*\d+)?|plan\s*\d*|"
    r"option\s*\d*|action\s*\d*|short[- ]term memory|memory|summary|title|outline|"
    r"here(?:'s| is)[^:\n]{0,60})\s*:\**\s*",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")


def clean_paragraph(text: str) -> str:
    """The paragraph as shown and stored: surrounding space and a leading label or preamble
    ("Here is the next paragraph:", "Paragraph 3:") removed. Applied to the text so far on
    every streamed piece, so what is shown is always what would be stored."""
    return _LABEL.sub("", text.lstrip(), count=1).strip()


def _clean_line(text: str) -> str:
    return _LABEL.sub("", _BULLET.sub("", text.strip(), count=1), count=1).strip().strip('"')


def clean_notes(notes: StepNotes) -> StepNotes:
    """Notes without the labels and numbering a model puts around them. Plans that are not
    real, distinct sentences are dropped (a weak model's third plan is often empty; the writer
    can always write their own), and so are bible suggestions that are not real entries."""
    plans: list[str] = []
    for plan in (_clean_line(p) for p in notes.plans):
        if plans_problem([*plans, plan], instructions=INSTRUCTION_TEXTS) is None:
            plans.append(plan)
    bible = [
        BibleItem(kind=b.kind, name=_clean_line(b.name), text=b.text)
        for b in notes.bible
        if prose_problem(b.text, min_words=2, instructions=INSTRUCTION_TEXTS) is None
        and prose_problem(b.name, min_words=1, instructions=INSTRUCTION_TEXTS) is None
    ]
    return type(notes).model_construct(
        **{
            **dict(notes),
            "short_term_memory": _clean_line(notes.short_term_memory),
            "reason": "" if echoes_instructions(notes.reason) else _clean_line(notes.reason),
            "plans": plans,
            "bible": bible,
        }
    )


def notes_problem(notes: StepNotes) -> str | None:
    """Why notes already through :func:`clean_notes` cannot be stored, or None."""
    memory = prose_problem(notes.short_term_memory, min_words=_MIN_MEMORY_WORDS,
                           instructions=INSTRUCTION_TEXTS, what="short-term memory")  # fmt: skip
    if memory is not None:
        return memory
    if not notes.plans:
        return "none of the plans was usable"
    if isinstance(notes, OpeningNotes):
        return frame_problem(notes)
    return None


def frame_problem(frame: StoryFrame | OpeningNotes) -> str | None:
    """Why a title and outline cannot be stored, or None."""
    if not words(frame.title) or echoes_instructions(frame.title):
        return "the title came back empty" if not words(frame.title) else "the title was unusable"
    return prose_problem(frame.outline, min_words=4, instructions=INSTRUCTION_TEXTS,
                         what="outline")  # fmt: skip


def echoes_instructions(text: str) -> bool:
    return prose_problem(text, min_words=0, instructions=INSTRUCTION_TEXTS) is not None


def check_opening(genre: str, premise: str, mode: str) -> None:
    """Refuse a story that cannot start, before any model loads: the limits are named."""
    if not isinstance(genre, str) or not isinstance(premise, str):
        raise InvalidRecord("a story needs a genre and a premise, both text")
    if not genre.strip() or not premise.strip():
        raise InvalidRecord("a story needs a genre and a premise; give both")
    if len(genre) > GENRE_CHARS:
        raise InvalidRecord(f"the genre has {len(genre)} characters; the most is {GENRE_CHARS}")
    if len(premise) > PREMISE_CHARS:
        raise InvalidRecord(
            f"the premise has {len(premise)} characters; the most is {PREMISE_CHARS}: "
            "shorten it, or import the text as a manuscript instead"
        )
    if not words(premise):
        raise InvalidRecord("the premise holds no words; describe the story in a sentence or two")
    if mode not in ("novel", "interactive"):
        raise InvalidRecord(f"mode {mode!r} is not 'novel' or 'interactive'")


def as_continuation(prompt: Prompt) -> str:
    """The prose prompt as raw text for a base model (no chat template): the context, the
    instruction, then the story's end, so the model's continuation is the next paragraph."""
    return prompt.continuation or "\n\n".join(m.content for m in prompt.messages) + "\n\n"


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
            f"The model took longer than {seconds:.0f} s, so the step was stopped. {_RETRY}"
        ) from err


def story_text(stories: StoryStore, story_id: int, node_id: int | None = None) -> str:
    """A story's paragraphs from its opening to ``node_id`` (default: the head); "" if none."""
    target = node_id or stories.get(story_id).head_node_id
    if target is None:
        return ""
    return "\n\n".join(node.paragraph for node in stories.path(story_id, target))


__all__: Sequence[str] = [
    "Progress",
    "RecurrentWriter",
    "StepFailed",
    "StepNotes",
    "StoryTree",
    "WriterConfig",
    "story_text",
]
