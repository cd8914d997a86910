"""Benchmark of the built-in engine's prefix cache on RankGen beam search; prints Markdown.

Run ``python -m benchmarks.prefixes`` (``--quick`` for a smoke run). RankGen's beam search
(N=10, B=2, L=20, up to 115 tokens) sends, at every step, one request per beam whose prompt is
the previous step's prompt plus one 20-token piece. Without a prefix cache every step prefills
the whole prompt again; with it (serving/engine/prefixes.py) only the new piece is prefilled.
The same seeded searches run on two engines over the same weights, one with the cache and one
without (``prefix_cache_tokens=0``), in the same process: the chosen texts must be equal, and the
table gives the prompt tokens prefilled, the generation time (scoring excluded: the scorer is
the bundled MiniLM, the same for both) and the speed-up, per prompt length.

Prompts are the opening words of Pride and Prejudice (../shared/eval-data/gutenberg-novels),
cut to the token count. Generators: stories260K (``MNEME_TEST_MODEL``; 512-token context) and,
unless ``--skip-smollm``, the bundled SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from serving.engine.config import EngineConfig
from serving.engine.engine import TorchEngine
from serving.local import LocalLLM
from serving.rerank import EmbedderReranker, RerankConfig, Reranker, generate

NOVEL = Path(__file__).resolve().parents[2] / "shared" / "eval-data" / "gutenberg-novels"
BOOK = "1342-0.txt"  # Pride and Prejudice
TINY = Path(__file__).resolve().parents[2] / "shared" / "eval-data" / "tinystories-260k" / "hf"


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


async def rows(
    label: str, config: EngineConfig, lengths: Sequence[int], scorer: Reranker, repeats: int
) -> list[str]:
    cached = LocalLLM.load(config)
    without = replace(config, prefix_cache_tokens=0)
    plain = LocalLLM(TorchEngine(without, loaded=cached.engine.loaded))  # the same weights
    lines = []
    try:
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
    finally:
        plain.engine.shutdown()
        cached.close()
    return lines


async def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(max(1, args.threads))
    print(
        f"# Prefix cache on RankGen beam search (N=10, B=2, L=20, ≤ 115 tokens)\n\n"
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, load average before {os.getloadavg()[0]:.1f}; mean of {args.repeats} "
        "seeded searches per row, outputs equal with and without the cache\n"
    )
    scorer = EmbedderReranker.load(device="cpu")
    print(
        "| generator | prompt tokens | prompt tokens sent (all steps) | prefilled with cache | "
        "generation s without | with cache | speed-up |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    tiny = Path(os.environ.get("MNEME_TEST_MODEL") or TINY)
    if tiny.is_dir():
        lengths = (64,) if args.quick else (64, 256, 384)
        for line in await rows(
            "stories260K", EngineConfig(model=str(tiny)), lengths, scorer, args.repeats
        ):
            print(line)
    if not args.skip_smollm and not args.quick:
        for line in await rows(
            "SmolLM2-135M", EngineConfig(), (64, 512, 1024), scorer, args.repeats
        ):
            print(line)
    print(f"\nload average after {os.getloadavg()[0]:.1f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one short prompt, stories260K only")
    parser.add_argument("--skip-smollm", action="store_true", help="no SmolLM2-135M rows")
    parser.add_argument("--repeats", type=int, default=2, help="seeded searches per row")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
