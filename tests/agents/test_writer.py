"""RecurrentWriter over real SQL + Chroma, with a scripted LLM behind the real JSON repair loop."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agents.writer import RecurrentWriter
from agents.writer_config import WriterConfig
from memory import ChromaVectorIndex, Database, MemoryStore
from memory.episodic import EpisodicMemory
from memory.errors import InvalidRecord
from memory.segmentation import SegmenterConfig
from memory.segmenters import FixedSegmenter
from memory.stories import SqlStoryStore
from tests.fakes import HashEmbedder, ScriptedLLM

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


FRAME = json.dumps(
    {"title": "The Salt Road", "outline": "A courier crosses the desert with a sealed letter."}
)
OPENING = (
    "Mara left the oasis at dawn with the sealed letter, and the dunes rose before her like "
    "the waves of a frozen sea."
)
PLANS = [
    "She meets a caravan at the well.",
    "A storm rises from the south.",
    "She opens the letter.",
]


def notes(
    memory: str = "The hero is at sea with the sealed letter.",
    plans: list[str] | None = None,
    bible: list[dict[str, str]] | None = None,
    *,
    opening: bool = False,
) -> str:
    """Notes JSON; after an opening, with the story's title and outline (:data:`FRAME`)."""
    return json.dumps(
        {
            "short_term_memory": memory,
            "reason": "new events",
            "plans": PLANS if plans is None else plans,
            "bible": bible or [],
            **(json.loads(FRAME) if opening else {}),
        }
    )


def opening(user: str) -> bool:
    """Whether a notes request follows a story's opening (it asks for a title too)."""
    return "give the story a title" in user


def instruction_of(user: str) -> str:
    found = re.search(r"(?:What happens next|The reader's action): (.*?)\n\nWrite the next", user,
                      re.S)  # fmt: skip
    return found.group(1).strip() if found else ""


def echo(user: str, call: int) -> str:
    """A story: its frame, an opening, notes, and paragraphs that name their instruction."""
    if "Rewrite the notes" in user:
        return notes(opening=opening(user))
    if "Give the story a title" in user:
        return FRAME
    if "opening paragraph" in user:
        return OPENING
    return (
        f"Step {call}. Following '{instruction_of(user)}', the journey went on across the "
        "dunes for many more long days."
    )


def writer_for(
    store: MemoryStore, llm: ScriptedLLM, config: WriterConfig | None = None
) -> RecurrentWriter:
    segmenter = FixedSegmenter(SegmenterConfig(min_tokens=4, max_tokens=120))
    return RecurrentWriter(
        SqlStoryStore(store.database),
        lambda ns: EpisodicMemory(store, ns, segmenter),
        llm,
        config or WriterConfig(),
    )


def test_start_then_steps_grow_one_branch(store: MemoryStore) -> None:
    writer = writer_for(store, ScriptedLLM(echo))
    story, root = run(writer.start("story-1", genre="adventure", premise="A courier and a letter."))
    assert story.title == "The Salt Road" and story.head_node_id == root.id
    assert root.paragraph == OPENING and root.plans == tuple(PLANS) and root.episode_ids
    node = run(writer.step(story.id, plan="She meets a caravan."))
    assert node.parent_id == root.id and "She meets a caravan." in node.paragraph
    assert node.short_term_memory == "The hero is at sea with the sealed letter."
    parts = node.prompt["parts"]
    assert set(parts) >= {"short-term memory", "last paragraph", "instruction", "instructions"}
    assert all(p["tokens"] >= 0 for p in parts.values())
    assert writer.text(story.id).count("\n\n") == 1


def test_branches_never_see_each_other(store: MemoryStore) -> None:
    llm = ScriptedLLM(echo)
    writer = writer_for(store, llm)
    story, root = run(writer.start("story-1", genre="adventure", premise="A courier."))
    first = run(writer.step(story.id, plan="The ZEBRA herd crossed the dunes."))
    run(writer.step(story.id, plan="Night fell over the ZEBRA herd."))
    writer.undo(story.id)
    writer.undo(story.id)
    other = run(writer.step(story.id, plan="A storm rises."))
    assert other.parent_id == root.id
    run(writer.step(story.id, plan="The dunes again."))
    assert "ZEBRA" not in llm.prompts[-2]  # the sibling branch's paragraphs are not recalled
    writer.switch(story.id, first.id)
    assert "ZEBRA" in writer.text(story.id)
    writer.switch(story.id, root.id)
    with pytest.raises(InvalidRecord, match="nothing to undo"):
        writer.undo(story.id)


def test_recall_brings_back_an_early_event_on_the_branch(store: MemoryStore) -> None:
    llm = ScriptedLLM(echo)
    writer = writer_for(store, llm, WriterConfig(recall_tokens=200))
    story, _ = run(writer.start("story-1", genre="adventure", premise="A courier."))
    run(writer.step(story.id, plan="The lighthouse keeper gave Mara a brass compass."))
    for i in range(6):
        run(writer.step(story.id, plan=f"Walk day {i}."))
    run(writer.step(story.id, plan="Mara takes out the brass compass from the lighthouse keeper."))
    assert "Earlier events" in llm.prompts[-2] and "brass compass" in llm.prompts[-2]


def test_regenerate_is_a_sibling_with_the_same_plan(store: MemoryStore) -> None:
    writer = writer_for(store, ScriptedLLM(echo))
    story, root = run(writer.start("story-1", genre="adventure", premise="A courier."))
    node = run(writer.step(story.id, plan="A storm rises."))
    again = run(writer.regenerate(story.id, node.id))
    assert again.parent_id == root.id and again.instruction == node.instruction
    assert again.id != node.id
    with pytest.raises(InvalidRecord, match="opening"):
        run(writer.regenerate(story.id, root.id))


def test_edited_memory_is_what_the_next_step_reads(store: MemoryStore) -> None:
    llm = ScriptedLLM(echo)
    writer = writer_for(store, llm)
    story, root = run(writer.start("story-1", genre="adventure", premise="A courier."))
    writer.edit_memory(story.id, root.id, "Mara secretly fears the sea.")
    run(writer.step(story.id, plan="Go on."))
    assert "Mara secretly fears the sea." in llm.prompts[-2]
    with pytest.raises(InvalidRecord, match="empty"):
        writer.edit_memory(story.id, root.id, "  ")


def test_interactive_mode_answers_the_readers_action(store: MemoryStore) -> None:
    llm = ScriptedLLM(echo)
    writer = writer_for(store, llm)
    story, _ = run(writer.start("story-1", genre="mystery", premise="You wake in a locked room.",
                                mode="interactive"))  # fmt: skip
    node = run(writer.step(story.id, action="I try the door handle."))
    assert "I try the door handle." in node.paragraph
    assert "The reader's action: I try the door handle." in llm.prompts[-2]  # then the notes
    assert "actions the reader could take next" in llm.prompts[-1]


def test_bible_entries_mentioned_are_in_the_prompt(store: MemoryStore) -> None:
    llm = ScriptedLLM(echo)
    writer = writer_for(store, llm)
    story, _ = run(writer.start("story-1", genre="adventure", premise="A courier."))
    writer.stories.upsert_entry(story.id, kind="character", name="Idris",
                                text="A one-eyed caravan master who owes Mara a debt.")  # fmt: skip
    writer.stories.upsert_entry(story.id, kind="place", name="Qasr",
                                text="A ruined fortress on the salt flats.")  # fmt: skip
    run(writer.step(story.id, plan="Idris appears at the well."))
    assert "one-eyed caravan master" in llm.prompts[-2]  # the paragraph's prompt
    assert "ruined fortress" not in llm.prompts[-2]


@pytest.mark.slow
def test_prompt_stays_bounded_over_500_steps(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'w.db'}")
    database.upgrade()
    store, _ = MemoryStore.open(database, ChromaVectorIndex(path=tmp_path / "c"), HashEmbedder())
    long = " ".join(f"dune{i} sand{i * 7}" for i in range(100))  # long, and no loop
    memory = " ".join(f"Mara remembers day {i}." for i in range(80))

    def reply(user: str, call: int) -> str:
        if "Rewrite the notes" in user:
            return notes(memory[:590], opening=opening(user))
        return echo(user, call) if "Give the story" in user else f"{long} Day {call}."

    llm = ScriptedLLM(reply)
    config = WriterConfig()
    writer = writer_for(store, llm, config)
    story, _ = run(writer.start("long", genre="adventure", premise="A courier."))
    sizes = []
    for i in range(500):
        node = run(writer.step(story.id, plan=f"Day {i}: keep walking through the dunes."))
        sizes.append(sum(p["tokens"] for p in node.prompt["parts"].values()))
    budgets = (config.short_term_tokens, config.recall_tokens, config.last_paragraph_tokens,
               config.bible_tokens, config.outline_tokens, config.instruction_tokens)  # fmt: skip
    bound = sum(budgets) + 400  # + the fixed instructions
    assert max(sizes) <= bound
    assert sizes[-1] <= sizes[9] * 1.1
