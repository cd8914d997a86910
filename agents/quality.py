"""What the writer refuses to store: empty or near-empty text, degenerate repetition, and text
that echoes the prompt's instructions (or a repair request) instead of telling the story; and the
cleaning before those checks (the labels and numbering a model puts around its text).

The checks are deliberately model-free and cheap, so they run on every paragraph, memory and plan
before anything is stored, and the benchmark (``benchmarks/writer_quality.py``) reports the same
measures over what was stored.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

from agents.replies import BibleItem, OpeningNotes, StepNotes, StoryFrame
from agents.story_prompt import INSTRUCTION_TEXTS

_WORD = re.compile(r"[A-Za-z0-9']+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")

INSTRUCTION_MARKERS = (
    "json",
    "max_tokens",
    "schema",
    "short-term memory",
    "short term memory",
    "as an ai",
    "language model",
    "reply again",
    "the requested length",
    "memory_update",
    "stepreply",
    "stepnotes",
    "keep it shorter",
    "in json",
    "plain prose",
    "characters should",
    "word count",
)
"""Phrases that belong to prompts and repair requests, never to a story (matched as words,
case-insensitively). A story may mention "memory", "plans" or "the next paragraph", so only
phrases that no story needs are listed; longer echoes are caught by shared n-grams."""

ECHO_NGRAM = 6
"""A stored text sharing this many consecutive words with an instruction text echoes it."""

REPEATED_4GRAM_LIMIT = 0.25
"""Most share of a text's word 4-grams that may repeat an earlier 4-gram of the same text."""

_MIN_MEMORY_WORDS = 5
"""Fewest words of a short-term memory that may be stored."""


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_rate(text: str, n: int = 4) -> float:
    """Share of the word n-grams of ``text`` that already occurred earlier in it (0 = none)."""
    grams = ngrams(words(text), n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def distinct_n(texts: Iterable[str], n: int = 2) -> float:
    """Distinct-n of a set of texts: unique word n-grams over all word n-grams (1 = no repeats)."""
    grams = [g for text in texts for g in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _marker(text: str) -> str | None:
    lowered = " ".join(words(text))
    for marker in INSTRUCTION_MARKERS:
        if re.search(r"\b" + re.escape(" ".join(words(marker))) + r"\b", lowered):
            return marker
    return None


def echoes(text: str, instructions: Sequence[str] = ()) -> str | None:
    """The instruction phrase ``text`` repeats, or None: a marker phrase, or a run of
    :data:`ECHO_NGRAM` words shared with one of ``instructions`` (the prompt's fixed wording)."""
    if (marker := _marker(text)) is not None:
        return marker
    own = set(ngrams(words(text), ECHO_NGRAM))
    for instruction in instructions:
        shared = own & set(ngrams(words(instruction), ECHO_NGRAM))
        if shared:
            return " ".join(min(shared))
    return None


def prose_problem(
    text: str, *, min_words: int, instructions: Sequence[str] = (), what: str = "paragraph"
) -> str | None:
    """Why ``text`` cannot be stored as story text (one phrase a writer understands), or None."""
    tokens = words(text)
    if len(tokens) < min_words:
        if not tokens:
            return f"the {what} came back empty"
        return f"the {what} came back nearly empty ({len(tokens)} words)"
    if (phrase := echoes(text, instructions)) is not None:
        return f"the {what} repeated the instructions (“{phrase}”) instead of telling the story"
    rate = repeated_ngram_rate(text)
    if rate > REPEATED_4GRAM_LIMIT:
        return f"the {what} went round in circles ({rate:.0%} of its phrases repeated)"
    sentences = Counter(s.strip().lower() for s in _SENTENCE.split(text) if len(s.split()) >= 3)
    if sentences and max(sentences.values()) >= 3:
        return f"the {what} repeated one sentence {max(sentences.values())} times"
    return None


def plans_problem(plans: Sequence[str], *, instructions: Sequence[str] = ()) -> str | None:
    """Why three plans (or options) cannot be offered, or None: each must be a real, distinct
    sentence of its own."""
    seen: set[str] = set()
    for number, plan in enumerate(plans, 1):
        problem = prose_problem(plan, min_words=3, instructions=instructions, what="plan")
        if problem is None and len(plan.split()) < 3:  # "the_lighthouse_knight": not a sentence
            problem = "the plan is not a sentence"
        if problem is not None:
            return f"{problem} (option {number})"
        key = " ".join(words(plan))
        if key in seen:
            return f"option {number} is the same as an earlier one"
        seen.add(key)
    return None


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
