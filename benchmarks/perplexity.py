"""The tiny pretrained model's perplexity with long-context attention modes against full
attention (``python -m benchmarks.attention --workload perplexity``).

Per-token perplexity of stories260K over 511-token Gutenberg windows, every token fed as its
own step, at a 128-token (25%) budget; see :func:`perplexity_rows`.
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch


def perplexity_rows(model: Path, texts: Path, windows: int, seed: int) -> list[dict[str, object]]:
    """Per-token perplexity of the tiny model over ``windows`` 511-token windows of Gutenberg
    text (one book each, random start), full attention against blocks and retrieval at a
    128-token (25%) budget: 4 sinks + 32 local + selected, every token fed as its own step."""
    from serving.engine.config import EngineConfig
    from serving.kernels.config import AttentionConfig

    books = sorted(texts.glob("*.txt"))
    if not books:
        sys.exit(f"no .txt books in {texts}; pass --texts")
    base = EngineConfig(model=str(model), max_context=512)
    small = AttentionConfig(budget=128, sinks=4, window=32, block_size=8, retrieval_segment=32)
    configs = {
        "full": base,
        **{
            mode: replace(base, prefill_chunk=1, attention=replace(small, mode=mode))
            for mode in ("blocks", "retrieval")
        },
    }
    logprobs = {method: _score(config, books, windows, seed) for method, config in configs.items()}
    full, full_tail = _perplexity(logprobs["full"]), _perplexity(_tail(logprobs["full"]))
    rows: list[dict[str, object]] = []
    for method, scored in logprobs.items():
        value, tail = _perplexity(scored), _perplexity(_tail(scored))
        rows.append(
            {
                "context": 512,
                "method": method,
                "budget": configs[method].attention.budget if method != "full" else 512,
                "perplexity": value,
                "ratio_vs_full": value / full,
                "perplexity_past_128": tail,
                "ratio_past_128": tail / full_tail,
                "tokens": len(scored),
            }
        )
    return rows


def _score(config: object, books: list[Path], windows: int, seed: int) -> list[float]:
    """Log-probabilities of every window's tokens (but the first) under one engine config."""
    import asyncio

    from serving.engine.config import EngineConfig
    from serving.engine.engine import EngineRequest, PromptResult, TorchEngine
    from serving.llm import SamplingParams

    assert isinstance(config, EngineConfig)
    engine = TorchEngine(config)
    picks = torch.Generator().manual_seed(seed)

    async def scored(spec: EngineRequest) -> list[float]:
        async for item in engine.generate(spec):
            if isinstance(item, PromptResult) and item.prompt_logprobs:
                return [t.logprob for t in item.prompt_logprobs[1:] if t.logprob is not None]
        return []

    values: list[float] = []
    try:
        for window in range(windows):
            book = books[window % len(books)].read_text(encoding="utf-8", errors="replace")
            ids = engine.tokenizer(book, add_special_tokens=False)["input_ids"]
            start = int(torch.randint(0, len(ids) - 512, (1,), generator=picks))
            spec = EngineRequest(tuple(ids[start : start + 511]), SamplingParams(max_tokens=1), 0)
            values += asyncio.run(scored(spec))
    finally:
        engine.shutdown()
    return values


def _perplexity(logprobs: list[float]) -> float:
    return math.exp(-statistics.mean(logprobs))


def _tail(scored: list[float]) -> list[float]:
    """Tokens of each 510-token window past position 128 (where the budget starts to bind)."""
    return [value for index, value in enumerate(scored) if index % 510 >= 128]
