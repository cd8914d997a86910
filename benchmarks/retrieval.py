"""Retrieval benchmark (issue 19): Mneme against chunked dense, BM25 and hybrid RAG; Markdown.

Run ``python -m benchmarks.retrieval`` (``--quick`` for a smoke run, ``--tune`` for the search
settings grid on the tuning sets, ``--json PATH`` to keep every number). In one run, with one
embedder (all-MiniLM-L6-v2, bundled) and one budget accounting (tiktoken cl100k_base), at
budgets of 256, 512 and 1024 tokens:

- ``Mneme (default)``: ``EpisodicMemory`` as shipped — embedding-novelty events
  (``SegmenterConfig()``), hybrid first stage, budget-aware second stage (``RecallDefaults()``);
- ``Mneme before issue 19``: the same events searched as before: dense only, 8 + 8;
- ``Mneme fixed`` / ``Mneme surprise``: the other segmenters with the default search (surprise
  from the tiny stories260K model, its bounds scaled to its tokenizer);
- ``chunks: dense`` / ``chunks: BM25`` / ``chunks: hybrid``: 512-character chunks ranked by
  cosine, by Okapi BM25, and by reciprocal-rank fusion of both (``benchmarks.chunks``).

Recall of an item = the fraction of its evidence passages (or 1 if its answer string, when it
has no evidence) found verbatim — lower-cased, whitespace collapsed — in the text returned
within the budget (``benchmarks.needles.Question.recall``); a set's recall is the mean over its
items, with a 95% bootstrap interval (1,000 resamples of its items; paired for differences).
Returned tokens are counted with cl100k. Sets and caps: ``benchmarks.evalsets``; the defaults
were chosen on the *tuning* sets (planted needles, LoCoMo conv-26/30, L-Eval scientific_qa,
BAMBOO paperqa_4k) with ``--tune`` and every other set is *held out*.

On this project's 2-core machine the full run takes 30-50 minutes (about 870k tokens ingested
four ways; items capped per set by ``benchmarks.evalsets.Caps``), ``--tune`` 7-12 minutes and
``--quick`` about 2 (what ``tests/benchmarks/test_retrieval_smoke.py`` exercises, with fakes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
import numpy.typing as npt

from benchmarks.chunks import CHUNK_OVERLAP, CHUNK_SIZE, ChunkRetriever, ChunkStore
from benchmarks.evalsets import LOCOMO_CATEGORIES, Caps, EvalSet, evaluation_sets
from benchmarks.latency import latency
from benchmarks.needles import (
    EVAL_DATA,
    NEEDLES,
    essays,
    leval_queries,
    plant,
    read_book,
    truncate,
)
from memory import ChromaVectorIndex, Database, Embedder, MemoryStore
from memory.episodic import EpisodicMemory, RecallDefaults
from memory.fusion import FusionConfig
from memory.retrieval import Reach
from memory.segmentation import SegmenterConfig
from memory.segmenters import EmbeddingSegmenter, FixedSegmenter, Segmenter, SurpriseSegmenter

Count = Callable[[str], int]
BUDGETS = (256, 512, 1024)
GOAL_BUDGET = 512
GOAL_MARGIN = 0.05  # the default over hybrid chunks at GOAL_BUDGET
GOAL_FILL = 0.90  # of the largest budget, returned
ENOUGH_ITEMS = 100  # a set (or pooled row) this large separates systems 0.05 apart
BOOTSTRAP_ROUNDS = 1000
NOVEL = "84-0.txt"  # Frankenstein: the needle novel
BOOK = "2701-0.txt"  # Moby-Dick: the latency corpus
DEFAULT = "Mneme (default)"
BEFORE = "Mneme before issue 19"
HYBRID = "chunks: hybrid"
PLAIN = "chunks: dense"  # "plain top-k" of the LoCoMo goal
NEEDLE_SET = "planted needles"
LONG_DOCUMENTS = "long-document QA, pooled"


def log(message: str, began: float = time.perf_counter()) -> None:
    print(f"[{time.perf_counter() - began:7.1f} s] {message}", file=sys.stderr, flush=True)


class Retriever(Protocol):
    """A system under test. Systems with one ``key`` share what was ingested."""

    @property
    def name(self) -> str: ...

    @property
    def key(self) -> str: ...

    async def ingest(self, namespace: str, text: str, name: str) -> list[int]:
        """Store ``text``; the token count of each stored unit (episode or chunk)."""
        ...

    async def recall(self, namespace: str, query: str, budget: int) -> list[str]:
        """Texts returned for ``query`` within ``budget`` tokens."""
        ...


class CachedEmbedder:
    """An embedder that embeds each distinct text once per run (sentences are embedded by the
    segmenters of several systems, queries by every system at every budget)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.cache: dict[str, npt.NDArray[np.float32]] = {}

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            for text, vector in zip(missing, self.inner.embed(missing), strict=True):
                self.cache[text] = vector
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self.cache[t] for t in texts])


@dataclass(frozen=True, slots=True)
class EpisodicRetriever:
    name: str
    key: str
    store: MemoryStore
    segmenter: Segmenter
    count_tokens: Count
    defaults: RecallDefaults = field(default_factory=RecallDefaults)

    def memory(self, namespace: str) -> EpisodicMemory:
        return EpisodicMemory(
            self.store,
            namespace,
            self.segmenter,
            count_tokens=self.count_tokens,
            defaults=self.defaults,
        )

    async def ingest(self, namespace: str, text: str, name: str) -> list[int]:
        ingested = await self.memory(namespace).ingest(text, name=name)
        return [e.token_count for e in ingested.episodes]

    async def recall(self, namespace: str, query: str, budget: int) -> list[str]:
        found = await self.memory(namespace).search(query, budget_tokens=budget)
        return [r.text for r in found]


# -- measuring ------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """One system on one set: per item, its recall and the tokens returned, per budget."""

    kinds: list[str] = field(default_factory=list)  # each item's kind (LoCoMo category...)
    scores: dict[int, list[float]] = field(default_factory=dict)
    used: dict[int, list[int]] = field(default_factory=dict)

    @property
    def items(self) -> int:
        return len(self.kinds)

    def recall(self, budget: int) -> float:
        values = self.scores.get(budget, [])
        return float(np.mean(values)) if values else float("nan")

    def mean_used(self, budget: int) -> float:
        values = self.used.get(budget, [])
        return float(np.mean(values)) if values else float("nan")

    def only(self, kind: str) -> Tally:
        keep = [i for i, k in enumerate(self.kinds) if k == kind]
        return Tally(
            [kind] * len(keep),
            {b: [v[i] for i in keep] for b, v in self.scores.items()},
            {b: [v[i] for i in keep] for b, v in self.used.items()},
        )

    def extend(self, other: Tally) -> None:
        self.kinds += other.kinds
        for budget, values in other.scores.items():
            self.scores.setdefault(budget, []).extend(values)
        for budget, used in other.used.items():
            self.used.setdefault(budget, []).extend(used)


@dataclass(slots=True)
class Ingest:
    """What one ingestion key stored: cl100k tokens, wall seconds, unit sizes."""

    tokens: int = 0
    seconds: float = 0.0
    units: list[int] = field(default_factory=list)


Tallies = dict[tuple[str, str], Tally]  # (system, set label) → tally


def label(evaluation: EvalSet) -> str:
    return f"{evaluation.name} ({evaluation.split})"


async def compare(
    retrievers: Sequence[Retriever],
    sets: Sequence[EvalSet],
    budgets: Sequence[int],
    count_tokens: Count,
) -> tuple[Tallies, dict[str, Ingest]]:
    """Ingest every document once per ingestion key, then ask every system every question at
    every budget. Items keep one order per set, so systems can be compared item by item."""
    ingests: dict[str, Ingest] = {}
    for retriever in retrievers:
        if retriever.key in ingests:
            continue
        done = ingests[retriever.key] = Ingest()
        for evaluation in sets:
            for document in evaluation.documents:
                began = time.perf_counter()
                units = await retriever.ingest(
                    f"{retriever.key}:{document.name}", document.text, document.name
                )
                done.seconds += time.perf_counter() - began
                done.tokens += count_tokens(document.text)
                done.units += units
        log(f"{retriever.key}: ingested {done.tokens:,} tokens in {done.seconds:.0f} s")
    tallies: Tallies = {}
    for retriever in retrievers:
        began = time.perf_counter()
        for evaluation in sets:
            tally = tallies[(retriever.name, label(evaluation))] = Tally()
            for document in evaluation.documents:
                namespace = f"{retriever.key}:{document.name}"
                for question in document.questions:
                    tally.kinds.append(question.kind)
                    for budget in budgets:
                        texts = await retriever.recall(namespace, question.query, budget)
                        tally.scores.setdefault(budget, []).append(question.recall(" ".join(texts)))
                        tally.used.setdefault(budget, []).append(sum(map(count_tokens, texts)))
        log(f"{retriever.name}: searched in {time.perf_counter() - began:.0f} s")
    return tallies, ingests


def interval(scores: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the mean of ``scores`` (percentile method)."""
    values = np.asarray(scores, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (BOOTSTRAP_ROUNDS, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Mean of ``a - b`` item by item, with its 95% bootstrap interval."""
    difference = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    low, high = interval(list(difference))
    return float(difference.mean()) if len(difference) else float("nan"), low, high


def pooled(tallies: Tallies, systems: Sequence[str], labels: Sequence[str], name: str) -> None:
    """Add a row ``name`` per system: the items of ``labels`` together."""
    for system in systems:
        row = tallies[(system, name)] = Tally()
        for key in labels:
            if (system, key) in tallies:
                row.extend(tallies[(system, key)])


# -- tables ---------------------------------------------------------------------------------


def table(header: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def with_interval(scores: Sequence[float]) -> str:
    if not scores:
        return "-"
    low, high = interval(scores)
    return f"{np.mean(scores):.3f} ({low:.2f} to {high:.2f})"


def recall_table(
    tallies: Tallies, labels: Sequence[str], systems: Sequence[str], budgets: Sequence[int]
) -> str:
    """Rows = set x system: items, recall at each budget with its interval, tokens returned."""
    header = ["set", "system", "items", *(f"recall@{b}" for b in budgets)]
    header += [f"tokens@{b}" for b in budgets]
    rows = []
    for key in labels:
        for system in systems:
            tally = tallies.get((system, key))
            if tally is None or not tally.items:
                continue
            row = [key, system, str(tally.items)]
            row += [with_interval(tally.scores.get(b, [])) for b in budgets]
            row += [f"{tally.mean_used(b):.0f}" if tally.items else "-" for b in budgets]
            rows.append(row)
    return table(header, rows)


def kind_table(
    tallies: Tallies, key: str, kinds: Sequence[str], systems: Sequence[str], budgets: Sequence[int]
) -> str:
    """Rows = kind x system of one set (LoCoMo categories, needle kinds)."""
    rows = []
    for kind in kinds:
        for system in systems:
            if (system, key) not in tallies:
                continue
            part = tallies[(system, key)].only(kind)
            if part.items:
                scores = [with_interval(part.scores.get(b, [])) for b in budgets]
                rows.append([kind, system, str(part.items), *scores])
    return table(["kind", "system", "items", *(f"recall@{b}" for b in budgets)], rows)


def fill_table(
    tallies: Tallies, labels: Sequence[str], systems: Sequence[str], budgets: Sequence[int]
) -> str:
    """Per system: mean tokens returned per budget over every item, and the lowest set mean."""
    rows = []
    for system in systems:
        row = [system]
        for budget in budgets:
            means = [
                tallies[(system, k)].mean_used(budget)
                for k in labels
                if (system, k) in tallies and tallies[(system, k)].items
            ]
            every = [
                u
                for k in labels
                if (system, k) in tallies
                for u in tallies[(system, k)].used.get(budget, [])
            ]
            row.append(
                f"{np.mean(every):.0f} ({np.mean(every) / budget:.0%}; lowest set "
                f"{min(means) / budget:.0%})"
                if every
                else "-"
            )
        rows.append(row)
    return table(["system", *(f"tokens returned @{b}" for b in budgets)], rows)


@dataclass(frozen=True, slots=True)
class GoalCheck:
    what: str
    value: str
    met: bool | None  # None: not decidable (too few items)


def goals(
    tallies: Tallies,
    labels: Sequence[str],
    locomo: Sequence[str],
    budgets: Sequence[int],
) -> list[GoalCheck]:
    """The issue's goals for the default: over hybrid chunks at 512 on every set with enough
    items; no LoCoMo category below plain top-k (dense chunks); the largest budget filled."""
    checks = []
    for key in labels:
        if (DEFAULT, key) not in tallies or (HYBRID, key) not in tallies:
            continue
        ours, theirs = tallies[(DEFAULT, key)], tallies[(HYBRID, key)]
        if not ours.items:
            continue
        mean, low, high = paired(ours.scores[GOAL_BUDGET], theirs.scores[GOAL_BUDGET])
        enough = ours.items >= ENOUGH_ITEMS
        checks.append(
            GoalCheck(
                f"{key}: default - hybrid chunks @{GOAL_BUDGET} ≥ +{GOAL_MARGIN:.2f} "
                f"({ours.items} items{'' if enough else ', too few to separate'})",
                f"{mean:+.3f} ({low:+.2f} to {high:+.2f})",
                mean >= GOAL_MARGIN - 1e-9 if enough else None,
            )
        )
    for key in locomo:
        for code, category in LOCOMO_CATEGORIES.items():
            if (DEFAULT, key) not in tallies:
                continue
            ours, theirs = (
                tallies[(DEFAULT, key)].only(category),
                tallies[(PLAIN, key)].only(category),
            )
            if not ours.items:
                continue
            worst = min(budgets, key=lambda b: ours.recall(b) - theirs.recall(b))
            mean, low, high = paired(ours.scores[worst], theirs.scores[worst])
            checks.append(
                GoalCheck(
                    f"{key}, category {code} {category}: default ≥ plain top-k (dense chunks) "
                    f"at every budget ({ours.items} items; worst budget {worst})",
                    f"{mean:+.3f} ({low:+.2f} to {high:+.2f})",
                    mean >= -1e-9,
                )
            )
    largest = max(budgets)
    rows = [tallies[(DEFAULT, k)] for k in labels if (DEFAULT, k) in tallies]
    every = [u for row in rows for u in row.used.get(largest, [])]
    if every:
        fill = float(np.mean(every)) / largest
        checks.append(
            GoalCheck(
                f"default fills the {largest}-token budget ≥ {GOAL_FILL:.0%} (mean)",
                f"{fill:.1%}",
                fill >= GOAL_FILL,
            )
        )
    return checks


def goal_lines(checks: Sequence[GoalCheck]) -> list[str]:
    def met(value: bool | None) -> str:
        return "n/a" if value is None else ("MET" if value else "NOT MET")

    return [f"- {c.what}: {c.value} — {met(c.met)}" for c in checks]


def ingest_table(ingests: dict[str, Ingest]) -> str:
    rows = [
        [
            key,
            f"{i.tokens:,}",
            f"{i.seconds:,.0f}",
            f"{i.tokens / max(i.seconds, 1e-9):,.0f}",
            f"{len(i.units):,}",
            f"{np.mean(i.units):.0f}" if i.units else "-",
        ]
        for key, i in ingests.items()
    ]
    header = ["ingestion", "tokens", "seconds", "tokens/s", "episodes / chunks", "mean tokens"]
    return table(header, rows)


# -- setup ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    quick: bool
    budgets: tuple[int, ...]
    haystack_tokens: int  # each needle haystack
    needles: int  # planted in each haystack (half direct, half later)
    caps: Caps
    seed: int
    json: Path | None
    data: Path
    tiny: Path
    tune: bool = False
    tune_events: bool = False
    latency: bool = False
    surprise: bool = True
    corpus_tokens: int = 1_000_000  # --latency: tokens searched
    queries: int = 200  # --latency: timed searches per system


def parse(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.retrieval", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a few items of each tuning set")
    parser.add_argument("--tune", action="store_true", help="search settings grid, tuning sets")
    parser.add_argument("--tune-events", action="store_true", help="with --tune: event bounds too")
    parser.add_argument("--latency", action="store_true", help="also time searches over 1M tokens")
    parser.add_argument("--no-surprise", action="store_true", help="leave out Mneme surprise")
    parser.add_argument("--json", type=Path, help="also write every number to this JSON file")
    parser.add_argument("--seed", type=int, default=0, help="seed of needle order and depths")
    parser.add_argument("--data", type=Path, default=EVAL_DATA, help="the eval-data folder")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    return Options(
        quick=quick,
        budgets=BUDGETS,
        haystack_tokens=4_000 if quick else 30_000,
        needles=8 if quick else len(NEEDLES),
        caps=Caps(),
        seed=args.seed,
        json=args.json,
        data=args.data.resolve(),
        tiny=(args.data / "tinystories-260k" / "hf").resolve(),
        tune=bool(args.tune),
        tune_events=bool(args.tune_events),
        latency=bool(args.latency),
        surprise=not args.no_surprise,
        corpus_tokens=30_000 if quick else 1_000_000,
        queries=30 if quick else 200,
    )


def needle_set(options: Options, count_tokens: Count) -> EvalSet:
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
    documents = [
        plant(
            truncate(text, cut, count_tokens),
            chosen,
            options.seed + i,
            dataset=NEEDLE_SET,
            name=f"needles-{name}",
        )
        for i, (name, text) in enumerate((("essays", essay_text), ("novel", novel_text)))
    ]
    note = (
        f"{options.needles} per haystack (half direct, half answer-later), "
        f"{cut:,}-token haystacks of Paul Graham essays and Frankenstein"
    )
    return EvalSet(NEEDLE_SET, "tuning", documents, note)


BEFORE_DEFAULTS = RecallDefaults(
    k_similar=8,
    k_contiguous=8,
    reach=Reach(decay=0.9),
    fusion=FusionConfig(rank_constant=60, lexical_weight=0.0),
)
"""Search as shipped before issue 19: dense similarity only, 8 hits and 8 neighbours, decay 0.9
(hits were then worth their cosine; RRF's flat k = 60 ranks them alike). Events now snap to
paragraphs, which they did not then."""


def systems(
    store: MemoryStore, count_tokens: Count, surprise: SurpriseSegmenter | None = None
) -> list[Retriever]:
    """Every system of the tables, over one store: the default first, the baselines last."""
    config = SegmenterConfig()
    embedding = EmbeddingSegmenter(store.embedder, config, count_tokens)
    out: list[Retriever] = [
        EpisodicRetriever(DEFAULT, "embedding", store, embedding, count_tokens),
        EpisodicRetriever(BEFORE, "embedding", store, embedding, count_tokens, BEFORE_DEFAULTS),
        EpisodicRetriever(
            "Mneme fixed", "fixed", store, FixedSegmenter(config, count_tokens), count_tokens
        ),
    ]
    if surprise is not None:
        out.append(EpisodicRetriever("Mneme surprise", "surprise", store, surprise, count_tokens))
    chunks = ChunkStore(store, count_tokens)
    out += [
        ChunkRetriever(PLAIN, chunks, "dense"),
        ChunkRetriever("chunks: BM25", chunks, "bm25"),
        ChunkRetriever(HYBRID, chunks, "hybrid"),
    ]
    return out


def tuning_grid() -> dict[str, RecallDefaults]:
    """Search settings tried by ``--tune`` on the embedding events of the tuning sets."""
    base = RecallDefaults()

    def fused(k: int, lexical: float, decay: float | None = None) -> RecallDefaults:
        """The default with another RRF constant, lexical weight, or neighbour decay."""
        reach = base.reach if decay is None else replace(base.reach, decay=decay)
        fusion = FusionConfig(rank_constant=k, lexical_weight=lexical)
        return replace(base, fusion=fusion, reach=reach)

    return {
        "default": base,
        "dense only": replace(base, fusion=FusionConfig(lexical_weight=0.0)),
        "lexical only": replace(base, fusion=FusionConfig(dense_weight=0.0)),
        "RRF k 60, equal weights": fused(60, 1.0),
        "lexical x2": fused(10, 2.0),
        "lexical x4": fused(10, 4.0),
        "RRF k 5": fused(5, 3.0),
        "RRF k 20": fused(20, 3.0),
        "decay 0.8": fused(10, 3.0, 0.8),
        "decay 0.9": fused(10, 3.0, 0.9),
        "no contiguity": replace(base, reach=Reach(after_tokens=0, before_tokens=0)),
        "8 + 8 (explicit)": replace(base, k_similar=8, k_contiguous=8),
        "before issue 19": BEFORE_DEFAULTS,
    }


def tune_table(
    tallies: Tallies, labels: Sequence[str], variants: Sequence[str], budgets: Sequence[int]
) -> str:
    header = ["settings", *(f"{k.split(' (')[0]} @{GOAL_BUDGET}" for k in labels)]
    header += [f"all @{b}" for b in budgets] + [f"tokens @{max(budgets)}"]
    rows = []
    for variant in variants:
        row = [variant]
        row += [f"{tallies[(variant, k)].recall(GOAL_BUDGET):.3f}" for k in labels]
        every = Tally()
        for k in labels:
            every.extend(tallies[(variant, k)])
        row += [f"{every.recall(b):.3f}" for b in budgets]
        row.append(f"{every.mean_used(max(budgets)):.0f}")
        rows.append(row)
    return table(header, rows)


@dataclass(slots=True)
class Report:
    """Everything printed, for ``--json``."""

    settings: list[str] = field(default_factory=list)
    recall: list[dict[str, Any]] = field(default_factory=list)
    goals: list[dict[str, Any]] = field(default_factory=list)
    ingest: list[dict[str, Any]] = field(default_factory=list)
    latency: list[list[str]] = field(default_factory=list)


def surprise_segmenter(
    options: Options, llm: Any, embedder: Embedder, count_tokens: Count, sample: str
) -> tuple[SurpriseSegmenter, str]:
    """The tiny model's surprise segmenter, its event bounds scaled to its tokenizer."""
    from app.scorer import LLMTokenScorer

    def model_tokens(text: str) -> int:
        return len(llm.encode(text, special=False))

    # Its tokenizer has 512 pieces: scale the bounds so events span as much text as the others'.
    ratio = model_tokens(sample) / count_tokens(sample)
    base = SegmenterConfig()
    scaled = SegmenterConfig(
        min_tokens=round(base.min_tokens * ratio),
        max_tokens=round(base.max_tokens * ratio),
        window=round(base.window * ratio),
    )
    context = llm.engine.max_context
    segmenter = SurpriseSegmenter(
        LLMTokenScorer(llm),
        scaled,
        context_tokens=context,
        embedder=embedder,
        count_tokens=model_tokens,
    )
    note = (
        f"- surprise: stories260K, context {context} model tokens; one cl100k token is "
        f"{ratio:.2f} model tokens, so events {scaled.min_tokens}-{scaled.max_tokens} model "
        f"tokens, refined with the embedder"
    )
    return segmenter, note


async def run(options: Options, folder: Path, report: Report) -> None:
    import transformers

    from serving.embeddings import SentenceTransformerEmbedder
    from serving.engine.config import EngineConfig
    from serving.local import LocalLLM
    from serving.tokens import TiktokenCounter

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    count_tokens = TiktokenCounter("cl100k_base").count
    embedder = CachedEmbedder(SentenceTransformerEmbedder())
    database = Database(f"sqlite:///{folder}/mneme.db")
    database.upgrade()
    store, _ = MemoryStore.open(database, ChromaVectorIndex(path=folder / "chroma"), embedder)
    llm = LocalLLM.load(EngineConfig(model=str(options.tiny))) if options.surprise else None
    try:
        sets = [
            needle_set(options, count_tokens),
            *evaluation_sets(options.data, options.caps, options.quick),
        ]
        if options.tune:
            sets = [s for s in sets if s.split == "tuning"]
        surprise, note = None, ""
        if llm is not None and not options.tune:
            sample = "".join(d.text for d in sets[0].documents)
            surprise, note = surprise_segmenter(options, llm, embedder, count_tokens, sample)
        log("embedder and models loaded")
        report.settings = settings_lines(options, sets, note)
        print("\n".join(report.settings))
        if options.tune:
            await tune(options, store, sets, count_tokens)
            return
        retrievers = systems(store, count_tokens, surprise)
        tallies, ingests = await compare(retrievers, sets, options.budgets, count_tokens)
        names = [r.name for r in retrievers]
        print_results(tallies, ingests, sets, names, options.budgets, report)
        if options.latency:
            await timed(options, store, retrievers, sets, count_tokens, report)
    finally:
        if llm is not None:
            llm.close()
        database.close()


TUNING_EVENTS = {
    "events 8-64": SegmenterConfig(max_tokens=64),
    "events 8-96": SegmenterConfig(max_tokens=96),
    "events 16-192 (app settings)": SegmenterConfig(min_tokens=16, max_tokens=192),
    "events 8-128, no paragraph snap": SegmenterConfig(paragraph_wait=0),
    "events 8-128, paragraph wait 128": SegmenterConfig(paragraph_wait=128),
}
"""Other event bounds ``--tune`` tries, with the default search."""


async def tune(options: Options, store: MemoryStore, sets: Sequence[EvalSet], count: Count) -> None:
    """``--tune``: every setting of :func:`tuning_grid` on the default embedding events, and
    the default search on the events of :data:`TUNING_EVENTS`."""
    segmenter = EmbeddingSegmenter(store.embedder, SegmenterConfig(), count)
    grid = tuning_grid()
    retrievers: list[Retriever] = [
        EpisodicRetriever(n, "embedding", store, segmenter, count, d) for n, d in grid.items()
    ]
    for index, (name, config) in enumerate(TUNING_EVENTS.items() if options.tune_events else ()):
        other = EmbeddingSegmenter(store.embedder, config, count)
        retrievers.append(EpisodicRetriever(name, f"events-{index}", store, other, count))
    tallies, ingests = await compare(retrievers, sets, options.budgets, count)
    labels = [label(s) for s in sets]
    print("\n## Search settings on the tuning sets (embedding events; recall)\n")
    print(tune_table(tallies, labels, [r.name for r in retrievers], options.budgets))
    print("\n## Ingestion\n")
    print(ingest_table(ingests))


def print_results(
    tallies: Tallies,
    ingests: dict[str, Ingest],
    sets: Sequence[EvalSet],
    names: Sequence[str],
    budgets: Sequence[int],
    report: Report,
) -> None:
    for split in ("tuning", "held-out"):
        members = [
            label(s) for s in sets if s.split == split and s.name not in (NEEDLE_SET, "LoCoMo")
        ]
        pooled(tallies, names, members, f"{LONG_DOCUMENTS} ({split})")
    labels = [label(s) for s in sets]
    labels += [f"{LONG_DOCUMENTS} ({split})" for split in ("tuning", "held-out")]
    report.recall = [
        {"system": s, "set": k, "items": t.items}
        | {f"recall@{b}": t.recall(b) for b in budgets}
        | {f"interval@{b}": interval(t.scores.get(b, [])) for b in budgets}
        | {f"tokens@{b}": t.mean_used(b) for b in budgets}
        for (s, k), t in tallies.items()
    ]
    for split in ("tuning", "held-out"):
        chosen = [k for k in labels if k.endswith(f"({split})")]
        print(f"\n## Recall, {split} sets (95% bootstrap intervals) and tokens returned\n")
        print(recall_table(tallies, chosen, names, budgets))
    locomo = [label(s) for s in sets if s.name == "LoCoMo"]
    for key in locomo:
        print(f"\n## {key} by category\n")
        print(kind_table(tallies, key, list(LOCOMO_CATEGORIES.values()), names, budgets))
    needles = [label(s) for s in sets if s.name == NEEDLE_SET]
    for key in needles:
        print(f"\n## {key} by kind\n")
        print(kind_table(tallies, key, ["direct", "later"], names, budgets))
    print("\n## Tokens returned per budget (mean over every item; share of the budget)\n")
    print(fill_table(tallies, [label(s) for s in sets], names, budgets))
    print("\n## Ingestion (cl100k tokens, wall time, all documents of the run)\n")
    print(ingest_table(ingests))
    report.ingest = [asdict(i) | {"key": k} for k, i in ingests.items()]
    checks = goals(tallies, [k for k in labels if (DEFAULT, k) in tallies], locomo, budgets)
    report.goals = [asdict(c) for c in checks]
    print("\n## Goals (issue 19)\n")
    print("\n".join(goal_lines(checks)))


async def timed(
    options: Options,
    store: MemoryStore,
    retrievers: Sequence[Retriever],
    sets: Sequence[EvalSet],
    count_tokens: Count,
    report: Report,
) -> None:
    """``--latency``: searches over a corpus of ``corpus_tokens`` (the book, then copies)."""
    book = read_book(options.data / "gutenberg-novels" / BOOK)
    timed_systems = [r for r in retrievers if r.name in (DEFAULT, HYBRID)]
    for retriever in timed_systems:
        await retriever.ingest(f"{retriever.key}:corpus", book, "book")
    book_tokens = count_tokens(book)
    plan, total = [], book_tokens
    for document in (d for s in sets for d in s.documents):
        if total >= options.corpus_tokens:
            break
        plan.append((document.name, document.name))
        total += count_tokens(document.text)
    while total < options.corpus_tokens:
        plan.append(("corpus", "book"))
        total += book_tokens
    asked = [q.query for s in sets for d in s.documents for q in d.questions]
    queries = list(dict.fromkeys([*asked, *leval_queries(options.data / "leval")]))
    report.latency = await latency(timed_systems, store, plan, total, queries[: options.queries])
    print(f"\n## Search latency at 512 tokens ({options.queries} queries, embedding included)\n")
    header = ["system", "tokens stored", "episodes / chunks", "p50 ms", "p99 ms"]
    print(table(header, report.latency))


def settings_lines(options: Options, sets: Sequence[EvalSet], surprise: str) -> list[str]:
    defaults = RecallDefaults()
    lines = [
        "- embedder all-MiniLM-L6-v2 (384-d, bundled), Chroma + SQLite via MemoryStore; every "
        "token count is tiktoken cl100k_base",
        f"- Mneme: embedding and fixed events SegmenterConfig() ({SegmenterConfig().min_tokens}-"
        f"{SegmenterConfig().max_tokens} tokens); search RecallDefaults(): fusion "
        f"{defaults.fusion}, reach {defaults.reach}, one first-stage candidate per "
        f"{defaults.pool_tokens} budget tokens",
        f"- chunks: RecursiveCharacterTextSplitter({CHUNK_SIZE} characters, overlap "
        f"{CHUNK_OVERLAP}); dense, Okapi BM25, and RRF (k 60) of both; budget // 32 chunks",
    ]
    if surprise:
        lines.append(surprise)
    for evaluation in sets:
        documents = len(evaluation.documents)
        lines.append(
            f"- {label(evaluation)}: {evaluation.questions} items in {documents} documents"
            + (f"; {evaluation.note}" if evaluation.note else "")
        )
    return lines


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
