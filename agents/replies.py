"""The JSON replies the writer asks the model for (validated; guided decoding where offered).

The paragraph itself is never JSON: it is prose, streamed as it is written (RecurrentGPT's content
split). These are the smaller structured calls around it, with length limits in the schema so a
guided decoder cannot run long.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

Plan = Annotated[str, Field(min_length=1, max_length=160, json_schema_extra={"minLength": 12})]
"""A plan. A guided decoder cannot close it before 12 characters (the schema sent says so); a
shorter one from an unguided backend validates here and is judged by ``agents.quality``."""


class BibleItem(BaseModel):
    kind: Literal["character", "place", "fact", "other"]
    name: str = Field(min_length=1, max_length=60)
    text: str = Field(min_length=1, max_length=300)


class Suggestion(BibleItem):
    """A bible entry the model proposes after a paragraph (short: the writer reads it)."""

    name: str = Field(min_length=1, max_length=40)
    text: str = Field(min_length=1, max_length=120)


class StepNotes(BaseModel):
    """What the model answers after each paragraph: the memory update and the next plans, in
    the order it writes them (a guided decoder keeps the schema's order)."""

    short_term_memory: str = Field(
        min_length=1,
        max_length=600,
        description="What the reader must keep in mind now.",
        json_schema_extra={"minLength": 40},  # for a guided decoder only, as plans
    )
    reason: str = Field(max_length=200, description="Why the short-term memory changed.")
    plans: list[Plan] = Field(min_length=3, max_length=3)
    bible: list[Suggestion] = Field(
        default_factory=list,
        max_length=2,
        description="New characters, places or facts the newest paragraph introduced.",
    )


class OpeningNotes(StepNotes):
    """The notes after a story's opening paragraph, with the story's title and outline."""

    title: str = Field(min_length=1, max_length=80)
    outline: str = Field(min_length=1, max_length=400)


class StoryFrame(BaseModel):
    """What the model answers before a story's opening paragraph: its title and outline."""

    title: str = Field(min_length=1, max_length=80)
    outline: str = Field(min_length=1, max_length=800)


class ImportFrame(StoryFrame):
    """What the model answers about an imported manuscript: title, outline, first bible."""

    bible: list[BibleItem] = Field(default_factory=list, max_length=12)
