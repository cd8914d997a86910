"""What a writer is told and tells: :class:`WriterConfig` (each prompt part's token budget,
sampling, tries and time limits), the :class:`Progress` a running step reports, and the limits
of what a story may start from (:func:`check_opening`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from agents.errors import AgentConfigError
from agents.quality import words
from memory.errors import InvalidRecord
from serving.llm import SamplingParams

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
