"""Rerank fixtures: a tiny random-weight RankGen scorer over the test tokenizer (no download)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serving.rerank.config import ScorerConfig
from serving.rerank.rankgen import RankGenReranker

TINY_T5: dict[str, Any] = {"d_model": 32, "num_layers": 2, "num_heads": 4, "d_kv": 8, "d_ff": 64}


@pytest.fixture(scope="session")
def tokenizer(tiny_llama: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_llama))


@pytest.fixture(scope="session")
def tiny_rankgen(tokenizer: Any) -> RankGenReranker:
    return RankGenReranker.random(
        tokenizer, config=ScorerConfig(device="cpu", batch_size=3), seed=1, **TINY_T5
    )
