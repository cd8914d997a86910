"""The retrieval benchmark's core on a small synthetic haystack: fake embedder, real stores."""

from __future__ import annotations

import asyncio
import math
import random
import re
from pathlib import Path

import pytest

from benchmarks.needles import NEEDLES, Document, boundaries, content_words, normalise, plant
from benchmarks.retrieval import (
    ALL_NEEDLES,
    EpisodicRetriever,
    compare,
    goal,
    goal_lines,
    latency,
    recall_table,
    systems,
)
from memory import ChromaVectorIndex, Database, MemoryStore
from memory.segmentation import ScoredToken, SegmenterConfig, approximate_tokens
from memory.segmenters import SurpriseSegmenter
from tests.fakes import HashEmbedder

WORDS = re.findall(
    r"\w+",
    "market river council harvest engine letter window winter garden station ledger valley "
    "teacher journey village kitchen museum factory harbour bridge meadow library tower",
)
VERBS = re.findall(r"\w+", "visited repaired described ignored painted measured opened counted")


def haystack(sentences: int, seed: int = 0) -> str:
    """Plain sentences of common words, none of them a needle's answer."""
    rng = random.Random(seed)
    out = []
    for _ in range(sentences):
        subject, thing, place = rng.sample(WORDS, 3)
        out.append(f"The {subject} {rng.choice(VERBS)} the {thing} near the {place}.")
    return " ".join(out) + "\n"


class LengthScorer:
    """A TokenScorer: words are tokens; a word's surprise is its length."""

    async def score(self, text: str) -> list[ScoredToken]:
        words = list(re.finditer(r"\S+\s*", text))
        return [
            ScoredToken(m.group(), m.start(), m.end(), None if i == 0 else float(len(m.group())))
            for i, m in enumerate(words)
        ]


@pytest.fixture
def store(tmp_path: Path) -> MemoryStore:
    database = Database(f"sqlite:///{tmp_path / 'mneme.db'}")
    database.upgrade()
    return MemoryStore(database, ChromaVectorIndex(path=tmp_path / "chroma"), HashEmbedder())


def test_later_answers_share_no_word_with_their_question() -> None:
    for needle in NEEDLES:
        holder = needle.answer_sentence if needle.kind == "later" else needle.fact
        assert normalise(needle.answer) in normalise(holder), needle
        if needle.kind == "later":
            shared = content_words(needle.question) & content_words(needle.answer_sentence)
            assert not shared, (needle.question, shared)
    assert len({normalise(n.answer) for n in NEEDLES}) == len(NEEDLES)


def test_plant_spreads_needles_and_keeps_answers_a_few_sentences_after_setups() -> None:
    text = haystack(400)
    document = plant(text, NEEDLES, seed=3, dataset="needles: test", name="test")
    assert len(document.questions) == len(NEEDLES)
    depths = sorted(q.depth for q in document.questions)
    assert depths[0] < 1 / len(NEEDLES) and depths[-1] > 1 - 1 / len(NEEDLES)
    for needle in NEEDLES:
        assert document.text.count(needle.fact) == 1
        if needle.kind == "later":
            setup = document.text.index(needle.fact)
            answer = document.text.index(needle.answer_sentence)
            between = document.text[setup + len(needle.fact) : answer]
            assert 2 <= len(boundaries(between)) + 1 <= 3  # haystack sentences in between
    with pytest.raises(ValueError, match="already occur"):
        plant(text + NEEDLES[0].fact, NEEDLES[:1], seed=0, dataset="d", name="n")


def test_core_recalls_within_budget_and_prints_tables(store: MemoryStore) -> None:
    needles = [n for n in NEEDLES if n.kind == "direct"][:3]
    needles += [n for n in NEEDLES if n.kind == "later"][:3]
    documents = [
        plant(haystack(150, seed), needles, seed, dataset=f"needles: {name}", name=name)
        for seed, name in enumerate(["one", "two"])
    ]
    documents.append(Document("other", "other", haystack(60, 9) + "The gate is blue.\n", []))
    config = SegmenterConfig(min_tokens=8, max_tokens=64)
    surprise = SurpriseSegmenter(
        LengthScorer(), config, context_tokens=400, embedder=store.embedder
    )
    retrievers = systems(store, approximate_tokens, surprise)
    whole = 2 * max(approximate_tokens(d.text) for d in documents)  # everything fits
    budgets = [48, 256, whole]
    tallies, outcomes = asyncio.run(compare(retrievers, documents, budgets, approximate_tokens))

    names = [r.name for r in retrievers]
    assert names == ["embedding", "surprise", "fixed", "chunks"]
    assert all(o.tokens <= o.budget for o in outcomes)
    for name in names:
        pooled = tallies[(name, ALL_NEEDLES)]
        assert pooled.questions == 2 * len(needles)
        assert all(0.0 <= pooled.recall(b) <= 1.0 for b in budgets)
        assert pooled.recall(whole) == 1.0, name  # all text returned: every answer is in it
        assert pooled.recall(48) < 1.0, name  # 48 tokens cannot hold setup and answer apart
    printed = recall_table(tallies, budgets)
    for name in names:
        assert f"| needles: one | {name} | {len(needles)} |" in printed
    assert "| other |" in printed  # a document without questions still gets a row
    assert "| later |" in recall_table(tallies, budgets, kinds=True)
    result = goal(tallies, names[:-1], "chunks")
    lines = goal_lines(result)
    assert len(lines) == 3 and all(("NOT MET" in s) or ("MET" in s) for s in lines[1:])


def test_latency_copies_documents_into_the_corpus(store: MemoryStore) -> None:
    embedding, *_, chunks = systems(store, approximate_tokens)
    assert isinstance(embedding, EpisodicRetriever)
    text = haystack(80)

    async def scenario() -> list[list[str]]:
        for retriever in (embedding, chunks):
            await retriever.ingest(f"{retriever.name}:corpus", text, "book")
            await retriever.ingest(f"{retriever.name}:doc", text[: len(text) // 2], "doc")
        copies = [("doc", "doc"), ("corpus", "book")]
        return await latency([embedding, chunks], store, copies, 1, ["Which bridge was painted?"])

    rows = asyncio.run(scenario())
    assert [row[0] for row in rows] == ["embedding", "chunks"]
    for retriever, row in zip((embedding, chunks), rows, strict=True):
        held = store.episodes.page(f"{retriever.name}:corpus", limit=10**6)
        book = [e for e in held if e.document_id == held[0].document_id]
        assert int(row[2].replace(",", "")) == len(held) > 2 * len(book)
        copy = held[-len(book) :]  # the book's copy is stored last, in the same order
        assert [e.text for e in copy] == [e.text for e in book]
        assert math.isfinite(float(row[3])) and float(row[3]) <= float(row[4])
