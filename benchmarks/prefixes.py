"""Benchmark of the built-in engine's prefix cache: RankGen beam search and concurrent drafts.

Run ``python -m benchmarks.prefixes`` (``--quick`` for a smoke run). RankGen's beam search
(N=10, B=2, L=20, up to 115 tokens) sends, at every step, one request per beam whose prompt is
the previous step's prompt plus one 20-token piece. Without a prefix cache every step prefills
the whole prompt again; with it (serving/engine/prefixes.py) only the new piece is prefilled.
The same seeded searches run on two engines over the same weights, one with the cache and one
without (``prefix_cache_tokens=0``), in the same process: the chosen texts must be equal, and the
table gives the prompt tokens prefilled, the generation time (scoring excluded: the scorer is
the bundled MiniLM, the same for both) and the speed-up, per prompt length. A second table
sends 3 sampled requests with one prompt at once (what the writer does with ``candidates=3``):
the engine holds the later two back until the first is prefilled, so they prefill only the
prompt's last token.

Prompts are the opening words of Pride and Prejudice (../shared/eval-data/gutenberg-novels),
cut to the token count. Generators: stories260K (``MNEME_TEST_MODEL``; 512-token context) and,
unless ``--skip-smollm``, the bundled SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from serving.engine.config import EngineConfig
from serving.engine.engine import TorchEngine
from serving.llm import SamplingParams
from serving.local import LocalLLM
from serving.rerank import EmbedderReranker, RerankConfig, Reranker, generate

NOVEL = Path(__file__).resolve().parents[2] / "shared" / "eval-data" / "gutenberg-novels"
BOOK = "1342-0.txt"  # Pride and Prejudice
TINY = Path(__file__).resolve().parents[2] / "shared" / "eval-data" / "tinystories-260k" / "hf"
DRAFTS = 3
DRAFT_TOKENS = 32


@dataclass(frozen=True, slots=True)
class Outcome:
    text: str
    generation_seconds: float
    prompt_tokens: int
    reused_tokens: int


def opening(llm: LocalLLM, tokens: int) -> str:
    """The novel's first ``tokens`` tokens (after the Gutenberg header), as text."""
    raw = (NOVEL / BOOK).read_text(encoding="utf-8", errors="replace")
    start = raw.find("It is a truth universally acknowledged")
    words = raw[start if start >= 0 else 0 :].split()[: tokens * 2]
    ids = llm.encode(" ".join(words))[:tokens]
    return str(llm.tokenizer.decode(ids, skip_special_tokens=True))


async def search(llm: LocalLLM, prompt: str, scorer: Reranker, seed: int) -> Outcome:
    before = llm.engine.prefixes.stats if llm.engine.prefixes is not None else None
    result = await generate(
        llm, prompt, rerank=RerankConfig(method="beam"), reranker=scorer, seed=seed
    )
    after = llm.engine.prefixes.stats if llm.engine.prefixes is not None else None
    prompts = reused = 0
    if before is not None and after is not None:
        prompts = after.prompt_tokens - before.prompt_tokens
        reused = after.reused_tokens - before.reused_tokens
    return Outcome(result.text, result.generation_seconds, prompts, reused)


@contextlib.contextmanager
def engines(config: EngineConfig) -> Iterator[tuple[LocalLLM, LocalLLM]]:
    """The model behind two engines: with the prefix cache, and without (the same weights)."""
    cached = LocalLLM.load(config)
    without = replace(config, prefix_cache_tokens=0)
    plain = LocalLLM(TorchEngine(without, loaded=cached.engine.loaded))
    try:
        yield cached, plain
    finally:
        plain.engine.shutdown()
        cached.close()


async def beam_rows(
    label: str,
    pair: tuple[LocalLLM, LocalLLM],
    lengths: Sequence[int],
    scorer: Reranker,
    repeats: int,
) -> list[str]:
    cached, plain = pair
    lines = []
    for length in lengths:
        prompt = opening(cached, length)
        on, off = [], []
        for seed in range(repeats):
            with_cache = await search(cached, prompt, scorer, seed)
            without = await search(plain, prompt, scorer, seed)
            if with_cache.text != without.text:
                raise SystemExit(f"{label}, {length} tokens, seed {seed}: outputs differ")
            on.append(with_cache)
            off.append(without)
        total = statistics.mean(o.prompt_tokens for o in on)
        reused = statistics.mean(o.reused_tokens for o in on)
        t_on = statistics.mean(o.generation_seconds for o in on)
        t_off = statistics.mean(o.generation_seconds for o in off)
        lines.append(
            f"| {label} | {length} | {total:.0f} | {total - reused:.0f} | {t_off:.2f} | "
            f"{t_on:.2f} | {t_off / t_on:.2f}x |"
        )
    return lines


async def drafts(llm: LocalLLM, prompt: str, seed: int) -> tuple[list[str], float]:
    """DRAFTS concurrent requests with one prompt (the writer's candidates); texts, seconds."""
    params = SamplingParams(max_tokens=DRAFT_TOKENS, temperature=1.0, top_p=0.9)
    start = time.perf_counter()
    replies = await asyncio.gather(
        *(llm.complete(prompt, replace(params, seed=seed + i)) for i in range(DRAFTS))
    )
    return [r.text for r in replies], time.perf_counter() - start


async def draft_rows(
    label: str, pair: tuple[LocalLLM, LocalLLM], lengths: Sequence[int], repeats: int
) -> list[str]:
    cached, plain = pair
    assert cached.engine.prefixes is not None
    lines = []
    for length in lengths:
        prompt = opening(cached, length)
        on, off = [], []
        reused = cached.engine.prefixes.stats.reused_tokens  # a running total: clear keeps it
        for seed in range(repeats):
            cached.engine.clear_prefixes()  # a new prompt: nothing of it kept
            texts, seconds = await drafts(cached, prompt, seed)
            plain_texts, plain_seconds = await drafts(plain, prompt, seed)
            if texts != plain_texts:
                raise SystemExit(f"{label}, {length} tokens, seed {seed}: drafts differ")
            on.append(seconds)
            off.append(plain_seconds)
        reused = (cached.engine.prefixes.stats.reused_tokens - reused) / repeats
        sent = DRAFTS * len(cached.encode(prompt))
        t_on, t_off = statistics.mean(on), statistics.mean(off)
        lines.append(
            f"| {label} | {length} | {sent} | {sent - reused:.0f} | {t_off:.2f} | {t_on:.2f} | "
            f"{t_off / t_on:.2f}x |"
        )
    return lines


async def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(max(1, args.threads))
    print(
        f"# Prefix cache of the built-in engine\n\n{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, load average before "
        f"{os.getloadavg()[0]:.1f}; mean of {args.repeats} seeded runs per row; outputs equal "
        "with and without the cache in every run\n"
    )
    scorer = EmbedderReranker.load(device="cpu")
    generators: list[tuple[str, EngineConfig, Sequence[int]]] = []
    tiny = Path(os.environ.get("MNEME_TEST_MODEL") or TINY)
    if tiny.is_dir():
        generators.append(("stories260K", EngineConfig(model=str(tiny)), (64, 256, 384)))
    if not args.skip_smollm and not args.quick:
        generators.append(("SmolLM2-135M", EngineConfig(), (64, 512, 1024)))
    beams, drafted = [], []
    for label, config, lengths in generators:
        with engines(config) as pair:
            lengths = lengths[:1] if args.quick else lengths
            if "beam" in args.parts:
                beams += await beam_rows(label, pair, lengths, scorer, args.repeats)
            if "drafts" in args.parts:
                drafted += await draft_rows(label, pair, lengths, args.repeats)
    header = (
        "| generator | prompt tokens | prompt tokens sent | prefilled with cache | "
        "s without | s with cache | speed-up |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    if beams:
        print("## RankGen beam search (N=10, B=2, L=20, ≤ 115 tokens; generation s only)\n")
        print("\n".join([header, *beams]) + "\n")
    if drafted:
        print(
            f"## {DRAFTS} concurrent drafts of {DRAFT_TOKENS} tokens sharing one prompt "
            "(the writer's candidates; s until all are done)\n"
        )
        print("\n".join([header, *drafted]) + "\n")
    print(f"load average after {os.getloadavg()[0]:.1f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one short prompt, stories260K only")
    parser.add_argument("--skip-smollm", action="store_true", help="no SmolLM2-135M rows")
    parser.add_argument("--repeats", type=int, default=2, help="seeded searches per row")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--parts", default="beam,drafts", help="comma-separated: beam (search), drafts"
    )
    args = parser.parse_args(argv)
    args.parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if not args.parts or args.parts - {"beam", "drafts"}:
        parser.error("--parts takes beam and/or drafts, comma-separated")
    if args.quick:
        args.repeats = 1
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
