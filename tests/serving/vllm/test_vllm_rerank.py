"""The ``rerank`` request field on a real vLLM server (CPU build), through Mneme's middleware.

The generator is a tiny random Llama with near-uniform sampling (so candidates differ); the scorer
is a tiny random RankGen saved to a folder and named in ``MNEME_RERANK_FOLDERS``. Needs the vLLM
venv (.ci/vllm-venv); the server takes ~35 s to start, so the module shares one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.llm import ChatMessage
from serving.rerank.config import ScorerConfig
from serving.rerank.generation import prefix_text
from serving.rerank.rankgen import RankGenReranker
from serving.vllm.launcher import VLLMServer, VLLMServerConfig
from tests.models import build_tiny_llama
from tests.net import free_port
from tests.serving.rerank.conftest import TINY_T5

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MODEL = "tiny-llama"
PROMPT = "Once upon a time, in a quiet village,"


@dataclass
class Served:
    base_url: str
    scorer: RankGenReranker


@pytest.fixture(scope="module")
def served(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("vllm-rerank")
    model = build_tiny_llama(root / "llama", hidden_size=256, heads=4, kv_heads=2, logit_scale=1.0)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    RankGenReranker.random(tokenizer, seed=3, **TINY_T5).save(root / "rankgen")
    scorer = RankGenReranker.load(str(root / "rankgen"), ScorerConfig(device="cpu"))
    config = VLLMServerConfig(
        model=str(model),
        port=free_port(),
        python=str(vllm_python),
        extra_args=(
            *("--served-model-name", MODEL, "--max-model-len", "512"),
            *("--dtype", "float32", "--enforce-eager"),
        ),
        env={
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "MNEME_RERANK_FOLDERS": f"tiny={root / 'rankgen'}",
            "MNEME_RERANK_SCORER": "tiny",
        },
        startup_timeout=600,
    )
    with VLLMServer(config):
        yield Served(config.base_url, scorer)


def post(served: Served, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = httpx.post(
        f"{served.base_url}{path}", json={"model": MODEL, "ignore_eos": True, **body}, timeout=300
    )
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def test_beam_search_on_vllm(served: Served) -> None:
    rerank = {"method": "beam", "samples": 4, "beam": 2, "step_tokens": 5, "runners_up": 1}
    data = post(served, "/completions", {"prompt": PROMPT, "max_tokens": 12, "rerank": rerank})
    text, extension = data["choices"][0]["text"], data["rerank"]
    assert extension["steps"] == math.ceil(12 / 5) and extension["scorer"].endswith("rankgen")
    assert extension["candidates"] > 2 * 4  # several steps' candidates, not one
    assert extension["score"] == pytest.approx(served.scorer.score(PROMPT, [text])[0], abs=1e-4)
    (runner_up,) = extension["runners_up"]
    assert runner_up["score"] <= extension["score"] and runner_up["text"] != text
    assert data["usage"]["completion_tokens"] == 2 * 4 * 12  # B*N candidates of 12 tokens
    assert data["choices"][0]["finish_reason"] == "length"


def prefix_cache_hits(served: Served) -> float:
    metrics = httpx.get(served.base_url.removesuffix("/v1") + "/metrics", timeout=30).text
    lines = [line for line in metrics.splitlines() if line.startswith("vllm:prefix_cache_hits")]
    assert lines, "vLLM reports no prefix cache metric"
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_beam_steps_hit_vllms_prefix_cache(served: Served) -> None:
    long_prompt = " ".join([PROMPT] * 30)  # a few hundred tokens: several full KV blocks
    before = prefix_cache_hits(served)
    rerank = {"method": "beam", "samples": 2, "beam": 2, "step_tokens": 4}
    post(served, "/completions", {"prompt": long_prompt, "max_tokens": 8, "rerank": rerank})
    assert prefix_cache_hits(served) > before  # step 2 reuses step 1's prompt blocks


def test_over_generation_keeps_the_best_of_the_samples(served: Served) -> None:
    rerank = {"method": "sample", "samples": 6, "runners_up": 5}
    data = post(served, "/completions", {"prompt": PROMPT, "max_tokens": 8, "rerank": rerank})
    texts = [data["choices"][0]["text"]] + [r["text"] for r in data["rerank"]["runners_up"]]
    assert len(set(texts)) == data["rerank"]["candidates"] == 6
    scores = served.scorer.score(PROMPT, texts)
    assert scores[0] == pytest.approx(max(scores), abs=1e-5)


def test_one_sample_equals_plain_sampling_on_vllm(served: Served) -> None:
    body = {"prompt": PROMPT, "max_tokens": 10, "seed": 11}
    plain = post(served, "/completions", {**body, "top_p": 0.9})
    reranked = post(served, "/completions", {**body, "rerank": {"method": "sample", "samples": 1}})
    assert reranked["choices"][0]["text"] == plain["choices"][0]["text"]


def test_chat_beam_search_continues_the_partial_reply(served: Served) -> None:
    messages = [{"role": "user", "content": "Tell me a story about a fox."}]
    rerank = {"method": "beam", "samples": 3, "beam": 2, "step_tokens": 4}
    data = post(
        served, "/chat/completions", {"messages": messages, "max_tokens": 12, "rerank": rerank}
    )
    text = data["choices"][0]["message"]["content"]
    prefix = prefix_text([ChatMessage("user", messages[0]["content"])])
    assert data["rerank"]["steps"] == 3 and data["usage"]["completion_tokens"] == 2 * 3 * 12
    assert data["rerank"]["score"] == pytest.approx(
        served.scorer.score(prefix, [text])[0], abs=1e-4
    )


def test_rerank_with_streaming_is_refused_on_vllm(served: Served) -> None:
    reply = httpx.post(
        f"{served.base_url}/completions",
        json={"model": MODEL, "prompt": PROMPT, "stream": True, "rerank": {}},
        timeout=60,
    )
    assert reply.status_code == 400
    assert "rerank cannot be combined with stream" in reply.json()["error"]["message"]
