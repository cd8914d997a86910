"""The structured half of a writer's step (RecurrentGPT's memory update and plans): the notes
after a paragraph (short-term memory, its reason, three plans, bible suggestions; after an
opening, the title and outline too) and the frame of an imported manuscript, each validated as
content before anything is stored."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from agents.errors import NOTHING_STORED, StepFailed
from agents.quality import clean_notes, frame_problem, notes_problem
from agents.replies import ImportFrame, OpeningNotes, StepNotes, StoryFrame
from agents.story_model import StoryModel
from agents.story_prompt import FRAME, FRAME_ASK, NOTES, NOTES_ASK, PLANS, Prompt, tail
from agents.writer_config import OnProgress, Progress, WriterConfig
from memory.records import StoryNode
from serving.errors import StructuredOutputError
from serving.llm import ChatMessage

log = logging.getLogger(__name__)

_NOTES_LEAST_S = 15.0
"""The first notes try runs at least this long, however long the paragraph took."""
_STORING_S = 2.0
"""Seconds of a step's target kept for what follows the notes (storing the node)."""


def kept_notes(parent: StoryNode, instruction: str) -> StepNotes:
    """The notes a step keeps when the model gives none: the parent's memory and the plans it
    offered but the writer did not take (maybe none: the writer then writes their own, or the
    next step continues the story)."""
    taken = " ".join(instruction.split()).casefold()
    plans = [p for p in parent.plans if " ".join(p.split()).casefold() != taken]
    return StepNotes.model_construct(  # stored as they were written: no re-validation
        short_term_memory=parent.short_term_memory, reason="", plans=plans, bible=[]
    )


def untitled_notes(premise: str) -> OpeningNotes:
    """The notes an opening keeps when the model gives none: the premise's first words as the
    title, the premise as the outline, and no memory or plans yet (the writer writes their own,
    or the next step continues the story)."""
    first = premise.split()
    title = " ".join(first[:8]).rstrip(".,;:!?") + ("…" if len(first) > 8 else "")
    return OpeningNotes.model_construct(  # the writer's own words: no re-validation
        short_term_memory="", reason="", plans=[], bible=[], title=title[:80],
        outline=" ".join(first)[:400],
    )  # fmt: skip


class NotesWriter:
    """Asks ``model`` for the notes around a paragraph, with its config's tries and sampling."""

    def __init__(self, model: StoryModel) -> None:
        self.model = model
        self.config: WriterConfig = model.config

    async def frame(self, setting: str, schema: type[StoryFrame], on_progress: OnProgress) -> Any:
        """Title and outline (and, for an import, bible entries), validated like all content."""
        on_progress(Progress("frame"))
        ask = FRAME_ASK + (
            " Add up to twelve story-bible entries (main characters, places, facts)."
            if schema is ImportFrame
            else ""
        )
        frame: StoryFrame | None = None
        if self.model.style == "chat":
            messages = [ChatMessage("system", FRAME), ChatMessage("user", f"{setting}\n\n{ask}")]
            budget = 300 + (720 if schema is ImportFrame else 0)
            try:
                frame = await self.model.structured(messages, schema, budget)
            except StructuredOutputError as err:
                log.info("frame failed: %s", err)
                raise StepFailed(
                    "The model could not plan this story (it did not answer in the expected "
                    f"format). {NOTHING_STORED}"
                ) from err
        if frame is None:  # a base model: each field a short continuation
            title = await self.model.field(f"{setting}\n\nTitle:", 20)
            outline = await self.model.field(f"{setting}\n\nTitle: {title}\nOutline:", 120)
            frame = schema(title=title[:80] or "Untitled", outline=outline[:800] or "-")
        if (problem := frame_problem(frame)) is not None:
            raise StepFailed(f"The model could not plan this story ({problem}). {NOTHING_STORED}")
        return frame

    async def notes(
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
        count = self.model.count
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
                    if self.model.style == "chat":
                        budget = self.config.notes_tokens + (200 if opening else 0)
                        notes = await self.model.structured(prompt.messages, schema, budget)
                    if notes is None:
                        notes = await self._by_fields(context, paragraph, opening)
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
                f"The model could not update the memory and plans ({problem}). {NOTHING_STORED}"
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

    async def _by_fields(self, context: str, paragraph: str, opening: bool) -> StepNotes:
        """Notes for a base model (no chat template): each field a short continuation."""
        lead = f"{context}\n\nStory so far:\n{tail(paragraph, 300, lambda t: len(t.split()))}\n\n"
        memory = await self.model.field(f"{lead}Summary of the story so far:", 90)
        plans = [
            await self.model.field(f"{lead}Summary: {memory}\nWhat happens next, idea {i}:", 40)
            for i in (1, 2, 3)
        ]
        fields: dict[str, Any] = {
            "short_term_memory": memory or "-",
            "reason": "rewritten after the newest paragraph",
            "plans": [p or "-" for p in plans],
        }
        if not opening:
            return StepNotes(**fields)
        title = await self.model.field(f"{lead}Title of the story:", 20)
        outline = await self.model.field(f"{lead}Title: {title}\nOutline of the whole story:", 120)
        return OpeningNotes(**fields, title=title[:80] or "-", outline=outline[:800] or "-")
