"""The writer's prompts: the system texts, the record of what was sent, and the helpers that keep
each part within its token budget."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from memory.records import BibleEntry
from serving.llm import ChatMessage


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt and its parts' sizes (the token-budget view)."""

    messages: list[ChatMessage]
    parts: dict[str, int]

    def record(self) -> dict[str, Any]:
        return {
            "parts": {name: {"tokens": tokens} for name, tokens in self.parts.items()},
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
        }


NOVEL = (
    "You are a novelist writing a long story one paragraph at a time. You keep a short-term "
    "memory: a concise running summary of what matters now. Answer with JSON only."
)
INTERACTIVE = (
    "You are the narrator of an interactive story. The reader is the protagonist: write in the "
    "second person ('you'), answer the reader's action, and offer three options for what they "
    "might do next. You keep a short-term memory of what matters now. Answer with JSON only."
)


def _words(text: str) -> set[str]:
    """Content words: four letters or more (so "the", "and", "was" never make a match)."""
    return set(re.findall(r"[a-z0-9']{4,}", text.lower()))


def pick_entries(
    entries: Sequence[BibleEntry], context: str, budget: int, count: Callable[[str], int]
) -> list[BibleEntry]:
    """Entries mentioned in ``context`` (name or alias) first, then by shared words, within
    ``budget`` tokens."""
    lowered, words = context.lower(), _words(context)

    def rank(entry: BibleEntry) -> tuple[int, int]:
        names = [entry.name, *entry.aliases]
        mentioned = any(n.lower() in lowered for n in names if n.strip())
        return (0 if mentioned else 1, -len(_words(entry.text) & words))

    chosen, left = [], budget
    for entry in sorted(entries, key=rank):
        if rank(entry) == (1, 0):
            break  # neither mentioned nor sharing a word
        size = count(f"- {entry.name} ({entry.kind}): {entry.text}")
        if size <= left:
            chosen.append(entry)
            left -= size
    return chosen


def tail(text: str, limit: int, count: Callable[[str], int]) -> str:
    """The end of ``text`` within ``limit`` tokens, starting at a word."""
    if count(text) <= limit:
        return text
    words = text.split(" ")
    low, high = 0, len(words)
    while low < high:  # smallest start index whose tail fits
        middle = (low + high) // 2
        if count(" ".join(words[middle:])) <= limit:
            high = middle
        else:
            low = middle + 1
    return " ".join(words[low:])
