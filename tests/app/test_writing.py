"""app.writing: a story's lifetime through the composition, with the scripted LLM."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from app.loaders import load_document
from app.reading import Reading
from app.settings import load_settings
from app.writing import Writing, story_namespace
from memory import MemoryStore
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
    tree = Writing(fresh).tree
    assert tree.undo(story.id).id == root.id
    assert tree.switch(story.id, node.id).id == node.id
    assert (
        tree.edit_memory(story.id, node.id, "Mara is soaked.").short_term_memory
        == "Mara is soaked."
    )
    assert fresh._llm is None
