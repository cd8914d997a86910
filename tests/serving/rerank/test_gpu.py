"""RankGen scoring on CUDA in bfloat16 (skipped without CUDA): agreement with float32 and
throughput for the t5-base-sized architecture with random weights."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from serving.rerank.config import ScorerConfig
from serving.rerank.rankgen import RankGenReranker

T5_BASE = {"d_model": 768, "num_layers": 12, "num_heads": 12, "d_kv": 64, "d_ff": 2048}
WORDS = ["the", "storm", "rolled", "over", "the", "hills", "and", "the", "old", "mill"]


def texts(count: int, words: int) -> list[str]:
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(words)) for i in range(count)]


@pytest.mark.gpu
def test_bfloat16_scores_agree_with_float32_and_are_fast(tokenizer: Any) -> None:
    gpu = RankGenReranker.random(
        tokenizer, config=ScorerConfig(device="cuda", batch_size=64), seed=0, **T5_BASE
    )
    assert gpu.dtype == torch.bfloat16 and gpu.device.type == "cuda"
    reference = RankGenReranker.random(
        tokenizer, config=ScorerConfig(device="cuda", dtype="float32"), seed=0, **T5_BASE
    )
    prefix, candidates = texts(1, 300)[0], texts(64, 90)
    fast = torch.tensor(gpu.score(prefix, candidates))
    exact = torch.tensor(reference.score(prefix, candidates))
    correlation = torch.corrcoef(torch.stack([fast, exact]))[0, 1]
    assert correlation > 0.98
    best = gpu.top(prefix, candidates, 5)
    expected = torch.sort(fast, descending=True).values[:5]
    torch.testing.assert_close(torch.tensor([r.score for r in best]), expected)

    pool = texts(1024, 90)
    gpu.score(prefix, pool[:64])  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    gpu.score(prefix, pool)
    torch.cuda.synchronize()
    per_second = len(pool) / (time.perf_counter() - start)
    assert per_second > 1000, f"{per_second:.0f} candidates/s in bf16 on CUDA"
