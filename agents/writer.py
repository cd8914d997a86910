"""RecurrentWriter: long fiction paragraph by paragraph (RecurrentGPT, Zhou et al. 2023).

RecurrentGPT replaces an RNN's hidden state with language: each step the model reads a short-term
memory (a running summary it rewrites), passages recalled from long-term memory, the last
paragraph and the chosen plan, and answers with the next paragraph, the updated short-term memory
(with its reason) and three plans for what comes next. Here:

- long-term memory is the story's :class:`~memory.episodic.EpisodicMemory`; each new paragraph is
  ingested on its own (never the whole story again), and recall is limited to the current
  node's ancestors, in their order (``search(within=...)``), so branches never see each other;
- every step is a node of a story tree (:class:`~memory.stories.SqlStoryStore`) keeping its
  short-term memory, plans and exactly what was sent, so undo, branch and regenerate restore
  that node's state;
- every part of the prompt has a token budget, so its size is bounded however long the story;
- the reply is a validated JSON object (guided decoding where the backend has it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agents.replies import ImportReply, StartReply, StepReply
from agents.story_prompt import INTERACTIVE, NOVEL, Prompt, pick_entries, tail
from memory.episodic import EpisodicMemory
from memory.errors import InvalidRecord, NotFound
from memory.records import NewStoryNode, Story, StoryNode
from memory.retrieval import clip
from memory.stories import SqlStoryStore
from serving.llm import LLM, ChatMessage, SamplingParams
from serving.rerank.reranker import Reranker
from serving.structured import streamed_field

log = logging.getLogger(__name__)

Mode = Literal["novel", "interactive"]


@dataclass(frozen=True, slots=True)
class WriterConfig:
    """Token budgets of each prompt part, and sampling; ``app`` builds one and passes it in."""

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
    paragraph_tokens: int = 350
    """Size of a paragraph asked for (tokens); bounds the reply."""
    temperature: float = 0.8
    """Sampling temperature of generation."""
    top_p: float = 0.95
    """Nucleus sampling mass of generation."""
    candidates: int = 1
    """Paragraphs drafted per step; with a reranker the best-scored one is kept (RankGen's
    over-generate-and-rerank), without one the first."""
    remember_in_background: bool = True
    """Ingest each new paragraph into long-term memory while the next step is being written
    (its recall never needs it: the last paragraph is in the prompt verbatim)."""


_PLAN_CHARS = 400
_IMPORT_HEAD_TOKENS = 600
_IMPORT_TAIL_TOKENS = 1500


def _reply_tokens(config: WriterConfig) -> int:
    """Tokens a reply may take: the paragraph, the memory, its reason, three plans and the JSON
    around them. A reply cut short is repaired by ``generate_json`` (bounded retries)."""
    return config.paragraph_tokens + config.short_term_tokens + 3 * 80 + 100 + 120


class StoryTree:
    """A story tree's moves that need no model: undo, switch branch, edit memory, read."""

    def __init__(self, stories: SqlStoryStore) -> None:
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
        stories: SqlStoryStore,
        memory_for: Callable[[str], EpisodicMemory],
        llm: LLM,
        config: WriterConfig = WriterConfig(),
        *,
        reranker: Reranker | None = None,
    ) -> None:
        if not 1 <= config.candidates <= 16:
            raise InvalidRecord(f"candidates={config.candidates} must be in [1, 16]")
        super().__init__(stories)
        self.memory_for = memory_for
        self.llm = llm
        self.config = config
        self.reranker = reranker
        self._pending: dict[int, asyncio.Task[list[int]]] = {}
        """Background ingests of new paragraphs, by node id (see :meth:`settle`)."""

    # -- starting ---------------------------------------------------------------------------

    async def start(
        self, namespace: str, *, genre: str, premise: str, mode: Mode = "novel"
    ) -> tuple[Story, StoryNode]:
        """A new story from a genre and a premise: title, outline, first paragraphs, first
        short-term memory and three plans. ``namespace`` will hold its long-term memory."""
        if not genre.strip() or not premise.strip():
            raise InvalidRecord("a story needs a genre and a premise; give both")
        memory = self.memory_for(namespace)
        count = memory.count_tokens
        person = "second person, the reader is the protagonist" if mode == "interactive" else ""
        user = (
            f"Genre: {genre.strip()}\nPremise: {clip(premise.strip(), 400, count)}\n\n"
            "Start the story. Give a title, an outline of the whole story (a few sentences), "
            f"the first one to three paragraphs{' (' + person + ')' if person else ''}, a "
            "short-term memory summarising what the reader must keep in mind, and three "
            "different plans for the next paragraph."
        )
        system = INTERACTIVE if mode == "interactive" else NOVEL
        messages = [ChatMessage("system", system), ChatMessage("user", user)]
        prompt = Prompt(messages, {"instructions": count(system) + count(user)})
        reply = await self.llm.generate_json(messages, StartReply, self._params())
        memory.store.namespace(namespace)
        story = self.stories.create(
            namespace,
            title=reply.title.strip(),
            genre=genre.strip(),
            premise=premise.strip(),
            outline=reply.outline.strip(),
            mode=mode,
        )
        text = "\n\n".join(p.strip() for p in reply.paragraphs if p.strip())
        episode_ids = await self._remember(memory, text)
        root = self.stories.add_node(
            story.id,
            None,
            NewStoryNode(
                instruction="",
                paragraph=text,
                short_term_memory=clip(
                    reply.short_term_memory, self.config.short_term_tokens, count
                ),
                memory_reason="the story starts",
                plans=[p.strip()[:_PLAN_CHARS] for p in reply.plans],
                episode_ids=episode_ids,
                prompt=prompt.record(),
            ),
        )
        return self.stories.get(story.id), root

    async def adopt(
        self,
        namespace: str,
        manuscript: str,
        *,
        genre: str,
        title: str | None = None,
        mode: Mode = "novel",
    ) -> tuple[Story, StoryNode]:
        """A story that continues an existing manuscript: the whole text goes to long-term
        memory; the model reads its opening and its end (a bounded prompt however long it is)
        and gives an outline, the short-term memory, three plans and the first bible entries."""
        if not manuscript.strip():
            raise InvalidRecord("the manuscript is empty; import a file with some text")
        memory = self.memory_for(namespace)
        count = memory.count_tokens
        head = clip(manuscript.strip(), _IMPORT_HEAD_TOKENS, count)
        ending = tail(manuscript.strip(), _IMPORT_TAIL_TOKENS, count)
        user = (
            f"Genre: {genre.strip() or 'unknown'}\n\nThe manuscript begins:\n{head}\n\n"
            f"It currently ends:\n{ending}\n\nGive its title, an outline of the story so far and "
            "where it seems to go, a short-term memory of what the reader must keep in mind at "
            "its end, three different plans for the next paragraph, and up to twelve story-bible "
            "entries (main characters, places, facts)."
        )
        system = INTERACTIVE if mode == "interactive" else NOVEL
        messages = [ChatMessage("system", system), ChatMessage("user", user)]
        prompt = Prompt(messages, {"instructions": count(system) + count(user)})
        reply = await self.llm.generate_json(messages, ImportReply, self._params())
        memory.store.namespace(namespace)
        done = await memory.ingest(manuscript, name="manuscript")
        story = self.stories.create(
            namespace,
            title=(title or reply.title).strip(),
            genre=genre.strip() or "unknown",
            premise=clip(manuscript.strip(), 200, count),
            outline=reply.outline.strip(),
            mode=mode,
        )
        for item in reply.bible:
            self.stories.upsert_entry(story.id, kind=item.kind, name=item.name, text=item.text)
        root = self.stories.add_node(
            story.id,
            None,
            NewStoryNode(
                instruction="",
                paragraph=manuscript.strip(),
                short_term_memory=clip(
                    reply.short_term_memory, self.config.short_term_tokens, count
                ),
                memory_reason="imported manuscript",
                plans=[p.strip()[:_PLAN_CHARS] for p in reply.plans],
                episode_ids=[e.id for e in done.episodes],
                prompt=prompt.record(),
            ),
        )
        return self.stories.get(story.id), root

    # -- stepping ---------------------------------------------------------------------------

    async def step(
        self,
        story_id: int,
        *,
        plan: str | None = None,
        action: str | None = None,
        parent_id: int | None = None,
        on_paragraph: Callable[[str], None] | None = None,
    ) -> StoryNode:
        """Write the paragraph after ``parent_id`` (default: the head) following ``plan`` (or,
        in interactive mode, the reader's ``action``); the new node becomes the head.

        ``on_paragraph`` is called with the paragraph so far while it is generated (the first
        draft's, when several are drafted). Cancelling the call stores nothing.
        """
        story = self.stories.get(story_id)
        parent = self.stories.node(story_id, parent_id or self._head(story))
        instruction = (action if story.mode == "interactive" and action else plan) or ""
        if not instruction.strip():
            instruction = parent.plans[0] if parent.plans else "Continue the story."
        memory = self.memory_for(story.namespace)
        prompt = await self.prompt(story, parent, instruction, memory)
        reply, ranking = await self._draft(prompt, parent, on_paragraph)
        paragraph = reply.paragraph.strip()
        background = self.config.remember_in_background
        episode_ids = [] if background else await self._remember(memory, paragraph)
        count = memory.count_tokens
        node = self.stories.add_node(
            story_id,
            parent.id,
            NewStoryNode(
                instruction=instruction.strip(),
                paragraph=paragraph,
                short_term_memory=clip(
                    reply.memory_update.short_term_memory, self.config.short_term_tokens, count
                ),
                memory_reason=reply.memory_update.reason.strip(),
                plans=[p.strip()[:_PLAN_CHARS] for p in reply.plans],
                episode_ids=episode_ids,
                prompt=prompt.record(),
                metadata={"rerank": ranking} if ranking else {},
            ),
        )
        if background and paragraph:
            self._pending[node.id] = asyncio.create_task(
                self._remember_node(story_id, node.id, memory, paragraph)
            )
        return node

    async def _draft(
        self, prompt: Prompt, parent: StoryNode, on_paragraph: Callable[[str], None] | None
    ) -> tuple[StepReply, dict[str, Any] | None]:
        """The step's reply: one draft, or ``candidates`` drafts and the reranker's choice
        (scored against the last paragraph, RankGen's prefix) with the scores to record."""
        params = self._params()

        def stream(text: str) -> None:
            if on_paragraph is not None and (paragraph := streamed_field(text, "paragraph")):
                on_paragraph(paragraph)

        first = self.llm.generate_json(prompt.messages, StepReply, params, on_text=stream)
        if self.config.candidates == 1 or self.reranker is None:
            return await first, None
        others = [
            self.llm.generate_json(prompt.messages, StepReply, params)
            for _ in range(self.config.candidates - 1)
        ]
        replies = await asyncio.gather(first, *others)
        reranker = self.reranker
        texts = [r.paragraph.strip() for r in replies]
        scores = await asyncio.to_thread(reranker.score, parent.paragraph, texts)
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        ranking = {"scorer": reranker.name, "scores": [float(x) for x in scores], "chosen": best}
        return replies[best], ranking

    async def regenerate(
        self, story_id: int, node_id: int, on_paragraph: Callable[[str], None] | None = None
    ) -> StoryNode:
        """Another take on a step: a sibling of ``node_id`` with the same instruction."""
        node = self.stories.node(story_id, node_id)
        if node.parent_id is None:
            raise InvalidRecord("the opening cannot be regenerated; start a new story instead")
        story = self.stories.get(story_id)
        parent, instruction = node.parent_id, node.instruction
        if story.mode == "interactive":
            return await self.step(
                story_id, parent_id=parent, action=instruction, on_paragraph=on_paragraph
            )
        return await self.step(
            story_id, parent_id=parent, plan=instruction, on_paragraph=on_paragraph
        )

    # -- the prompt -------------------------------------------------------------------------

    async def prompt(
        self, story: Story, parent: StoryNode, instruction: str, memory: EpisodicMemory
    ) -> Prompt:
        """The step's prompt, every part within its budget (so bounded in story length)."""
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
        bible = pick_entries(
            self.stories.entries(story.id), f"{instruction}\n{last}", config.bible_tokens, count
        )
        parts = {
            "story": f"Title: {story.title}\nGenre: {story.genre}\nOutline: "
            + clip(story.outline, config.outline_tokens, count),
            "short-term memory": clip(parent.short_term_memory, config.short_term_tokens, count),
            "story bible": "\n".join(f"- {e.name} ({e.kind}): {e.text}" for e in bible),
            "recalled events": "\n---\n".join(r.text.strip() for r in recalled),
            "last paragraph": last,
            "instruction": instruction,
        }
        ask = "Reader's action" if story.mode == "interactive" else "Plan for the next paragraph"
        body = "\n\n".join(
            [
                f"{parts['story']}",
                f"Short-term memory:\n{parts['short-term memory']}",
                *([f"Story bible:\n{parts['story bible']}"] if bible else []),
                *([f"Earlier events:\n{parts['recalled events']}"] if recalled else []),
                f"Last paragraph:\n{last}",
                f"{ask}:\n{instruction}",
                f"Write the next paragraph (about {config.paragraph_tokens} tokens at most), "
                "rewrite the short-term memory (say why it changed), and give three different "
                "plans for the paragraph after it.",
            ]
        )
        system = INTERACTIVE if story.mode == "interactive" else NOVEL
        sizes = {name: count(text) for name, text in parts.items()}
        sizes["instructions"] = count(system) + count(body) - sum(sizes.values())
        return Prompt([ChatMessage("system", system), ChatMessage("user", body)], sizes)

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
        timeline = self.stories.recall_timeline(story_id, node_id)
        if not timeline.unremembered:
            return timeline.episode_ids
        for missing in timeline.unremembered:
            if await self._wait_for(missing):
                continue
            node = self.stories.node(story_id, missing)  # retry here: errors reach the caller
            await self._remember_node(story_id, missing, memory, node.paragraph)
        return self.stories.timeline(story_id, node_id)

    async def _remember_node(
        self, story_id: int, node_id: int, memory: EpisodicMemory, paragraph: str
    ) -> list[int]:
        """Ingest a node's paragraph and record its episodes on the node."""
        try:
            episode_ids = await self._remember(memory, paragraph)
            try:
                self.stories.update_node(story_id, node_id, episode_ids=episode_ids)
            except NotFound:
                # The story was deleted meanwhile: drop what this ingest wrote (it may have
                # re-created the namespace), so no memory of a deleted story survives.
                if self._exists(story_id):
                    raise  # the node alone is gone: not this ingest's to clean up
                await asyncio.to_thread(memory.store.delete_namespace, memory.namespace)
                return []
        except Exception:
            # Runs as a background task with no caller to raise to: log it; the next step that
            # recalls past this node ingests the paragraph again and raises to its caller.
            log.exception("could not store the paragraph of node %s in long-term memory", node_id)
            raise
        return episode_ids

    def _exists(self, story_id: int) -> bool:
        try:
            self.stories.get(story_id)
        except NotFound:
            return False
        return True

    async def _remember(self, memory: EpisodicMemory, paragraph: str) -> list[int]:
        """Ingest one paragraph into long-term memory; its episode ids, in order."""
        if not paragraph.strip():
            return []
        done = await memory.ingest(paragraph, name="paragraph")
        return [e.id for e in done.episodes]

    def _params(self) -> SamplingParams:
        return SamplingParams(
            max_tokens=_reply_tokens(self.config),
            temperature=self.config.temperature,
            top_p=self.config.top_p,
        )


def story_text(stories: SqlStoryStore, story_id: int, node_id: int | None = None) -> str:
    """A story's paragraphs from its opening to ``node_id`` (default: the head); "" if none."""
    target = node_id or stories.get(story_id).head_node_id
    if target is None:
        return ""
    return "\n\n".join(node.paragraph for node in stories.path(story_id, target))


__all__: Sequence[str] = [
    "RecurrentWriter",
    "StartReply",
    "StepReply",
    "StoryTree",
    "WriterConfig",
    "story_text",
]
