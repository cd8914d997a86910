"""What the writer refuses to store: empty or near-empty text, degenerate repetition, and text
that echoes the prompt's instructions (or a repair request) instead of telling the story.

The checks are deliberately model-free and cheap, so they run on every paragraph, memory and plan
before anything is stored, and the benchmark (``benchmarks/writer_quality.py``) reports the same
measures over what was stored.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

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
