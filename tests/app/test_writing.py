"""app.writing: a story's lifetime through the composition, with the scripted LLM."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from app.loaders import load_document
from app.reading import Reading
from app.settings import load_settings
from app.story_runs import StoryRuns
from app.writing import Writing, story_namespace
from memory import MemoryStore, NotFound
from memory.errors import InvalidRecord
from tests.agents.test_writer import echo, notes
from tests.fakes import ScriptedLLM
from tests.texts import story


def test_story_lifetime(store: MemoryStore, tmp_path: Path) -> None:
    reading = Reading(load_settings(home=tmp_path), store=store, llm=ScriptedLLM(echo))
    writing = Writing(reading)
    story, _ = asyncio.run(writing.start("adventure", "A courier crosses the desert."))

    async def step() -> None:
        await writing.writer.step(story.id, plan="A storm rises.")
        await writing.writer.settle()

    asyncio.run(step())
    markdown = writing.markdown(story.id)
    assert markdown.startswith("# The Salt Road") and "A storm rises." in markdown
    assert store.episodes.count(story.namespace) >= 2
    writing.delete(story.id)
    assert writing.stories.all() == []
    assert story.namespace not in [n.name for n in store.namespaces.all()]


def test_namespaces_are_fresh_and_safe() -> None:
    first, second = story_namespace("The Salt Road!"), story_namespace("The Salt Road!")
    assert first != second and first.startswith("story-the-salt-road-")
    assert story_namespace("???").startswith("story-untitled-")


def test_exports_round_trip_through_the_loaders(store: MemoryStore, tmp_path: Path) -> None:
    reading = Reading(load_settings(home=tmp_path), store=store, llm=ScriptedLLM(echo))
    writing = Writing(reading)
    story, _ = asyncio.run(writing.start("adventure", "A courier crosses the desert."))

    async def step() -> None:
        await writing.writer.step(story.id, plan="A storm rises.")
        await writing.writer.settle()

    asyncio.run(step())
    for kind, data in (("docx", writing.docx(story.id)), ("epub", writing.epub(story.id))):
        path = tmp_path / f"story.{kind}"
        path.write_bytes(data)
        loaded = load_document(path)
        assert loaded.title == "The Salt Road"
        assert "A storm rises." in loaded.text and "Mara left the oasis" in loaded.text


IMPORTED = json.dumps(
    {
        "title": "ignored: the file's title wins",
        "outline": "A lighthouse keeper's long watch.",
        "bible": [{"kind": "character", "name": "Keeper", "text": "Tends the great lens."}],
    }
)
IMPORTED_NOTES = notes(
    "The keeper waits for the supply boat.",
    plans=["The boat arrives.", "A storm hits the rock.", "The lamp fails at night."],
)


def imported(user: str, call: int) -> str:
    return IMPORTED_NOTES if "Rewrite the notes" in user else IMPORTED


def test_import_a_manuscript_seeds_memory_and_bible(store: MemoryStore, tmp_path: Path) -> None:
    reading = Reading(load_settings(home=tmp_path), store=store,
                      llm=ScriptedLLM(imported))  # fmt: skip
    writing = Writing(reading)
    manuscript = tmp_path / "The Long Watch.md"
    manuscript.write_text(story(30, "\n\n"), encoding="utf-8")  # ~2,000 tokens
    story_, root = asyncio.run(writing.import_manuscript(manuscript, genre="literary"))
    assert story_.title == "The Long Watch" and len(root.plans) == 3
    assert root.short_term_memory == "The keeper waits for the supply boat."
    assert [e.name for e in writing.stories.entries(story_.id)] == ["Keeper"]
    assert store.episodes.count(story_.namespace) == len(root.episode_ids) > 3
    prompt = root.prompt["notes"]["messages"][1]["content"]
    assert "The newest paragraph" in prompt and root.paragraph[-200:] in prompt


def test_drafts_are_reranked_with_the_configured_scorer(store: MemoryStore, tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, writer_candidates=3, rerank_scorer="embedder")
    writing = Writing(Reading(settings, store=store, llm=ScriptedLLM(echo)))

    async def scenario() -> dict[str, object]:
        story, _ = await writing.start("adventure", "A courier crosses the desert.")
        node = await writing.writer.step(story.id, plan="A storm rises.")
        await writing.writer.settle()
        return dict(node.metadata)

    ranking = asyncio.run(scenario())["rerank"]
    assert (
        isinstance(ranking, dict) and ranking["scorer"] == f"embedder:{store.embedder.model_name}"
    )
    assert len(ranking["scores"]) == 3


def test_tree_moves_load_no_model(store: MemoryStore, tmp_path: Path) -> None:
    writing = Writing(Reading(load_settings(home=tmp_path), store=store, llm=ScriptedLLM(echo)))
    story, root = asyncio.run(writing.start("adventure", "A courier crosses the desert."))
    node = asyncio.run(writing.writer.step(story.id, plan="A storm rises."))
    fresh = Reading(load_settings(home=tmp_path), store=store)  # no model given: none loaded yet
    moves = Writing(fresh)
    assert moves.undo(story.id).id == root.id
    assert moves.branch(story.id, node.id).id == node.id
    assert (
        moves.edit_memory(story.id, node.id, "Mara is soaked.").short_term_memory
        == "Mara is soaked."
    )
    assert fresh._llm is None


def test_the_surfaces_use_cases_change_what_the_store_holds(
    store: MemoryStore, tmp_path: Path
) -> None:
    writing = Writing(Reading(load_settings(home=tmp_path), store=store, llm=ScriptedLLM(echo)))
    story, root = asyncio.run(writing.start("adventure", "A courier crosses the desert."))
    node = asyncio.run(writing.step(story.id, plan="A storm rises."))
    assert [s.id for s in writing.list_stories()] == [story.id]
    assert writing.story(story.id).head_node_id == node.id
    assert [n.id for n in writing.path(story.id, node.id)] == [root.id, node.id]
    assert writing.transcript(story.id, node.id, 1) == [("A storm rises.", node.paragraph)]
    tree = [(node_id, parent) for node_id, parent, _ in writing.previews(story.id)]
    assert tree == [(root.id, None), (node.id, root.id)]
    assert writing.rename(story.id, "Dunes").title == writing.story(story.id).title == "Dunes"
    assert writing.save_draft(story.id, "Mara digs.").metadata["draft"] == "Mara digs."
    assert writing.story(story.id).metadata["draft"] == "Mara digs."
    edited = asyncio.run(writing.edit_paragraph(story.id, node.id, "Sand fills the sky."))
    assert writing.node(story.id, node.id).paragraph == edited.paragraph == "Sand fills the sky."
    assert edited.metadata["versions"][0]["paragraph"] == node.paragraph
    entry = writing.save_entry(story.id, kind="place", name="Oasis", text="Palms and a well.")
    assert writing.entries(story.id) == [entry]
    writing.delete_entry(story.id, entry.id)
    assert writing.entries(story.id) == []


def test_suggested_entries_are_accepted_or_dismissed_once(
    store: MemoryStore, tmp_path: Path
) -> None:
    writing = Writing(Reading(load_settings(home=tmp_path), store=store, llm=ScriptedLLM(echo)))
    story, root = asyncio.run(writing.start("adventure", "A courier crosses the desert."))
    idris = {"kind": "character", "name": "Idris", "text": "A caravan master."}
    well = {"kind": "place", "name": "The well", "text": "Dry since spring."}
    writing.stories.update_node(story.id, root.id, metadata={"bible_suggestions": [idris, well]})
    assert writing.accept_suggestion(story.id, root.id, 0).name == "Idris"
    assert writing.node(story.id, root.id).metadata["bible_suggestions"] == [well]
    assert writing.dismiss_suggestion(story.id, root.id, 0).metadata["bible_suggestions"] == []
    assert [e.name for e in writing.entries(story.id)] == ["Idris"]
    with pytest.raises(NotFound, match="no suggested entry 0"):
        writing.accept_suggestion(story.id, root.id, 0)  # gone: another tab took it


def test_a_branchs_events_are_listed_searched_pinned_and_forgotten(
    store: MemoryStore, tmp_path: Path
) -> None:
    writing = Writing(Reading(load_settings(home=tmp_path), store=store, llm=ScriptedLLM(echo)))
    story, root = asyncio.run(writing.start("adventure", "A courier crosses the desert."))

    async def step(plan: str) -> int:
        node = await writing.step(story.id, plan=plan)
        await writing.writer.settle()
        return node.id

    storm = asyncio.run(step("A storm rises."))
    writing.undo(story.id)
    well = asyncio.run(step("She finds a well."))
    events = asyncio.run(writing.events(story.id, well))
    expected = [*root.episode_ids, *writing.node(story.id, well).episode_ids]
    assert [e.id for e in events] == expected  # the other branch's step is not on this one
    assert not set(writing.node(story.id, storm).episode_ids) & {e.id for e in events}
    hits = asyncio.run(writing.search_events(story.id, well, "a well in the desert"))
    assert hits and {h.episode_id for h in hits} <= set(expected)
    first = events[0].id
    assert asyncio.run(writing.pin_event(story.id, first)).pinned
    with pytest.raises(InvalidRecord, match="pinned"):
        asyncio.run(writing.forget_event(story.id, first))
    asyncio.run(writing.pin_event(story.id, first, False))
    asyncio.run(writing.forget_event(story.id, first))
    assert first not in [e.id for e in asyncio.run(writing.events(story.id, well))]
    novelty = writing.novelty(["a well", "a well", "a storm over the sea"])
    assert novelty[0] == 1.0 and novelty[1] == pytest.approx(0.0, abs=1e-4) and novelty[2] > 0.1
    assert writing.novelty([]) == []


def test_two_steps_asked_at_once_start_one_run(store: MemoryStore, tmp_path: Path) -> None:
    writing = Writing(Reading(load_settings(home=tmp_path), store=store, llm=ScriptedLLM(echo)))
    story, _ = asyncio.run(writing.start("adventure", "A courier crosses the desert."))

    async def both() -> list[object]:
        runs = StoryRuns(writing)
        asked = await asyncio.gather(
            runs.step(story.id, plan="A storm rises."),
            runs.step(story.id, plan="A well runs dry."),
            return_exceptions=True,
        )
        for job in asked:
            if not isinstance(job, BaseException):
                await runs.wait(job.id)
        return asked

    asked = asyncio.run(both())
    assert sorted(type(a).__name__ for a in asked) == ["Conflict", "Job"]
    head = writing.story(story.id).head_node_id
    assert head is not None and len(writing.path(story.id, head)) == 2  # the opening and a step
