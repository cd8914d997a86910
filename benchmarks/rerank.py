"""Benchmark of RankGen reranking (serving/rerank); prints Markdown tables.

Run ``python -m benchmarks.rerank`` (``--quick`` for a smoke run; ``--skip-smollm`` leaves out
the SmolLM2-135M generator rows). Three parts:

1. **Agreement with human judgements** on ../shared/eval-data/rankgen-human-eval (609 blind A/B
   choices between nucleus sampling and RankGen-XL beam search, GPT-2 medium and T5-XXL-C4
   generators): for every scorer that loads here, the share of pairs where the scorer's
   higher-scored continuation is the one the annotator chose (a tie counts half). Baselines are
   labelled as such. The published RankGen checkpoints cannot be downloaded here, and a RankGen
   model with random weights says nothing about quality, so it has no row; the first row is
   the share of pairs the annotators gave to RankGen's own output (the paper's 74.5%).
2. **Scoring throughput** on this CPU: candidates scored per second by the t5-base-sized RankGen
   architecture (random weights, float32; SmolLM2's tokenizer stands in for T5's, which cannot
   be downloaded) and by the bundled MiniLM, on the data's continuations (cut to RankGen's 128
   tokens), against candidates generated per second by plain sampling in the same run.
3. **Reranking overhead** for n=10 candidates with the tiny pretrained model (stories260K at
   MNEME_TEST_MODEL) as generator, and optionally SmolLM2-135M: scoring time as a share of
   the total (the paper: 1-10%, GPT2-medium generator on a GPU), and total time against plain
   sampling of one continuation.

MAUVE of the decoders is measured by benchmarks/mauve.py, with local featurizers (MAUVE's
GPT-2 large cannot be downloaded here).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import platform
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from serving.engine.config import EngineConfig
from serving.llm import SamplingParams
from serving.local import LocalLLM
from serving.rerank import EmbedderReranker, RerankConfig, Reranker, generate
from serving.rerank.config import ScorerConfig
from serving.rerank.rankgen import RankGenReranker

DATA = Path(__file__).resolve().parents[2] / "shared" / "eval-data" / "rankgen-human-eval"
T5_BASE = {"d_model": 768, "num_layers": 12, "num_heads": 12, "d_kv": 64, "d_ff": 2048}
STORY_PROMPTS = (
    "Once upon a time, there was a little girl named Lily. She loved to",
    "Tom and his dog Max went to the park. The sun was shining and",
    "One day, a big bear found a red ball in the forest. He",
)
_WORD = re.compile(r"[a-z']+")


@dataclass(frozen=True, slots=True)
class Judgement:
    """One annotator's choice between two continuations of a prefix."""

    prefix: str
    first: str
    second: str
    human_first: bool
    rankgen_first: bool  # the first text came from RankGen beam search
    generator: str


def judgements() -> list[Judgement]:
    out = []
    for file in sorted(DATA.glob("*.csv")):
        with file.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                answer = row["Answer.utterance"].strip().lower()
                if not answer.startswith(("text 1", "text 2")):
                    continue
                out.append(
                    Judgement(
                        row["Input.Prefix"],
                        row["Input.First"],
                        row["Input.Second"],
                        answer.startswith("text 1"),
                        row["Input.Order"].split(",")[0] != "nucleus",
                        file.stem,
                    )
                )
    return out


# ------------------------------------------------------------------ 1. human agreement

PairScorer = Callable[[Judgement], tuple[float, float]]


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def length_scorer(j: Judgement) -> tuple[float, float]:
    return float(len(j.first.split())), float(len(j.second.split()))


def overlap_scorer(j: Judgement) -> tuple[float, float]:
    """Share of a continuation's distinct words that occur in the prefix."""
    seen = set(words(j.prefix))

    def share(text: str) -> float:
        own = set(words(text))
        return len(own & seen) / len(own) if own else 0.0

    return share(j.first), share(j.second)


def reranker_scorer(reranker: Reranker) -> PairScorer:
    def pair(j: Judgement) -> tuple[float, float]:
        first, second = reranker.score(j.prefix, [j.first, j.second])
        return first, second

    return pair


def agreement(rows: Sequence[Judgement], scorer: PairScorer) -> tuple[float, float]:
    """(share agreeing with the annotator, share picking RankGen's side); ties count half."""
    human = rankgen = 0.0
    for j in rows:
        first, second = scorer(j)
        pick_first = 0.5 if first == second else float(first > second)
        human += pick_first if j.human_first else 1 - pick_first
        rankgen += pick_first if j.rankgen_first else 1 - pick_first
    return human / len(rows), rankgen / len(rows)


def memoized(scorer: PairScorer) -> PairScorer:
    """Score each (prefix, first, second) once: pair majorities repeat judgements."""
    cache: dict[tuple[str, str, str], tuple[float, float]] = {}

    def pair(j: Judgement) -> tuple[float, float]:
        key = (j.prefix, j.first, j.second)
        if key not in cache:
            cache[key] = scorer(j)
        return cache[key]

    return pair


def majorities(rows: Sequence[Judgement]) -> list[Judgement]:
    """One judgement per A/B pair that has a strict majority (the paper's unit: 3 annotators a
    pair), carrying the majority's choice; evenly split pairs are left out."""
    pairs: dict[tuple[str, frozenset[str]], list[Judgement]] = {}
    for j in rows:
        pairs.setdefault((j.prefix, frozenset((j.first, j.second))), []).append(j)
    out = []
    for votes in pairs.values():
        for_rankgen = sum(j.human_first == j.rankgen_first for j in votes)
        if 2 * for_rankgen == len(votes):
            continue
        first = votes[0]
        rankgen_won = 2 * for_rankgen > len(votes)
        out.append(replace(first, human_first=first.rankgen_first == rankgen_won))
    return out


def agreement_table(rows: list[Judgement], minilm: Reranker) -> str:
    rng = random.Random(0)
    scorers: list[tuple[str, PairScorer]] = [
        ("MiniLM-L6 bi-encoder (`embedder` scorer)", reranker_scorer(minilm)),
        ("baseline: longer continuation wins", length_scorer),
        ("baseline: unigram overlap with the prefix", overlap_scorer),
        ("baseline: coin flip (seed 0)", lambda _: (rng.random(), rng.random())),
    ]
    groups = {"all": rows} | {
        g: [r for r in rows if r.generator == g] for g in ("gpt2_medium", "t5_xxl_c4")
    }
    voted = majorities(rows)
    lines = [
        f"| scorer | per judgement: all ({len(rows)}) | GPT-2 md | T5-XXL-C4 "
        f"| pair majority ({len(voted)} pairs) | picks RankGen's side |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    preferred = [
        sum(r.human_first == r.rankgen_first for r in g) / len(g) for g in [*groups.values(), voted]
    ]
    lines.append(
        "| annotators' preference for RankGen-XL beam search (paper: 74.5% by pair majority) | "
        + " | ".join(f"{a:.1%}" for a in preferred)
        + " | — |"
    )
    for name, plain in scorers:
        scorer = memoized(plain)
        results = {g: agreement(members, scorer) for g, members in groups.items()}
        by_pair = agreement(voted, scorer)[0]
        cells = " | ".join(f"{results[g][0]:.1%}" for g in groups)
        lines.append(f"| {name} | {cells} | {by_pair:.1%} | {results['all'][1]:.1%} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ 2. throughput


def t5_base(tokenizer: Any) -> RankGenReranker:
    return RankGenReranker.random(tokenizer, config=ScorerConfig(device="cpu"), **T5_BASE)


def per_second(reranker: Reranker, prefix: str, candidates: list[str]) -> tuple[float, float]:
    """(prefix encode ms, candidates/s) on a cold prefix, after a warm-up call."""
    reranker.score("warm-up " + prefix, candidates[:4])
    start = time.perf_counter()
    reranker.score(prefix, candidates[:1])
    prefix_ms = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    reranker.score(prefix, candidates)
    return prefix_ms, len(candidates) / (time.perf_counter() - start)


async def sampled_per_second(llm: LocalLLM, n: int, tokens: int) -> float:
    params = SamplingParams(max_tokens=tokens, temperature=1.0, top_p=0.9, n=n, seed=0)
    await llm.complete(STORY_PROMPTS[0], replace(params, n=1))  # warm-up
    start = time.perf_counter()
    reply = await llm.complete(STORY_PROMPTS[1], params)
    return len(reply.choices) / (time.perf_counter() - start)


# ------------------------------------------------------------------ 3. overhead


async def overhead_rows(
    llm: LocalLLM, label: str, scorers: dict[str, Reranker], prompts: Sequence[str]
) -> list[str]:
    rows = []
    plain = []
    for r in range(3):
        for prompt in prompts:
            start = time.perf_counter()
            await llm.complete(
                prompt, SamplingParams(max_tokens=115, top_p=0.9, temperature=1.0, seed=r)
            )
            plain.append(time.perf_counter() - start)
    base = statistics.mean(plain)
    rows.append(f"| {label} | plain nucleus sampling, 1 sample | — | {base:.3f} | — | — | 1.0x |")
    for scorer_name, scorer in scorers.items():
        for method, config in (
            ("over-generate n=10, rerank", RerankConfig(method="sample", samples=10)),
            ("beam N=10 B=2 L=20", RerankConfig(method="beam")),
        ):
            score, total = [], []
            for prompt in prompts:
                start = time.perf_counter()
                result = await generate(llm, prompt, rerank=config, reranker=scorer, seed=0)
                total.append(time.perf_counter() - start)
                score.append(result.scoring_seconds)
            share = sum(score) / sum(total)  # of the wall time, everything included
            rows.append(
                f"| {label} | {method} | {scorer_name} | {statistics.mean(total):.3f} | "
                f"{statistics.mean(score):.3f} | {share:.1%} | "
                f"{statistics.mean(total) / base:.1f}x |"
            )
    return rows


def smollm_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    from tests.models import save_bundled_tokenizer

    save_bundled_tokenizer(folder)
    return AutoTokenizer.from_pretrained(str(folder))


async def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(max(1, args.threads))
    print(
        f"# RankGen reranking benchmark\n\n{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"load average before {os.getloadavg()[0]:.1f}\n"
    )
    rows = judgements()
    judged = rows[::6] if args.quick else rows
    minilm = EmbedderReranker.load(device="cpu")
    print(f"## Agreement with {len(judged)} human A/B judgements (RankGen human eval)\n")
    print(agreement_table(judged, minilm) + "\n")

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = smollm_tokenizer(Path(folder))
    rankgen = t5_base(tokenizer)
    count = 16 if args.quick else 32
    long_candidates = [j.first for j in rows[:count]]
    short_candidates = [" ".join(j.first.split()[:15]) for j in rows[:count]]
    print("## Scoring throughput on this CPU (candidates/s; higher is better)\n")
    print("| what | candidates | prefix encode (ms) | candidates/s |")
    print("| --- | --- | --- | --- |")
    for name, scorer in (
        ("RankGen t5-base architecture, random weights, fp32", rankgen),
        ("MiniLM-L6 bi-encoder", minilm),
    ):
        for kind, candidates in (
            ("~128 tokens", long_candidates),
            ("~20 tokens", short_candidates),
        ):
            prefix_ms, rate = per_second(scorer, rows[count].prefix, candidates)
            print(f"| {name} | {len(candidates)} x {kind} | {prefix_ms:.0f} | {rate:.1f} |")

    generators: list[tuple[str, LocalLLM]] = []
    model = os.environ.get("MNEME_TEST_MODEL")
    if model and Path(model).is_dir():
        generators.append(("stories260K", LocalLLM.load(EngineConfig(model=model))))
    if not args.skip_smollm and not args.quick:
        generators.append(("SmolLM2-135M (Q4_1 GGUF → fp32)", LocalLLM.load(EngineConfig())))
    try:
        for label, llm in generators:
            rate = await sampled_per_second(llm, 10, 115)
            print(f"| plain sampling with {label}: n=10, 115 tokens | 10 | — | {rate:.1f} |")
        print()
        if not generators:
            print("(no generator: set MNEME_TEST_MODEL for the overhead table)")
            return
        print("## Reranking overhead, n=10 candidates (mean s per continuation, ≤ 115 tokens)\n")
        print("| generator | decoding | scorer | total s | scoring s | scoring share | vs plain |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        scorers: dict[str, Reranker] = {
            "MiniLM-L6": minilm,
            "RankGen t5-base arch (random)": rankgen,
        }
        prompts = STORY_PROMPTS[: 1 if args.quick else 2]
        for label, llm in generators:
            for line in await overhead_rows(llm, label, scorers, prompts):
                print(line)
    finally:
        for _, llm in generators:
            llm.close()
    print(f"\nload average after {os.getloadavg()[0]:.1f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer candidates and repeats")
    parser.add_argument("--skip-smollm", action="store_true", help="no SmolLM2-135M generator")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
