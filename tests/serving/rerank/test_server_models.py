"""The ``rerank`` field over real HTTP with the tiny pretrained model (stories260K) as generator
and the bundled MiniLM as scorer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from serving.engine.config import EngineConfig
from serving.local import LocalLLM
from serving.rerank import EmbedderReranker, RerankerPool
from serving.server.app import ServerConfig, create_app
from tests.net import serving

PROMPT = "Once upon a time, there was a little girl named Lily. She loved to"


@pytest.fixture(scope="module")
def stories(test_model: Path) -> Iterator[tuple[openai.OpenAI, EmbedderReranker]]:
    llm = LocalLLM.load(EngineConfig(model=str(test_model)))
    scorer = EmbedderReranker.load()
    pool = RerankerPool({})
    pool.add("embedder", scorer)
    try:
        with (
            serving(
                create_app(llm, None, ServerConfig("stories", rerank_scorer="embedder"), pool)
            ) as url,
            openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client,
        ):
            yield client, scorer
    finally:
        llm.close()


@pytest.mark.model
def test_sample_rerank_picks_the_best_of_the_same_samples(
    stories: tuple[openai.OpenAI, EmbedderReranker],
) -> None:
    client, scorer = stories

    def create(n: int, extra: dict[str, Any]) -> Any:
        return client.completions.create(
            model="stories", prompt=PROMPT, max_tokens=40, seed=3, top_p=0.9, n=n, extra_body=extra
        )

    texts = [c.text for c in create(6, {}).choices]  # the same seeded candidates
    reply = create(1, {"rerank": {"method": "sample", "samples": 6, "runners_up": 5}})
    extension = (reply.model_extra or {})["rerank"]
    scores = scorer.score(PROMPT, texts)
    best = max(range(6), key=lambda i: scores[i])
    assert reply.choices[0].text == texts[best]
    assert extension["score"] == pytest.approx(scores[best], abs=1e-5)
    assert sorted(r["text"] for r in extension["runners_up"]) == sorted(
        t for i, t in enumerate(texts) if i != best
    )


@pytest.mark.model
def test_beam_rerank_over_http(stories: tuple[openai.OpenAI, EmbedderReranker]) -> None:
    client, scorer = stories
    reply = client.completions.create(
        model="stories",
        prompt=PROMPT,
        max_tokens=30,
        seed=1,
        extra_body={"rerank": {"method": "beam", "samples": 10, "beam": 2, "step_tokens": 10}},
    )
    extension = (reply.model_extra or {})["rerank"]
    text = reply.choices[0].text
    assert text and extension["scorer"] == scorer.name and 1 <= extension["steps"] <= 3
    assert extension["score"] == pytest.approx(scorer.score(PROMPT, [text])[0], abs=1e-5)
    assert reply.choices[0].finish_reason in ("stop", "length")
