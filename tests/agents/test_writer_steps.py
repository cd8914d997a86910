"""RecurrentWriter's step machinery: streaming, cancellation, background memory and reranking."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence

import pytest

from agents.errors import AgentConfigError
from agents.writer_config import WriterConfig
from memory import MemoryStore
from tests.agents.test_writer import echo, run, writer_for
from tests.fakes import ScriptedLLM


def test_paragraph_streams_as_it_is_written(store: MemoryStore) -> None:
    writer = writer_for(store, ScriptedLLM(echo))
    seen: list[str] = []

    async def scenario() -> str:
        story, _ = await writer.start("story-1", genre="adventure", premise="A courier.")
        node = await writer.step(
            story.id,
            plan='Mara says "hello"\nand waves.',
            on_progress=lambda p: seen.append(p.paragraph) if p.phase == "paragraph" else None,
        )
        await writer.settle()
        return node.paragraph

    paragraph = run(scenario())
    assert len(seen) > 3  # several growing pieces, not one final answer
    assert all(b.startswith(a) for a, b in itertools.pairwise(seen))
    assert seen[-1] == paragraph and '"hello"\nand waves.' in paragraph  # what streamed is kept


def test_a_cancelled_step_stores_nothing(store: MemoryStore) -> None:
    started = asyncio.Event()
    writer = writer_for(store, ScriptedLLM(echo))

    async def scenario() -> tuple[int, int]:
        story, _ = await writer.start("story-1", genre="adventure", premise="A courier.")
        before = len(writer.stories.tree(story.id))
        task = asyncio.create_task(
            writer.step(story.id, plan="Go on.", on_progress=lambda _: started.set())
        )
        await started.wait()  # the paragraph is streaming: cancel it mid-way
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await writer.settle()
        return before, len(writer.stories.tree(story.id))

    before, after = run(scenario())
    assert after == before


def test_new_paragraphs_are_remembered_in_the_background(store: MemoryStore) -> None:
    llm = ScriptedLLM(echo)
    writer = writer_for(store, llm, WriterConfig(recall_tokens=200))

    async def scenario() -> tuple[list[int], list[int], str]:
        story, _ = await writer.start("story-1", genre="adventure", premise="A courier.")
        compass = await writer.step(story.id, plan="The keeper gave Mara a brass compass.")
        pending = list(writer.stories.node(story.id, compass.id).episode_ids)
        for i in range(4):
            await writer.step(story.id, plan=f"Walk day {i}, thinking of the brass compass.")
        await writer.settle()
        path = writer.stories.path(story.id, writer.stories.get(story.id).head_node_id or 0)
        return pending, [len(n.episode_ids) for n in path], llm.prompts[-2]

    pending, counts, last_prompt = run(scenario())
    assert pending == []  # not stored before the step returned ...
    assert all(counts)  # ... but every paragraph is in long-term memory once settled
    assert "brass compass." in last_prompt and "Earlier events" in last_prompt


def test_an_interrupted_ingest_is_repaired_by_the_next_step(
    store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    writer = writer_for(store, ScriptedLLM(echo))
    embed = store.embedder.embed
    failures = [1]

    def flaky(texts: Sequence[str]):  # type: ignore[no-untyped-def]
        if failures and any("lighthouse" in t for t in texts):
            failures.pop()
            raise OSError("the embedder went away")
        return embed(texts)

    store.embedder.embed = flaky  # type: ignore[method-assign]

    async def scenario() -> tuple[list[int], list[int]]:
        story, _ = await writer.start("story-1", genre="adventure", premise="A courier.")
        node = await writer.step(story.id, plan="The lighthouse burned.")
        await writer.settle()  # the background ingest failed (and was logged)
        lost = list(writer.stories.node(story.id, node.id).episode_ids)
        await writer.step(story.id, plan="Dawn.")
        await writer.step(story.id, plan="Noon.")  # recalls past the node: repairs it
        return lost, list(writer.stories.node(story.id, node.id).episode_ids)

    with caplog.at_level(logging.ERROR, logger="agents.writer"):
        lost, repaired = run(scenario())
    assert lost == [] and repaired
    assert "could not store the paragraph" in caplog.text


class LengthReranker:
    """Prefers longer continuations; records what it was asked."""

    name = "length"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def score(self, prefix: str, candidates: Sequence[str]) -> list[float]:
        self.calls.append((prefix, list(candidates)))
        return [float(len(c)) for c in candidates]

    def top(self, prefix: str, candidates: Sequence[str], k: int) -> list[object]:
        raise NotImplementedError


def test_reranking_keeps_the_best_of_several_drafts(store: MemoryStore) -> None:
    short = "A short paragraph of twelve words in which the caravan reaches the well."
    longer = short + " Then the night came down over the dunes, cold and full of stars."

    def drafts(user: str, call: int) -> str:
        if "Write the next paragraph" not in user:
            return echo(user, call)
        return longer if call % 3 == 0 else short

    reranker = LengthReranker()
    writer = writer_for(store, ScriptedLLM(drafts), WriterConfig(candidates=3))
    writer.reranker = reranker

    async def scenario() -> tuple[str, dict[str, object]]:
        story, _root = await writer.start("story-1", genre="adventure", premise="A courier.")
        node = await writer.step(story.id, plan="Go on.")
        await writer.settle()
        return node.paragraph, dict(node.metadata)

    paragraph, metadata = run(scenario())
    assert paragraph == longer
    ranking = metadata["rerank"]
    assert isinstance(ranking, dict) and ranking["scorer"] == "length"
    assert len(ranking["scores"]) == 3 and ranking["scores"][ranking["chosen"]] == max(
        ranking["scores"]
    )
    prefix, candidates = reranker.calls[-1]  # the step (the opening was drafted 3 times too)
    assert "Mara left the oasis" in prefix and len(candidates) == 3


def test_candidates_out_of_range_are_refused(store: MemoryStore) -> None:
    with pytest.raises(AgentConfigError, match="candidates=0 must be in"):
        writer_for(store, ScriptedLLM(echo), WriterConfig(candidates=0))


def test_deleting_a_story_mid_ingest_leaves_no_memory_behind(store: MemoryStore) -> None:
    writer = writer_for(store, ScriptedLLM(echo))

    async def scenario() -> str:
        story, _ = await writer.start("story-1", genre="adventure", premise="A courier.")
        await writer.step(story.id, plan="Go on.")  # its paragraph is still being stored
        store.delete_namespace(writer.stories.delete(story.id))
        await writer.settle()
        return story.namespace

    namespace = run(scenario())
    assert namespace not in [n.name for n in store.namespaces.all()]
