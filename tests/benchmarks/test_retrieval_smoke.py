"""The retrieval benchmark's core on a small synthetic haystack: fake embedder, real stores."""

from __future__ import annotations

import asyncio
import math
import random
import re
from pathlib import Path

import pytest

from benchmarks.chunks import Bm25, ChunkRetriever
from benchmarks.evalsets import LOCOMO_CATEGORIES, EvalSet, altqa, bamboo, locomo
from benchmarks.latency import latency
from benchmarks.needles import (
    EVAL_DATA,
    NEEDLES,
    Document,
    Question,
    boundaries,
    content_words,
    normalise,
    plant,
)
from benchmarks.retrieval import (
    BEFORE,
    DEFAULT,
    HYBRID,
    NEEDLE_SET,
    PLAIN,
    EpisodicRetriever,
    compare,
    fill_table,
    goal_lines,
    goals,
    kind_table,
    label,
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

    async def count_tokens(self, text: str) -> int:
        return len(text.split())


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


def conversation(turns: int, seed: int) -> tuple[str, list[Question]]:
    """A LoCoMo-like transcript and questions whose evidence is one or two of its turns."""
    rng = random.Random(seed)
    lines, questions = [], []
    for turn in range(turns):
        subject, thing, place = rng.sample(WORDS, 3)
        said = f"I {rng.choice(VERBS)} the {thing} near the {place} with my {subject}."
        lines.append(f"{'Ann' if turn % 2 else 'Bob'}: {said}")
        if turn % 7 == 3:
            evidence = (said,) if turn % 2 else (said, lines[-2].split(": ", 1)[1])
            kind = "single-hop" if len(evidence) == 1 else "multi-hop"
            questions.append(Question(f"Who was near the {place} with the {thing}?", "", kind,
                                      evidence=evidence))  # fmt: skip
    return "\n".join(lines) + "\n", questions


def test_evidence_recall_is_the_share_of_passages_found() -> None:
    question = Question("q", "", "multi-hop", evidence=("The cat sat.", "A dog  ran."))
    assert question.recall("the CAT sat. and more") == 0.5
    assert question.recall("a dog ran. The cat sat.") == 1.0
    assert Question("q", "Blue Gate", "direct").recall("the blue   gate is open") == 1.0
    assert Question("q", "Blue Gate", "direct").recall("the blue door") == 0.0


def test_bm25_ranks_rare_words_first_and_skips_texts_without_a_match() -> None:
    bm25 = Bm25(["the harbour and the boat", "the boat", "a meadow", "boat boat harbour tower"])
    assert [i for i, _ in bm25.top("harbour tower", 10)] == [3, 0]
    assert bm25.top("nothing here", 5) == []
    assert len(bm25.top("boat", 2)) == 2


def test_core_recalls_within_budget_and_prints_tables(store: MemoryStore) -> None:
    needles = [n for n in NEEDLES if n.kind == "direct"][:3]
    needles += [n for n in NEEDLES if n.kind == "later"][:3]
    planted = [
        plant(haystack(150, seed), needles, seed, dataset=NEEDLE_SET, name=name)
        for seed, name in enumerate(["one", "two"])
    ]
    text, questions = conversation(60, 4)
    sets = [
        EvalSet(NEEDLE_SET, "tuning", planted),
        EvalSet("LoCoMo", "held-out", [Document("LoCoMo", "talk", text, questions)]),
    ]
    config = SegmenterConfig(min_tokens=8, max_tokens=64)
    surprise = SurpriseSegmenter(
        LengthScorer(), config, context_tokens=400, embedder=store.embedder
    )
    retrievers = systems(store, approximate_tokens, surprise)
    whole = 2 * max(approximate_tokens(d.text) for s in sets for d in s.documents)
    budgets = [48, 512, whole]
    tallies, ingests = asyncio.run(compare(retrievers, sets, budgets, approximate_tokens))

    names = [r.name for r in retrievers]
    assert names == [DEFAULT, BEFORE, "Mneme fixed", "Mneme surprise", PLAIN, "chunks: BM25",
                     HYBRID]  # fmt: skip
    assert set(ingests) == {"embedding", "fixed", "surprise", "chunks"}  # one ingest per key
    labels = [label(s) for s in sets]
    for name in names:
        for key in labels:
            tally = tallies[(name, key)]
            assert tally.items == sum(len(d.questions) for d in sets[labels.index(key)].documents)
            assert all(u <= b for b in budgets for u in tally.used[b])
            assert all(0.0 <= r <= 1.0 for b in budgets for r in tally.scores[b])
            if name != "chunks: BM25":  # BM25 returns only chunks sharing a word
                assert tally.recall(whole) == 1.0, (name, key)  # everything fits
        assert tallies[(name, labels[0])].recall(48) < 1.0, name
    assert tallies[(DEFAULT, labels[0])].mean_used(512) >= 0.9 * 512  # the budget is used
    printed = recall_table(tallies, labels, names, budgets)
    for name in names:
        assert f"| {labels[0]} | {name} | {2 * len(needles)} |" in printed
    assert "| later |" in kind_table(tallies, labels[0], ["direct", "later"], names, budgets)
    assert "| multi-hop |" in kind_table(tallies, labels[1], ["multi-hop"], names, budgets)
    assert f"| {DEFAULT} |" in fill_table(tallies, labels, names, budgets)
    checks = goals(tallies, labels, [labels[1]], budgets)
    lines = goal_lines(checks)
    assert any("category 1 multi-hop" in line for line in lines)
    assert all(line.endswith(("MET", "n/a")) for line in lines)


def test_latency_copies_documents_into_the_corpus(store: MemoryStore) -> None:
    default, *_, hybrid = systems(store, approximate_tokens)
    assert isinstance(default, EpisodicRetriever) and isinstance(hybrid, ChunkRetriever)
    text = haystack(80)

    async def scenario() -> list[list[str]]:
        for retriever in (default, hybrid):
            await retriever.ingest(f"{retriever.key}:corpus", text, "book")
            await retriever.ingest(f"{retriever.key}:doc", text[: len(text) // 2], "doc")
        copies = [("doc", "doc"), ("corpus", "book")]
        return await latency([default, hybrid], store, copies, 1, ["Which bridge was painted?"])

    rows = asyncio.run(scenario())
    assert [row[0] for row in rows] == [DEFAULT, HYBRID]
    for retriever, row in zip((default, hybrid), rows, strict=True):
        held = store.episodes.page(f"{retriever.key}:corpus", limit=10**6)
        book = [e for e in held if e.document_id == held[0].document_id]
        assert int(row[2].replace(",", "")) == len(held) > 2 * len(book)
        copy = held[-len(book) :]  # the book's copy is stored last, in the same order
        assert [e.text for e in copy] == [e.text for e in book]
        assert math.isfinite(float(row[3])) and float(row[3]) <= float(row[4])


DATA = EVAL_DATA / "locomo" / "locomo10.json"


@pytest.mark.skipif(not DATA.is_file(), reason="../shared/eval-data is not here")
def test_public_sets_keep_only_verbatim_evidence() -> None:
    [talk] = locomo(DATA, lambda sample: sample == "conv-30")
    assert len(talk.questions) > 80
    assert {q.kind for q in talk.questions} <= set(LOCOMO_CATEGORIES.values())
    assert all(q.recall(talk.text) == 1.0 for q in talk.questions)  # every turn is in the text
    papers, _ = bamboo(EVAL_DATA / "bamboo" / "paperqa_4k.jsonl", 5)
    numbers, _ = altqa(EVAL_DATA / "bamboo" / "altqa_4k.jsonl", 5)
    for document in [*papers, *numbers]:
        [question] = document.questions
        assert question.evidence and question.recall(document.text) == 1.0
        without = normalise(document.text).replace(normalise(question.evidence[0]), " ")
        assert question.recall(without) < 1.0
