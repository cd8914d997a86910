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
    continuation: str = ""
    """The same prompt as raw text to continue, for a base model without a chat template."""

    def record(self) -> dict[str, Any]:
        return {
            "parts": {name: {"tokens": tokens} for name, tokens in self.parts.items()},
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
            **({"continuation": self.continuation} if self.continuation else {}),
        }


NOVEL = (
    "You are a novelist writing a long story one paragraph at a time. Write only the story's "
    "next paragraph: plain prose, with no title, no heading, no list and no note to the reader."
)
INTERACTIVE = (
    "You are the narrator of an interactive story. The reader is the protagonist: write in the "
    "second person ('you') and show what happens after the reader's action. Write only the "
    "story's next paragraph: plain prose, with no title, no heading, no list and no options."
)
NOTES = (
    "You keep the notes of a story that is being written: what the reader must keep in mind, "
    "and what could happen next. Answer with JSON only."
)
FRAME = "You help a novelist plan a story. Answer with JSON only."
PROSE_ASK = "Write the next paragraph, about {words} words."
OPENING_ASK = "Write the story's opening paragraph, about {words} words."
NOTES_ASK = (
    "Rewrite the notes after the newest paragraph: what the reader must keep in mind now, in a "
    "few sentences (names, places, what each character wants, what is unresolved), and why it "
    "changed. Then give three different {plans}, one sentence each, and up to three story-bible "
    "entries for characters, places or facts the newest paragraph introduced."
)
PLANS = {
    "novel": "plans for the next paragraph",
    "interactive": "actions the reader could take next, each starting with a verb ('Open the "
    "door')",
}
FRAME_ASK = (
    "Give the story a title and an outline of the whole story in a few sentences: the main "
    "characters, the conflict, and how it could end."
)

INSTRUCTION_TEXTS = (NOVEL, INTERACTIVE, NOTES, FRAME, PROSE_ASK, OPENING_ASK, NOTES_ASK, FRAME_ASK)
"""The prompts' fixed wording: stored text must not echo it (see :func:`agents.quality.echoes`)."""


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


def as_continuation(prompt: Prompt) -> str:
    """The prose prompt as raw text for a base model (no chat template): the context, the
    instruction, then the story's end, so the model's continuation is the next paragraph."""
    return prompt.continuation or "\n\n".join(m.content for m in prompt.messages) + "\n\n"
