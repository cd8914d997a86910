"""DocumentReader: read documents far longer than the context through episodic memory.

Three jobs over one :class:`~memory.episodic.EpisodicMemory` namespace and one
:class:`~serving.llm.LLM`:

* ``ingest``: segment a document into episodes (events) and store them, with progress.
* ``ask``: recall episodes for a question within a token budget and answer from them as
  JSON (``{answer, passages}``), citing passages by number; citations carry the character
  offsets of each passage in its document.
* ``summarize``: hierarchically, events → sections → whole. Consecutive episodes are grouped
  into sections that fit ``section_tokens``; each section is summarised, then groups of those
  summaries, level by level, until one text remains. No prompt is ever larger than
  ``max_prompt_tokens``, however long the document.

Every token count here is in the memory's tokenizer (``memory.count_tokens``); a prompt's size
is the tokens of its system and user messages (the chat template adds a few more).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, Field, create_model

from agents.errors import AgentConfigError
from memory.episodic import EpisodicMemory, Ingested, OnProgress
from memory.errors import InvalidQuery, NotFound
from memory.records import Document, Episode
from memory.retrieval import Reason, Recall
from serving.llm import LLM, ChatMessage, SamplingParams

NOTHING_RELEVANT = "The collection holds nothing relevant to this question."
"""The answer given, without calling the LLM, when no passage is recalled."""

SummaryProgress = Callable[[int, int], None]
"""Called as ``(done, total)`` after each summary call of a level; counts restart per level."""

_ANSWER_SYSTEM = (
    "You answer questions about documents using only the numbered passages you are given. "
    'Reply with a JSON object: {"answer": "...", "passages": [numbers]}, where "passages" '
    "lists the numbers of the passages the answer relies on. If the passages do not hold "
    "the answer, say so."
)
_SUMMARY_SYSTEM = (
    "You write faithful, concise summaries. Use only what the text says; keep names, events "
    "and their order."
)
_SEPARATOR = "\n\n"


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    """How the reader recalls, prompts and summarises; ``app`` builds one and passes it in."""

    budget_tokens: int = 1024
    """Most tokens of recalled passage text per question (a call's ``budget_tokens`` overrides)."""
    max_prompt_tokens: int = 3072
    """Most tokens of any prompt sent to the LLM (system + user message text)."""
    section_tokens: int = 2048
    """Most tokens of text (episodes, or lower-level summaries) summarised in one call."""
    summary_tokens: int = 256
    """Most tokens generated per summary call."""
    answer_tokens: int = 256
    """Size of an answer: the reply schema caps it at 2 characters per token, and the reply may
    run to 2 x answer_tokens + 96 tokens, so guided decoding always ends the JSON in time."""
    concurrency: int = 4
    """Summary calls in flight at once, per ``summarize``."""
    temperature: float = 0.0
    """Sampling temperature of every call; 0 = greedy (repeatable)."""

    def __post_init__(self) -> None:
        sizes = {
            "budget_tokens": self.budget_tokens,
            "max_prompt_tokens": self.max_prompt_tokens,
            "section_tokens": self.section_tokens,
            "summary_tokens": self.summary_tokens,
            "answer_tokens": self.answer_tokens,
            "concurrency": self.concurrency,
        }
        problems = [f"{name}={size} must be at least 1" for name, size in sizes.items() if size < 1]
        if self.section_tokens < 2 * self.summary_tokens:
            problems.append(
                f"section_tokens={self.section_tokens} must hold two summaries of "
                f"summary_tokens={self.summary_tokens} (at least {2 * self.summary_tokens}), "
                "or the summary levels would not shrink"
            )
        if not 0.0 <= self.temperature <= 2.0:
            problems.append(f"temperature={self.temperature} must be in [0, 2]")
        if problems:
            raise AgentConfigError("; ".join(problems))

    @property
    def reply_tokens(self) -> int:
        """The most tokens an answer's JSON reply may run to (its ``max_tokens``)."""
        return _CHARACTERS_PER_TOKEN * self.answer_tokens + _REPLY_OVERHEAD_TOKENS


@dataclass(frozen=True, slots=True)
class Citation:
    """A passage an answer relies on: ``number`` as shown to the model ([1] is the first).

    ``start`` and ``end`` are character offsets into document ``document_id``'s text;
    ``score`` and ``reason`` say why the passage was recalled (see :class:`Recall`).
    """

    number: int
    episode_id: int
    document_id: int | None
    start: int
    end: int
    text: str
    score: float
    reason: Reason


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer, the passages it cites, and every passage the model was shown (in order)."""

    text: str
    citations: list[Citation]
    passages: list[Recall]


@dataclass(frozen=True, slots=True)
class Summary:
    """A hierarchical summary.

    ``levels[0]`` holds one summary per section of episodes, each later level one per group
    of the level before; the last level holds ``text`` alone. ``calls`` is the number of LLM
    calls made (the sum of the levels' lengths) and ``max_prompt_tokens`` the largest prompt
    sent, in tokens. Summaries are the model's replies, stripped: a blank reply stays blank.
    """

    text: str
    levels: list[list[str]]
    calls: int
    max_prompt_tokens: int


_CHARACTERS_PER_TOKEN = 2
"""Characters of answer allowed per answer token. Every generated token adds at least one
character, so the answer string closes within 2 x ``answer_tokens`` tokens, which the reply's
``max_tokens`` allows for (with room for the passage numbers): a small model that rambles still
ends its JSON in time (English runs about 4 characters per token, so answers are rarely cut)."""
_REPLY_OVERHEAD_TOKENS = 96
"""Tokens of the reply beyond the answer string: JSON syntax and up to 16 passage numbers."""
_MOST_PASSAGES = 999
"""Largest passage number the reply schema admits (bounds guided decoding of integers)."""


class _Reply(BaseModel):
    """The JSON the model answers with (see :func:`_reply_schema` for the answer's bounds)."""

    answer: str
    passages: list[Annotated[int, Field(ge=0, le=_MOST_PASSAGES)]] = Field(
        max_length=16, description="Numbers of the passages the answer relies on."
    )


def _reply_schema(answer_tokens: int) -> type[_Reply]:
    """:class:`_Reply` with a non-empty answer of at most about ``answer_tokens`` tokens.

    The bounds are in the JSON schema, so guided decoding cannot run a string or a number on
    past ``max_tokens`` (a cut-off reply would fail validation); numbers past the passages
    shown still validate and are dropped by :meth:`DocumentReader.ask`.
    """
    answer = Field(
        min_length=1,
        max_length=_CHARACTERS_PER_TOKEN * answer_tokens,
        description="The answer, from the passages only.",
    )
    return create_model("AnswerReply", __base__=_Reply, answer=(str, answer))


class DocumentReader:
    """Ingests documents into episodic memory, answers questions with citations, summarises."""

    def __init__(
        self, memory: EpisodicMemory, llm: LLM, config: ReaderConfig = ReaderConfig()
    ) -> None:
        """Raises :class:`AgentConfigError` when ``max_prompt_tokens`` cannot hold a section of
        ``section_tokens`` with the summary instructions."""
        self.memory = memory
        self.llm = llm
        self.config = config
        self._reply = _reply_schema(config.answer_tokens)
        overhead = max(self._prompt_tokens(self._summary_prompt("", level)) for level in (0, 1))
        if overhead + config.section_tokens > config.max_prompt_tokens:
            raise AgentConfigError(
                f"max_prompt_tokens={config.max_prompt_tokens} cannot hold a section of "
                f"section_tokens={config.section_tokens} plus {overhead} tokens of summary "
                f"instructions; raise max_prompt_tokens to at least "
                f"{overhead + config.section_tokens} or lower section_tokens"
            )

    async def ingest(
        self,
        text: str,
        *,
        name: str,
        source: str | None = None,
        on_progress: OnProgress | None = None,
    ) -> Ingested:
        """Store ``text`` as document ``name`` (see :meth:`EpisodicMemory.ingest`)."""
        return await self.memory.ingest(text, name=name, source=source, on_progress=on_progress)

    # -- questions -------------------------------------------------------------------------

    async def ask(self, question: str, *, budget_tokens: int | None = None) -> Answer:
        """Answer ``question`` from passages recalled within ``budget_tokens`` of their text.

        The retrieval budget shrinks, if need be, so that the prompt stays within
        ``max_prompt_tokens``. Citations are the passages the model names, deduplicated in
        the order named, numbers outside [1, n] dropped; when it names none that are valid,
        every passage shown counts as cited. When nothing is recalled the answer is
        :data:`NOTHING_RELEVANT`, no LLM call is made, and there are no citations.

        Raises :class:`InvalidQuery` for an empty question, a budget below 1, or a question
        larger than the budget or the prompt; :class:`NotFound` when the namespace holds no
        documents; the LLM's errors propagate.
        """
        if not isinstance(question, str) or not question.strip():
            raise InvalidQuery("the question is empty; ask something about the documents")
        budget = self.config.budget_tokens if budget_tokens is None else budget_tokens
        if budget < 1:
            raise InvalidQuery(f"budget_tokens={budget} must be at least 1")
        asked = self.memory.count_tokens(question)
        if asked > budget:
            raise InvalidQuery(
                f"the question is {asked} tokens, more than the budget of {budget}; "
                "shorten it or raise budget_tokens"
            )
        await self._require_documents()
        limit = self.config.max_prompt_tokens
        room = limit - self._prompt_tokens(self._answer_prompt(question, []))
        if room < asked:
            raise InvalidQuery(
                f"the question is {asked} tokens: with the instructions it leaves {room} of "
                f"max_prompt_tokens={limit} for passages, less than the question itself; "
                "shorten it"
            )
        passages = await self.memory.search(question, budget_tokens=min(budget, room))
        messages = self._answer_prompt(question, passages)
        while passages and self._prompt_tokens(messages) > limit:  # numbering overhead
            weakest = min(passages, key=lambda p: p.score)
            passages = [p for p in passages if p is not weakest]
            messages = self._answer_prompt(question, passages)
        if not passages:
            return Answer(NOTHING_RELEVANT, [], [])
        params = SamplingParams(
            max_tokens=self.config.reply_tokens,
            temperature=self.config.temperature,
        )
        reply = await self.llm.generate_json(messages, self._reply, params)
        return Answer(reply.answer.strip(), _citations(reply.passages, passages), passages)

    def _answer_prompt(self, question: str, passages: Sequence[Recall]) -> list[ChatMessage]:
        numbered = _SEPARATOR.join(f"[{i}] {p.text.strip()}" for i, p in enumerate(passages, 1))
        user = f"Passages:\n{numbered}\n\nQuestion: {question.strip()}"
        return [ChatMessage("system", _ANSWER_SYSTEM), ChatMessage("user", user)]

    # -- summaries -------------------------------------------------------------------------

    async def summarize(
        self, *, document_id: int | None = None, on_progress: SummaryProgress | None = None
    ) -> Summary:
        """Summarise one document (or every document, in order), hierarchically.

        Level 0 summarises sections of consecutive episodes (never spanning two documents;
        an episode larger than a section is cut at whitespace); each later level summarises
        groups of the summaries before it, until a level holds one. A summary longer than
        half a section is cut to fit when grouped, so every group but the last merges at
        least two and the levels shrink. Calls of a level run concurrently, at most
        ``concurrency`` at once.

        Raises :class:`NotFound` when the namespace holds no documents or not
        ``document_id``, :class:`InvalidQuery` when the document has no episodes; the LLM's
        errors propagate.
        """
        episodes = await self._episodes(document_id)
        room = self.config.section_tokens
        # Level 0: each document's episodes (cut to fit a section) as they stand in the text.
        runs: dict[int | None, list[str]] = {}
        for episode in episodes:
            runs.setdefault(episode.document_id, []).extend(self._fit(episode.text, room))
        inputs = list(runs.values())
        levels: list[list[str]] = []
        largest = 0
        while True:
            level = len(levels)
            groups = await asyncio.to_thread(self._groups, inputs, level)
            if level and len(groups) >= len(levels[-1]):
                raise RuntimeError(
                    f"summary level {level} did not shrink ({len(groups)} groups of "
                    f"{len(levels[-1])} summaries): the tokenizer counts joined summaries as "
                    "far more than their parts; raise section_tokens"
                )
            prompts = [self._summary_prompt(_joiner(level).join(g), level) for g in groups]
            sizes = [self._prompt_tokens(p) for p in prompts]
            # _groups checks each group's whole prompt, so this holds by construction.
            assert max(sizes) <= self.config.max_prompt_tokens, (sizes, level)
            largest = max(largest, *sizes)
            levels.append(await self._summarise_all(prompts, on_progress))
            if len(levels[-1]) == 1:
                break
            cap = (room - 2 * self.memory.count_tokens(_joiner(level + 1))) // 2
            inputs = [[self._fit(s, cap)[0] for s in levels[-1]]]
        calls = sum(len(level) for level in levels)
        return Summary(levels[-1][0], levels, calls, largest)

    async def _episodes(self, document_id: int | None) -> list[Episode]:
        documents = await self._require_documents()
        if document_id is not None and document_id not in {d.id for d in documents}:
            known = [d.id for d in documents]
            raise NotFound(
                f"document {document_id} does not exist in namespace "
                f"{self.memory.namespace!r}; its documents are {known}"
            )
        episodes = await self.memory.episodes(document_id)
        if not episodes:
            which = "its documents have" if document_id is None else "the document has"
            raise InvalidQuery(f"nothing to summarise: {which} no episodes yet")
        return episodes

    async def _summarise_all(
        self, prompts: list[list[ChatMessage]], on_progress: SummaryProgress | None
    ) -> list[str]:
        gate = asyncio.Semaphore(self.config.concurrency)
        params = SamplingParams(
            max_tokens=self.config.summary_tokens, temperature=self.config.temperature
        )
        done = 0

        async def one(prompt: list[ChatMessage]) -> str:
            nonlocal done
            async with gate:
                completion = await self.llm.chat(prompt, params)
            done += 1
            if on_progress is not None:
                on_progress(done, len(prompts))
            return completion.text.strip()

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    def _groups(self, runs: list[list[str]], level: int) -> list[list[str]]:
        """Consecutive items of each run packed greedily into groups of at most
        ``section_tokens`` (no group spans two runs); a group whose whole prompt still
        exceeds ``max_prompt_tokens`` is halved."""
        separator = self.memory.count_tokens(_joiner(level))
        groups: list[list[str]] = []
        for run in runs:
            current: list[str] = []
            used = 0
            for item in run:
                tokens = self.memory.count_tokens(item)
                if current and used + separator + tokens > self.config.section_tokens:
                    groups.append(current)
                    current, used = [], 0
                used += tokens + (separator if current else 0)
                current.append(item)
            groups.append(current)
        return [part for group in groups for part in self._within_prompt(group, level)]

    def _within_prompt(self, group: list[str], level: int) -> list[list[str]]:
        """``group`` as is, or halved (an item cut in two) until each part's prompt fits:
        token counts of parts need not add up to the count of their concatenation."""
        prompt = self._summary_prompt(_joiner(level).join(group), level)
        if self._prompt_tokens(prompt) <= self.config.max_prompt_tokens:
            return [group]
        if len(group) == 1:
            halves = self._fit(group[0], self.memory.count_tokens(group[0]) // 2)
            if len(halves) == 1:  # one character: nothing left to cut
                return [group]
            return [p for half in halves for p in self._within_prompt([half], level)]
        half = len(group) // 2
        return self._within_prompt(group[:half], level) + self._within_prompt(group[half:], level)

    def _fit(self, text: str, limit: int) -> list[str]:
        """``text`` cut at whitespace into consecutive pieces of at most ``limit`` tokens."""
        if len(text) < 2 or self.memory.count_tokens(text) <= limit:
            return [text]
        middle = len(text) // 2
        cut = max(text.rfind(" ", 0, middle), text.rfind("\n", 0, middle)) + 1 or middle
        return self._fit(text[:cut], limit) + self._fit(text[cut:], limit)

    def _summary_prompt(self, text: str, level: int) -> list[ChatMessage]:
        words = max(1, self.config.summary_tokens * 3 // 4)
        if level == 0:
            task = f"Summarise this part of a document in at most {words} words."
            label = "Text"
        else:
            task = (
                "These are summaries of consecutive parts of one document, in order, separated "
                f"by blank lines. Combine them into one summary of at most {words} words."
            )
            label = "Summaries"
        user = f"{task}\n\n{label}:\n{text}"
        return [ChatMessage("system", _SUMMARY_SYSTEM), ChatMessage("user", user)]

    # -- shared ----------------------------------------------------------------------------

    def _prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(self.memory.count_tokens(m.content) for m in messages)

    async def _require_documents(self) -> list[Document]:
        documents = await self.memory.documents()
        if not documents:
            raise NotFound(
                f"namespace {self.memory.namespace!r} holds no documents; ingest one first"
            )
        return documents


def _joiner(level: int) -> str:
    """What joins a group's items: episodes are contiguous spans of their document, so level 0
    joins them as they stand; summaries are separated by a blank line."""
    return "" if level == 0 else _SEPARATOR


def _citations(numbers: Sequence[int], passages: Sequence[Recall]) -> list[Citation]:
    """Citations for the valid passage ``numbers`` (1-based), first mention first; all passages
    when none is valid."""
    valid = list(dict.fromkeys(n for n in numbers if 1 <= n <= len(passages)))
    chosen = valid or list(range(1, len(passages) + 1))
    return [
        Citation(
            number=n,
            episode_id=p.episode_id,
            document_id=p.document_id,
            start=p.start,
            end=p.end,
            text=p.text,
            score=p.score,
            reason=p.reason,
        )
        for n in chosen
        for p in [passages[n - 1]]
    ]
