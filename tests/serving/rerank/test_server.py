"""The server's ``rerank`` extension over real HTTP (tiny random Llama as generator)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import openai
import pytest

from serving.local import LocalLLM
from serving.openai_client import OpenAIClientConfig, OpenAICompatibleLLM
from serving.rerank import RerankConfig, RerankerPool, RerankResult
from serving.rerank.decoders import candidate_params
from serving.rerank.rankgen import RankGenReranker
from serving.rerank.reranker import Ranked
from serving.server.app import ServerConfig, create_app
from serving.server.reranking import rerank_config
from serving.server.schemas import CompletionRequest
from tests.net import serving


class Counting:
    """A scorer that counts its calls and takes its time (a search that runs a while)."""

    def __init__(self, inner: RankGenReranker) -> None:
        self.inner, self.calls = inner, 0

    @property
    def name(self) -> str:
        return "counting"

    def score(self, prefix: str, candidates: Sequence[str]) -> list[float]:
        return self.inner.score(prefix, candidates)

    def top(self, prefix: str, candidates: Sequence[str], k: int) -> list[Ranked]:
        self.calls += 1
        time.sleep(0.05)
        return self.inner.top(prefix, candidates, k)


@pytest.fixture(scope="module")
def counting(tiny_rankgen: RankGenReranker) -> Counting:
    return Counting(tiny_rankgen)


@pytest.fixture(scope="module")
def base_url(
    tiny_llm: LocalLLM, tiny_rankgen: RankGenReranker, counting: Counting
) -> Iterator[str]:
    pool = RerankerPool.standard()
    pool.add("tiny-rankgen", tiny_rankgen)
    pool.add("counting", counting)
    app = create_app(
        tiny_llm, None, ServerConfig(served_model_name="tiny", rerank_scorer="tiny-rankgen"), pool
    )
    with serving(app) as url:
        yield url


def post(base_url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", json={"model": "tiny", **body}, timeout=60)


def test_completion_with_rerank_returns_the_chosen_text_and_score(
    base_url: str, tiny_llm: LocalLLM, tiny_rankgen: RankGenReranker
) -> None:
    rerank = {"method": "beam", "samples": 3, "beam": 2, "step_tokens": 4, "runners_up": 1}
    body = {"prompt": "Once upon a time", "max_tokens": 8, "seed": 5, "rerank": rerank}
    reply = post(base_url, "/v1/completions", body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    (choice,) = data["choices"]
    extension = data["rerank"]
    assert extension["method"] == "beam" and extension["scorer"] == tiny_rankgen.name
    assert extension["steps"] == 2 and extension["candidates"] >= 6
    assert extension["score"] == pytest.approx(
        tiny_rankgen.score("Once upon a time", [choice["text"]])[0], abs=1e-4
    )
    (runner_up,) = extension["runners_up"]
    assert runner_up["score"] <= extension["score"]
    assert data["usage"]["completion_tokens"] == 6 * 4 + 2 * 3 * 4
    assert post(base_url, "/v1/completions", body).json()["choices"] == data["choices"]


def test_one_sample_over_http_equals_plain_sampling(base_url: str) -> None:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0) as client:
        plain = client.completions.create(
            model="tiny", prompt="The dragon", max_tokens=10, seed=11, top_p=0.9
        )
        reranked = client.completions.create(
            model="tiny",
            prompt="The dragon",
            max_tokens=10,
            seed=11,
            extra_body={"rerank": {"method": "sample", "samples": 1}},
        )
    assert reranked.choices[0].text == plain.choices[0].text
    extension = (reranked.model_extra or {})["rerank"]
    assert "runners_up" not in extension and extension["steps"] == 1


def test_the_requests_penalties_and_filters_shape_the_candidates(base_url: str) -> None:
    """One reranked sample equals plain sampling with the same seed and sampling fields."""
    sampling = {"top_k": 50, "min_p": 0.05, "presence_penalty": 0.5, "frequency_penalty": 2.0}
    sampling |= {"repetition_penalty": 1.5}
    body = {"prompt": "The dragon", "max_tokens": 16, "seed": 11, "top_p": 0.9}
    plain = post(base_url, "/v1/completions", {**body, **sampling}).json()
    unpenalised = post(base_url, "/v1/completions", body).json()
    rerank = {"method": "sample", "samples": 1}
    reranked = post(base_url, "/v1/completions", {**body, **sampling, "rerank": rerank}).json()
    text = reranked["choices"][0]["text"]
    assert text == plain["choices"][0]["text"] != unpenalised["choices"][0]["text"]


def test_rerank_config_carries_the_sampling_fields() -> None:
    body = CompletionRequest.model_validate(
        {"model": "tiny", "prompt": "x", "top_k": 5, "min_p": 0.1, "rerank": {}}
        | {"presence_penalty": 1.0, "frequency_penalty": -0.5, "repetition_penalty": 1.2}
    )
    params = candidate_params(rerank_config(body, "embedder"), 4, 3, seed=1)
    assert (params.top_k, params.min_p, params.repetition_penalty) == (5, 0.1, 1.2)
    assert (params.presence_penalty, params.frequency_penalty) == (1.0, -0.5)
    with pytest.raises(ValueError, match=r"invalid rerank options: repetition_penalty=0\.0"):
        RerankConfig(repetition_penalty=0.0)


def test_chat_with_rerank(base_url: str) -> None:
    body = {
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 6,
        "rerank": {"method": "sample", "samples": 4, "runners_up": 3},
    }
    data = post(base_url, "/v1/chat/completions", body).json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["role"] == "assistant"
    scores = [data["rerank"]["score"]] + [r["score"] for r in data["rerank"]["runners_up"]]
    assert scores == sorted(scores, reverse=True) and data["rerank"]["candidates"] <= 4


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"rerank": {"samples": 0}}, "rerank.samples"),
        ({"rerank": {"method": "greedy"}}, "rerank.method"),
        ({"rerank": {"sample": 3}}, "rerank.sample: Extra inputs are not permitted"),
        ({"rerank": {"scorer": "nope"}}, "unknown rerank scorer 'nope'; this process offers"),
        ({"rerank": {}, "stream": True}, "rerank cannot be combined with stream"),
        ({"rerank": {}, "n": 2}, "rerank cannot be combined with n > 1"),
        ({"rerank": {}, "logprobs": 1}, "rerank cannot be combined with logprobs"),
        ({"rerank": {}, "min_tokens": 3}, "rerank cannot be combined with min_tokens"),
        ({"rerank": {}, "temperature": 0}, "temperature=0.0 must be in (0, 2]"),
        ({"rerank": {}, "max_tokens": 1000}, "context is 256 tokens"),
        (
            {"rerank": {"scorer": "rankgen-t5-xl-all"}},
            "cannot load the RankGen scorer 'kalpeshk2011/rankgen-t5-xl-all'",
        ),
    ],
)
def test_bad_rerank_options_are_a_400_naming_the_problem(
    base_url: str, extra: dict[str, Any], message: str
) -> None:
    reply = post(base_url, "/v1/completions", {"prompt": "Hello", "max_tokens": 4, **extra})
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]["message"]


def test_the_openai_client_reranks_over_any_server(
    base_url: str, tiny_rankgen: RankGenReranker
) -> None:
    """``llm.generate(..., rerank=...)`` on the HTTP backend samples through the server."""

    async def reranked() -> RerankResult:
        config = OpenAIClientConfig(base_url=f"{base_url}/v1", model="tiny", max_retries=0)
        async with OpenAICompatibleLLM(config) as llm:
            rerank = RerankConfig(method="sample", samples=4, max_tokens=6, runners_up=3)
            return await llm.generate("The dragon", rerank=rerank, reranker=tiny_rankgen, seed=2)

    result = asyncio.run(reranked())
    scores = tiny_rankgen.score("The dragon", [result.text] + [r.text for r in result.runners_up])
    assert result.score == pytest.approx(max(scores), abs=1e-5)
    assert result.completion_tokens == 4 * 6


def test_a_client_that_leaves_stops_the_search(base_url: str, counting: Counting) -> None:
    rerank = {"method": "beam", "samples": 2, "beam": 2, "step_tokens": 1, "scorer": "counting"}
    body = {"model": "tiny", "prompt": "Once", "max_tokens": 150, "rerank": rerank}
    with pytest.raises(httpx.ReadTimeout):  # 150 steps of >= 50 ms: it cannot be done in time
        httpx.post(f"{base_url}/v1/completions", json=body, timeout=1.0)
    time.sleep(1.0)  # the server notices the disconnect and cancels
    stopped_at = counting.calls
    time.sleep(1.0)
    assert counting.calls == stopped_at < 100  # no step scored after the client left
