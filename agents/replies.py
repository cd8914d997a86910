"""The JSON replies the writer asks the model for (validated; guided decoding where offered)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class MemoryUpdate(BaseModel):
    reason: str = Field(max_length=600, description="Why the short-term memory changed.")
    short_term_memory: str = Field(
        min_length=1, max_length=2400, description="The rewritten running summary."
    )


class StepReply(BaseModel):
    """What the model answers each step."""

    paragraph: str = Field(min_length=1, max_length=2800)
    memory_update: MemoryUpdate
    plans: list[str] = Field(min_length=3, max_length=3)


class StartReply(BaseModel):
    """What the model answers when a story starts."""

    title: str = Field(min_length=1, max_length=120)
    outline: str = Field(min_length=1, max_length=1600)
    paragraphs: list[str] = Field(min_length=1, max_length=3)
    short_term_memory: str = Field(min_length=1, max_length=2400)
    plans: list[str] = Field(min_length=3, max_length=3)


class BibleItem(BaseModel):
    kind: Literal["character", "place", "fact", "other"]
    name: str = Field(min_length=1, max_length=120)
    text: str = Field(min_length=1, max_length=600)


class ImportReply(BaseModel):
    """What the model answers about an imported manuscript."""

    title: str = Field(min_length=1, max_length=120)
    outline: str = Field(min_length=1, max_length=1600)
    short_term_memory: str = Field(min_length=1, max_length=2400)
    plans: list[str] = Field(min_length=3, max_length=3)
    bible: list[BibleItem] = Field(default_factory=list, max_length=12)
