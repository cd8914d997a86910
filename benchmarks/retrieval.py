"""Retrieval benchmark: EpisodicMemory against fixed-size-chunk RAG in one run; prints Markdown.

Run ``python -m benchmarks.retrieval`` (``--quick`` for a smoke run, ``--json PATH`` to keep the
numbers). Every system uses the same real embedder (all-MiniLM-L6-v2, bundled), real Chroma
and SQLite through ``MemoryStore``, and counts tokens with tiktoken's cl100k_base, so budgets
are comparable:

- ``embedding``: EpisodicMemory with EmbeddingSegmenter (sentence-novelty events);
- ``surprise``: EpisodicMemory with SurpriseSegmenter, token surprise from the real tiny model
  stories260K (``LLMTokenScorer`` over ``LocalLLM.token_logprobs``), boundaries refined with
  the embedder as EM-LLM does;
- ``fixed``: EpisodicMemory with FixedSegmenter (windows at sentence ends) — the ablation:
  two-stage recall without event boundaries;
- ``chunks``: the baseline, LangChain's RecursiveCharacterTextSplitter (512 characters, 50 of
  overlap) stored as episodes of their own namespace; the top chunks by similarity are packed
  greedily, best first, into the budget (the same packing EpisodicMemory uses).

Each document goes into its own namespace per system. Recall@B is the fraction of questions
whose answer string occurs (lower-cased, whitespace collapsed) in the text a system returns
within B tokens. Search settings follow one rule for every dataset, never tuned on answers:
EpisodicMemory takes ``k_similar = k_contiguous = ceil(B / (2 x mean episode tokens))``
(``B // 128`` for 128-token events), so its candidates hold about the budget whatever the event
size; the baseline asks for ``B // 32`` chunks, more than fit, so it can fill the budget.
Datasets (``benchmarks.needles``): Paul Graham essays and a Gutenberg novel with planted needles,
and the L-Eval closed-ended items whose answer occurs verbatim in their document. An ablation
then re-asks the needle questions of each EpisodicMemory variant under other k rules
(``K_RULES``, including no contiguity buffer at all): searches only, nothing re-ingested.

Then ingestion throughput (tokens/s, wall time) of each system on a ~300k-token book, and
search latency at a 512-token budget over ~1M tokens, EpisodicMemory (embedding) against the
baseline. The latency corpora hold the book as ingested, then the evaluation documents and
further copies of the book stored again with the vectors already computed (``copy_document``):
embedding 1M tokens takes longer on two cores than the whole run may.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from langchain_text_splitters import RecursiveCharacterTextSplitter

from benchmarks.needles import (
    EVAL_DATA,
    NEEDLES,
    Document,
    essays,
    leval,
    leval_queries,
    normalise,
    plant,
    read_book,
    truncate,
)
from memory import ChromaVectorIndex, Database, Embedder, Episode, MemoryStore, NewEpisode
from memory.episodic import EpisodicMemory
from memory.retrieval import Reason, pack
from memory.segmentation import SegmenterConfig
from memory.segmenters import EmbeddingSegmenter, FixedSegmenter, Segmenter, SurpriseSegmenter

Count = Callable[[str], int]
BUDGETS = (256, 512, 1024)
GOAL_BUDGET = 512
GOAL_MARGIN = 0.10  # EpisodicMemory's best variant over the baseline, on planted needles
GOAL_ABSOLUTE = 0.90
CHUNK_SIZE = 512  # characters per baseline chunk
CHUNK_OVERLAP = 50  # characters shared by neighbouring chunks
NOVEL = "84-0.txt"  # Frankenstein: the needle novel
BOOK = "2701-0.txt"  # Moby-Dick (~290k tokens): the throughput book
WARMUP = 5  # searches run before latency timing starts


KRule = Callable[[int, float], tuple[int, int]]
"""(budget, mean episode tokens of the namespace) → (k_similar, k_contiguous)."""


def fill_budget(budget: int, mean_tokens: float) -> tuple[int, int]:
    """The rule of every table but the ablation: as many hits as neighbours, together about
    the budget (``budget // 128`` each for 128-token events; smaller events get more)."""
    k = max(1, math.ceil(budget / (2 * mean_tokens)))
    return k, k


def per_128(budget: int, mean_tokens: float) -> tuple[int, int]:
    """The brief's example: ``budget // 128`` of each, whatever the event size."""
    return max(1, budget // 128), max(1, budget // 128)


def contiguity_heavy(budget: int, mean_tokens: float) -> tuple[int, int]:
    """Half the hits of ``fill_budget`` and three neighbours per hit."""
    k = max(1, math.ceil(budget / (4 * mean_tokens)))
    return k, 3 * k


def similarity_only(budget: int, mean_tokens: float) -> tuple[int, int]:
    """No contiguity buffer: hits alone fill the budget."""
    return max(1, math.ceil(budget / mean_tokens)), 0


K_RULES: dict[str, KRule] = {
    "fill (used above)": fill_budget,
    "budget // 128": per_128,
    "3 neighbours per hit": contiguity_heavy,
    "no contiguity": similarity_only,
}


def chunk_candidates(budget: int) -> int:
    """Chunks the baseline asks for at ``budget`` tokens (512-character chunks are ~115)."""
    return max(4, budget // 32)


def log(message: str, began: float = time.perf_counter()) -> None:
    print(f"[{time.perf_counter() - began:7.1f} s] {message}", file=sys.stderr, flush=True)


class Retriever(Protocol):
    """A system under test: stores texts per namespace, returns text for a query in a budget."""

    @property
    def name(self) -> str: ...

    async def ingest(self, namespace: str, text: str, name: str) -> list[int]:
        """Store ``text``; the token count of each stored unit (episode or chunk)."""
        ...

    async def recall(self, namespace: str, query: str, budget: int) -> list[str]:
        """Texts returned for ``query`` within ``budget`` tokens."""
        ...


@dataclass(frozen=True, slots=True)
class EpisodicRetriever:
    name: str
    store: MemoryStore
    segmenter: Segmenter
    count_tokens: Count
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # namespace → tokens, units
    rule: KRule = fill_budget

    def memory(self, namespace: str) -> EpisodicMemory:
        return EpisodicMemory(self.store, namespace, self.segmenter, count_tokens=self.count_tokens)

    async def ingest(self, namespace: str, text: str, name: str) -> list[int]:
        ingested = await self.memory(namespace).ingest(text, name=name)
        units = [e.token_count for e in ingested.episodes]
        tokens, count = self.sizes.get(namespace, (0, 0))
        self.sizes[namespace] = (tokens + sum(units), count + len(units))
        return units

    def mean_tokens(self, namespace: str) -> float:
        """Mean tokens of the episodes ingested into ``namespace`` (128 before any)."""
        tokens, count = self.sizes.get(namespace, (0, 0))
        return tokens / count if count else 128.0

    async def recall(self, namespace: str, query: str, budget: int) -> list[str]:
        k_s, k_c = self.rule(budget, self.mean_tokens(namespace))
        found = await self.memory(namespace).search(
            query, budget_tokens=budget, k_similar=k_s, k_contiguous=k_c
        )
        return [r.text for r in found]


@dataclass(frozen=True, slots=True)
class ChunkRetriever:
    """Fixed-size character chunks (LangChain) in a namespace of their own: classic RAG."""

    store: MemoryStore
    count_tokens: Count
    name: str = "chunks"
    splitter: RecursiveCharacterTextSplitter = field(
        default_factory=lambda: RecursiveCharacterTextSplitter(
            chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP, add_start_index=True
        )
    )

    async def ingest(self, namespace: str, text: str, name: str) -> list[int]:
        new = [
            NewEpisode(
                text=chunk.page_content,
                start_char=chunk.metadata["start_index"],
                end_char=chunk.metadata["start_index"] + len(chunk.page_content),
                token_count=self.count_tokens(chunk.page_content),
            )
            for chunk in self.splitter.create_documents([text])
        ]
        vectors = await asyncio.to_thread(self.store.embedder.embed, [e.text for e in new])
        _, stored = await asyncio.to_thread(
            self.store.add_document, namespace, name, text, new, vectors
        )
        return [e.token_count for e in stored]

    async def recall(self, namespace: str, query: str, budget: int) -> list[str]:
        hits = await asyncio.to_thread(
            self.store.search, namespace, query, chunk_candidates(budget)
        )
        ranked: list[tuple[Episode, float, Reason]] = [
            (h.episode, h.score, "similarity") for h in hits
        ]
        return [r.text for r in pack(ranked, budget, self.count_tokens)]


# -- recall ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """Recall of one system on one dataset (or on one kind of needle)."""

    questions: int = 0
    hits: dict[int, int] = field(default_factory=dict)  # budget → questions answered
    used: dict[int, int] = field(default_factory=dict)  # budget → tokens returned, summed
    units: list[int] = field(default_factory=list)  # tokens of each stored episode or chunk

    def recall(self, budget: int) -> float:
        return self.hits.get(budget, 0) / self.questions if self.questions else float("nan")

    def mean_used(self, budget: int) -> float:
        return self.used.get(budget, 0) / self.questions if self.questions else float("nan")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One question asked of one system at one budget (kept for the JSON report)."""

    system: str
    document: str
    kind: str
    depth: float
    budget: int
    found: bool
    tokens: int


Tallies = dict[tuple[str, str], Tally]
ALL_NEEDLES = "needles: all"


async def compare(
    retrievers: Sequence[Retriever],
    documents: Sequence[Document],
    budgets: Sequence[int],
    count_tokens: Count,
) -> tuple[Tallies, list[Outcome]]:
    """Ingest every document into every system (a namespace each) and ask its questions.

    Tallies are keyed (system, dataset); planted needles are also pooled under
    ``ALL_NEEDLES`` and split by kind under ("system", "kind: direct" / "kind: later").
    """
    tallies: Tallies = {}
    outcomes: list[Outcome] = []

    def tally(system: str, key: str) -> Tally:
        return tallies.setdefault((system, key), Tally())

    for retriever in retrievers:
        for document in documents:
            namespace = f"{retriever.name}:{document.name}"
            began = time.perf_counter()
            units = await retriever.ingest(namespace, document.text, document.name)
            seconds = time.perf_counter() - began
            log(f"{retriever.name}: ingested {document.name} ({len(units)} units, {seconds:.1f} s)")
            needles = document.dataset.startswith("needles")
            rows = [tally(retriever.name, document.dataset)]
            if needles:
                rows.append(tally(retriever.name, ALL_NEEDLES))
            for row in rows:
                row.units += units
            for question in document.questions:
                keys = [*rows, tally(retriever.name, f"kind: {question.kind}")] if needles else rows
                for row in keys:
                    row.questions += 1
                for budget in budgets:
                    texts = await retriever.recall(namespace, question.query, budget)
                    found = normalise(question.answer) in normalise(" ".join(texts))
                    used = sum(count_tokens(t) for t in texts)
                    for row in keys:
                        row.hits[budget] = row.hits.get(budget, 0) + found
                        row.used[budget] = row.used.get(budget, 0) + used
                    outcomes.append(
                        Outcome(
                            retriever.name,
                            document.name,
                            question.kind,
                            question.depth,
                            budget,
                            found,
                            used,
                        )
                    )
    return tallies, outcomes


def table(header: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def recall_table(tallies: Tallies, budgets: Sequence[int], *, kinds: bool = False) -> str:
    """Rows = dataset (or needle kind) x system, in the order they were measured."""
    keys = [k for k in tallies if k[1].startswith("kind: ") == kinds]
    datasets = sorted(dict.fromkeys(d for _, d in keys), key=lambda d: d == ALL_NEEDLES)
    datasets.sort(key=lambda d: not d.startswith("needles"))  # needles first, pooled row last
    keys.sort(key=lambda k: datasets.index(k[1]))  # stable: systems stay in their order
    middle = min(budgets, key=lambda b: abs(b - GOAL_BUDGET))
    header = ["dataset" if not kinds else "needles", "system", "questions"]
    header += [f"recall@{b}" for b in budgets] + [f"tokens used @{middle}"]
    if not kinds:
        header += ["episodes / chunks", "mean tokens"]
    rows = []
    for system, dataset in keys:
        t = tallies[(system, dataset)]
        row = [dataset.removeprefix("kind: "), system, str(t.questions)]
        row += [f"{t.recall(b):.3f}" for b in budgets] + [f"{t.mean_used(middle):.0f}"]
        if not kinds:
            row += [f"{len(t.units):,}", f"{np.mean(t.units):.0f}" if t.units else "-"]
        rows.append(row)
    return table(header, rows)


@dataclass(frozen=True, slots=True)
class Goal:
    best: str  # the EpisodicMemory variant with the highest needle recall at the goal budget
    best_recall: float
    baseline_recall: float
    margin_met: bool
    absolute_met: bool


def goal(tallies: Tallies, episodic: Sequence[str], baseline: str) -> Goal:
    """At ``GOAL_BUDGET`` on planted needles: best variant - baseline ≥ 10 points, and ≥ 0.9."""
    scores = {name: tallies[(name, ALL_NEEDLES)].recall(GOAL_BUDGET) for name in episodic}
    best = max(scores, key=lambda name: scores[name])
    base = tallies[(baseline, ALL_NEEDLES)].recall(GOAL_BUDGET)
    margin = scores[best] - base >= GOAL_MARGIN - 1e-9
    return Goal(best, scores[best], base, margin, scores[best] >= GOAL_ABSOLUTE - 1e-9)


def goal_lines(result: Goal) -> list[str]:
    def met(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    difference = 100 * (result.best_recall - result.baseline_recall)
    return [
        f"- best EpisodicMemory variant on planted needles at {GOAL_BUDGET} tokens: "
        f"{result.best}, recall {result.best_recall:.3f}; baseline (chunks) "
        f"{result.baseline_recall:.3f}",
        f"- margin {difference:+.1f} points (goal ≥ +{100 * GOAL_MARGIN:.0f}): "
        f"{met(result.margin_met)}",
        f"- absolute {result.best_recall:.3f} (goal ≥ {GOAL_ABSOLUTE:.2f}): "
        f"{met(result.absolute_met)}",
    ]


async def ablation(
    retrievers: Sequence[Retriever], documents: Sequence[Document], budgets: Sequence[int]
) -> list[list[str]]:
    """Needle recall of each EpisodicMemory variant under every rule of ``K_RULES``.

    Searches only: the documents must already be ingested (by :func:`compare`).
    """
    rows = []
    for retriever in retrievers:
        if not isinstance(retriever, EpisodicRetriever):
            continue
        first = f"{retriever.name}:{documents[0].name}"
        for label, rule in K_RULES.items():
            variant = replace(retriever, rule=rule)
            hits = dict.fromkeys(budgets, 0)
            for document in documents:
                namespace = f"{retriever.name}:{document.name}"
                for question in document.questions:
                    for budget in budgets:
                        texts = await variant.recall(namespace, question.query, budget)
                        hits[budget] += normalise(question.answer) in normalise(" ".join(texts))
            asked = sum(len(d.questions) for d in documents)
            pairs = [rule(b, retriever.mean_tokens(first)) for b in budgets]
            ks = ", ".join(f"{k_s}+{k_c}" for k_s, k_c in pairs)
            rows.append([retriever.name, label, ks, *(f"{hits[b] / asked:.3f}" for b in budgets)])
        log(f"{retriever.name}: k-rule ablation done")
    return rows


# -- speed ----------------------------------------------------------------------------------


async def throughput(
    retrievers: Sequence[Retriever], book: str, count_tokens: Count
) -> list[list[str]]:
    """Tokens/s of ingesting ``book`` into each system's ``corpus`` namespace (wall time)."""
    tokens = count_tokens(book)
    rows = []
    for retriever in retrievers:
        began = time.perf_counter()
        units = await retriever.ingest(f"{retriever.name}:corpus", book, "book")
        seconds = time.perf_counter() - began
        log(f"{retriever.name}: book ingested at {tokens / seconds:,.0f} tokens/s")
        rate = [f"{tokens:,}", f"{seconds:,.1f}", f"{tokens / seconds:,.0f}"]
        rows.append([retriever.name, *rate, f"{len(units):,}", f"{np.mean(units):.0f}"])
    return rows


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    p50, p99 = np.percentile(np.array(seconds) * 1000.0, [50, 99])
    return float(p50), float(p99)


def copy_document(store: MemoryStore, source: str, name: str, target: str) -> None:
    """Store document ``name`` of namespace ``source`` again in ``target``, vectors and all.

    Nothing is re-embedded: this is how the latency corpus reaches ~1M tokens on two cores.
    """
    document = store.documents.find(source, name=name)[0]
    episodes = store.episodes.page(source, document_id=document.id, limit=10**9)
    space = store.namespaces.get(source)
    ids, vectors = store.episodes.embeddings(space.id, [e.id for e in episodes])
    row = {episode_id: i for i, episode_id in enumerate(ids)}
    new = [
        NewEpisode(
            text=e.text,
            start_char=e.start_char,
            end_char=e.end_char,
            token_count=e.token_count,
            surprise_mean=e.surprise_mean,
            surprise_max=e.surprise_max,
        )
        for e in episodes
    ]
    text = "".join(e.text for e in episodes)
    store.add_document(
        target, f"{source}/{name}", text, new, vectors[[row[e.id] for e in episodes]]
    )


async def latency(
    retrievers: Sequence[Retriever],
    store: MemoryStore,
    copies: Sequence[tuple[str, str]],
    tokens: int,
    queries: Sequence[str],
) -> list[list[str]]:
    """Search latency at ``GOAL_BUDGET`` in each system's ``corpus`` namespace.

    First each (namespace suffix, document name) in ``copies`` is copied into it; ``tokens`` is
    then the corpus size. Each search includes embedding the query; systems run in turn.
    """
    rows = []
    for retriever in retrievers:
        namespace = f"{retriever.name}:corpus"
        for suffix, name in copies:
            await asyncio.to_thread(
                copy_document, store, f"{retriever.name}:{suffix}", name, namespace
            )
        units = store.episodes.count(namespace)
        log(f"{retriever.name}: corpus of {tokens:,} tokens, {units:,} units; timing searches")
        for query in queries[:WARMUP]:
            await retriever.recall(namespace, query, GOAL_BUDGET)
        seconds = []
        for query in queries:
            began = time.perf_counter()
            await retriever.recall(namespace, query, GOAL_BUDGET)
            seconds.append(time.perf_counter() - began)
        p50, p99 = percentiles(seconds)
        rows.append([retriever.name, f"{tokens:,}", f"{units:,}", f"{p50:.1f}", f"{p99:.1f}"])
    return rows


# -- setup ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    quick: bool
    budgets: tuple[int, ...]
    haystack_tokens: int  # each needle haystack
    needles: int  # planted in each haystack (half direct, half later)
    mc_sets: tuple[str, ...]  # L-Eval multiple-choice sets (all their usable items)
    topic_documents: int  # L-Eval topic-retrieval documents
    book: str  # Gutenberg file of the throughput book
    book_tokens: int
    corpus_tokens: int  # ingested before timing searches
    queries: int  # timed searches per system
    seed: int
    json: Path | None
    data: Path
    tiny: Path
    recall_only: bool = False


def parse(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.retrieval", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small inputs: under 3 minutes")
    parser.add_argument("--json", type=Path, help="also write every number to this JSON file")
    parser.add_argument("--seed", type=int, default=0, help="seed of needle order and depths")
    parser.add_argument(
        "--recall-only", action="store_true", help="skip the throughput and latency sections"
    )
    parser.add_argument("--data", type=Path, default=EVAL_DATA, help="the eval-data folder")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    return Options(
        quick=quick,
        budgets=BUDGETS,
        haystack_tokens=4_000 if quick else 30_000,
        needles=8 if quick else len(NEEDLES),
        mc_sets=("tpo",) if quick else ("quality", "coursera", "tpo"),
        topic_documents=0 if quick else 2,
        book="43-0.txt" if quick else BOOK,
        book_tokens=10_000 if quick else 300_000,
        corpus_tokens=30_000 if quick else 1_000_000,
        queries=30 if quick else 200,
        seed=args.seed,
        recall_only=bool(args.recall_only),
        json=args.json,
        data=args.data.resolve(),
        tiny=(args.data / "tinystories-260k" / "hf").resolve(),
    )


def needle_documents(options: Options, count_tokens: Count) -> list[Document]:
    """The essays and the novel, each cut to ``haystack_tokens`` with needles planted."""
    rng = np.random.default_rng(options.seed)
    direct = [n for n in NEEDLES if n.kind == "direct"]
    later = [n for n in NEEDLES if n.kind == "later"]
    half = options.needles // 2
    chosen = [direct[i] for i in sorted(rng.permutation(len(direct))[:half])]
    chosen += [later[i] for i in sorted(rng.permutation(len(later))[:half])]
    essay_text = essays(options.data / "pg-essays-haystack" / "essays")
    novel_text = read_book(options.data / "gutenberg-novels" / NOVEL)
    cut = options.haystack_tokens
    return [
        plant(
            truncate(essay_text, cut, count_tokens),
            chosen,
            options.seed,
            dataset="needles: essays",
            name="essays",
        ),
        plant(
            truncate(novel_text, cut, count_tokens),
            chosen,
            options.seed + 1,
            dataset="needles: novel",
            name="novel",
        ),
    ]


def leval_documents(options: Options) -> tuple[list[Document], list[str]]:
    """L-Eval documents with usable items, and a line per set saying how many were used."""
    folder = options.data / "leval"
    documents, notes = [], []
    for source in options.mc_sets:
        found = leval(folder, source, max_documents=1 if options.quick else None)
        documents += [replace(d, dataset="L-Eval: multiple choice") for d in found.documents]
        notes.append(
            f"{source}: {found.used} items used, {found.skipped} skipped (answer not verbatim) "
            f"in {len(found.documents)} documents"
        )
    if not options.topic_documents:
        return documents, notes
    topics = leval(folder, "topic_retrieval_longchat", max_documents=options.topic_documents)
    documents += [replace(d, dataset="L-Eval: topic retrieval") for d in topics.documents]
    notes.append(
        f"topic_retrieval_longchat: first {len(topics.documents)} of 50 documents, "
        f"{topics.used} items (all usable; the answer is the topic's name)"
    )
    return documents, notes


def copy_plan(
    options: Options, book_tokens: int, documents: Sequence[Document], count_tokens: Count
) -> tuple[list[tuple[str, str]], int]:
    """What to copy into the ``corpus`` namespaces (which hold the book) to reach
    ``corpus_tokens``: the evaluation documents, then the book again as often as needed.

    Returns the (namespace suffix, document name) pairs and the corpus size in tokens.
    """
    plan, total = [], book_tokens
    for document in documents:
        if total >= options.corpus_tokens:
            break
        plan.append((document.name, document.name))
        total += count_tokens(document.text)
    while total < options.corpus_tokens:
        plan.append(("corpus", "book"))
        total += book_tokens
    return plan, total


def systems(
    store: MemoryStore, count_tokens: Count, surprise: SurpriseSegmenter | None = None
) -> list[Retriever]:
    """embedding, surprise (when given), fixed, then the chunk baseline, over one store."""
    config = SegmenterConfig()
    episodic: list[Segmenter] = [EmbeddingSegmenter(store.embedder, config, count_tokens)]
    if surprise is not None:
        episodic.append(surprise)
    episodic.append(FixedSegmenter(config, count_tokens))
    out: list[Retriever] = [EpisodicRetriever(s.kind, store, s, count_tokens) for s in episodic]
    return [*out, ChunkRetriever(store, count_tokens)]


@dataclass(slots=True)
class Report:
    """Everything printed, for ``--json``."""

    settings: list[str] = field(default_factory=list)
    recall: list[dict[str, Any]] = field(default_factory=list)
    goal: dict[str, Any] = field(default_factory=dict)
    ablation: list[list[str]] = field(default_factory=list)
    throughput: list[list[str]] = field(default_factory=list)
    latency: list[list[str]] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)


async def run(options: Options, folder: Path, report: Report) -> None:
    import transformers

    from app.scorer import LLMTokenScorer
    from serving.embeddings import SentenceTransformerEmbedder
    from serving.engine.config import EngineConfig
    from serving.local import LocalLLM
    from serving.tokens import TiktokenCounter

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    count_tokens = TiktokenCounter("cl100k_base").count
    embedder: Embedder = SentenceTransformerEmbedder()
    database = Database(f"sqlite:///{folder}/mneme.db")
    database.upgrade()
    store, _ = MemoryStore.open(database, ChromaVectorIndex(path=folder / "chroma"), embedder)
    llm = LocalLLM.load(EngineConfig(model=str(options.tiny)))
    log("embedder and tiny model loaded")
    try:
        documents = needle_documents(options, count_tokens)
        more, notes = leval_documents(options)

        def model_tokens(text: str) -> int:
            return len(llm.encode(text, special=False))

        # The surprise segmenter counts event sizes in the tiny model's tokens (512-piece
        # vocabulary): scale its bounds so events span as much text as the others'.
        sample = "".join(d.text for d in documents)
        ratio = model_tokens(sample) / count_tokens(sample)
        base = SegmenterConfig()
        scaled = SegmenterConfig(
            min_tokens=round(base.min_tokens * ratio),
            max_tokens=round(base.max_tokens * ratio),
            window=round(base.window * ratio),
        )
        context = llm.engine.max_context
        surprise = SurpriseSegmenter(
            LLMTokenScorer(llm),
            scaled,
            context_tokens=context,
            embedder=embedder,
            count_tokens=model_tokens,
        )
        retrievers = systems(store, count_tokens, surprise)
        report.settings = settings(options, base, scaled, ratio, context, notes)
        print("\n".join(report.settings))

        tallies, outcomes = await compare(
            retrievers, [*documents, *more], options.budgets, count_tokens
        )
        report.outcomes = [asdict(o) for o in outcomes]
        report.recall = [
            {"system": s, "dataset": d, "questions": t.questions, "units": len(t.units)}
            | {f"recall@{b}": t.recall(b) for b in options.budgets}
            | {f"tokens@{b}": t.mean_used(b) for b in options.budgets}
            for (s, d), t in tallies.items()
        ]
        print("\n## Recall within the token budget (answer string in the returned text)\n")
        print(recall_table(tallies, options.budgets))
        print("\n## Planted needles by kind (both haystacks)\n")
        print(recall_table(tallies, options.budgets, kinds=True))
        result = goal(tallies, [r.name for r in retrievers[:-1]], retrievers[-1].name)
        report.goal = asdict(result)
        print(f"\n## Goal check (planted needles, {GOAL_BUDGET}-token budget)\n")
        print("\n".join(goal_lines(result)))
        report.ablation = await ablation(retrievers, documents, options.budgets)
        print("\n## Ablation: k_similar + k_contiguous rules (planted needles, both haystacks)\n")
        header = ["system", "rule", f"k_s+k_c ({documents[0].name})"]
        print(table([*header, *(f"recall@{b}" for b in options.budgets)], report.ablation))

        if options.recall_only:
            return
        novels = options.data / "gutenberg-novels"
        book = truncate(read_book(novels / options.book), options.book_tokens, count_tokens)
        rows = await throughput(retrievers, book, count_tokens)
        report.throughput = rows
        print(f"\n## Ingestion throughput ({options.book}, cl100k tokens, wall time)\n")
        header = ["system", "tokens", "seconds", "tokens/s", "episodes / chunks", "mean tokens"]
        print(table(header, rows))

        asked = [q.query for d in [*documents, *more] for q in d.questions]
        queries = list(dict.fromkeys([*asked, *leval_queries(options.data / "leval")]))
        queries = queries[: options.queries]
        timed = [retrievers[0], retrievers[-1]]  # embedding segmenter and the baseline
        evaluated = [*documents, *more]
        plan, tokens = copy_plan(options, count_tokens(book), evaluated, count_tokens)
        report.latency = await latency(timed, store, plan, tokens, queries)
        print(
            f"\n## Search latency at {GOAL_BUDGET} tokens ({len(queries)} queries, "
            "query embedding included)\n"
        )
        header = ["system", "tokens stored", "episodes / chunks", "p50 ms", "p99 ms"]
        print(table(header, report.latency))
    finally:
        llm.close()
        database.close()


def settings(
    options: Options,
    base: SegmenterConfig,
    scaled: SegmenterConfig,
    ratio: float,
    context: int,
    notes: list[str],
) -> list[str]:
    ks = ", ".join(str(fill_budget(b, 80)[0]) for b in options.budgets)
    chunks = ", ".join(f"{b}: {chunk_candidates(b)}" for b in options.budgets)
    return [
        "- embedder all-MiniLM-L6-v2 (384-d, bundled), Chroma + SQLite via MemoryStore; every "
        "token count is tiktoken cl100k_base",
        f"- embedding and fixed segmenters: SegmenterConfig defaults (events {base.min_tokens}-"
        f"{base.max_tokens} tokens, gamma {base.gamma}, {base.sentence_window}-sentence window, "
        f"novelty over {base.novelty_context} sentences, {base.refine_metric} refinement)",
        f"- surprise segmenter: stories260K, context {context} model tokens, overlap 64; one "
        f"cl100k token is {ratio:.2f} model tokens, so events {scaled.min_tokens}-"
        f"{scaled.max_tokens} and a {scaled.window}-token window (model tokens), gamma "
        f"{scaled.gamma}, refined with the embedder",
        "- EpisodicMemory search: k_similar = k_contiguous = ceil(budget / (2 x mean episode "
        f"tokens of the namespace)), e.g. {ks} at {', '.join(map(str, options.budgets))} for "
        "80-token events; contiguity reach 128 tokens after a hit and 32 before, decay 0.9 per "
        "128 tokens",
        f"- baseline: RecursiveCharacterTextSplitter({CHUNK_SIZE} characters, overlap "
        f"{CHUNK_OVERLAP}), top chunks asked for = {chunks} (budget // 32), packed greedily by "
        "score",
        f"- needles: {options.needles} per haystack (half direct, half answer-later), "
        f"haystacks of {options.haystack_tokens:,} tokens, seed {options.seed}",
        *(f"- L-Eval {note}" for note in notes),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    options = parse(argv)
    print("# Mneme retrieval benchmark\n")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())  # other work skews the timings
    print(f"- machine: {os.cpu_count()} CPUs, {platform.machine()}, load average {load}")
    print(
        f"- python {platform.python_version()}, chromadb {version('chromadb')}, "
        f"sentence-transformers {version('sentence-transformers')}, torch {version('torch')}, "
        f"langchain-text-splitters {version('langchain-text-splitters')}"
    )
    began = time.perf_counter()
    report = Report()
    folder = Path(tempfile.mkdtemp(prefix="mneme-bench-"))
    try:
        asyncio.run(run(options, folder, report))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n- whole run {time.perf_counter() - began:,.0f} s; load average after {load}")
    if options.json is not None:
        options.json.write_text(json.dumps(asdict(report), indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
