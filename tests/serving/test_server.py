"""Mneme's OpenAI-compatible server over real HTTP on 127.0.0.1, driven by the openai SDK."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import openai
import pytest

from serving.engine.engine import EngineRequest
from serving.llm import ChatMessage, SamplingParams
from serving.local import LocalLLM
from serving.server.app import ServerConfig, create_app
from tests.fakes import HashEmbedder
from tests.net import serving

KEY = "test-key"


@pytest.fixture(scope="module")
def base_url(tiny_llm: LocalLLM) -> Iterator[str]:
    app = create_app(tiny_llm, HashEmbedder(), ServerConfig(served_model_name="tiny", api_key=KEY))
    with serving(app) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0) as sdk:
        yield sdk


def post(base_url: str, path: str, body: Any, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/json"
        return httpx.post(f"{base_url}{path}", content=body, headers=headers, timeout=60)
    return httpx.post(f"{base_url}{path}", json=body, headers=headers, timeout=60)


def test_models_and_health(client: openai.OpenAI, base_url: str) -> None:
    assert [m.id for m in client.models.list()] == ["tiny", "test/hash-embedder"]
    assert httpx.get(f"{base_url}/health").json() == {"status": "ok"}


def test_completion_matches_the_engine(client: openai.OpenAI, tiny_llm: LocalLLM) -> None:
    reply = client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0
    )
    direct = asyncio.run(
        tiny_llm.complete("Once upon a time", SamplingParams(temperature=0.0, max_tokens=8))
    )
    assert reply.choices[0].text == direct.text
    assert reply.choices[0].finish_reason == direct.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 8


def test_penalties_and_min_p_reach_the_engine(client: openai.OpenAI, tiny_llm: LocalLLM) -> None:
    """OpenAI's presence/frequency penalties as SDK arguments, vLLM's extras in the body."""
    plain = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    penalised = replace(
        plain, presence_penalty=1.5, frequency_penalty=2.0, repetition_penalty=1.5, min_p=0.1
    )
    reply = client.completions.create(
        model="tiny",
        prompt="Once upon a time",
        max_tokens=24,
        temperature=0,
        presence_penalty=1.5,
        frequency_penalty=2.0,
        extra_body={"repetition_penalty": 1.5, "min_p": 0.1, "ignore_eos": True},
    )
    expected, unpenalised = (
        asyncio.run(tiny_llm.complete("Once upon a time", params)).text
        for params in (penalised, plain)
    )
    assert reply.choices[0].text == expected != unpenalised
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hello there"}],
        max_tokens=24,
        temperature=0,
        frequency_penalty=2.0,
        extra_body={"ignore_eos": True},
    )
    question = [ChatMessage("user", "Hello there")]
    frequent = replace(plain, frequency_penalty=2.0)
    assert chat.choices[0].message.content == asyncio.run(tiny_llm.chat(question, frequent)).text


def test_rerank_without_a_scorer_uses_the_embedder(base_url: str) -> None:
    """Out of the box (``ServerConfig()``): the default scorer is the one that ships."""
    body = {
        "model": "tiny",
        "prompt": "Once upon a time",
        "max_tokens": 4,
        "seed": 1,
        "rerank": {"method": "sample", "samples": 2},
    }
    reply = post(base_url, "/v1/completions", body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["rerank"]["scorer"] == "embedder:test/hash-embedder"


def test_chat_streaming_equals_non_streaming(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me a story."}]
    whole = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=12, temperature=0
    )
    pieces, reasons = [], []
    for chunk in client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=12, temperature=0, stream=True
    ):
        pieces.append(chunk.choices[0].delta.content or "")
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == whole.choices[0].message.content
    assert reasons[-1] == whole.choices[0].finish_reason and whole.choices[0].message.role == (
        "assistant"
    )


def test_logprobs_n_and_prompt_logprobs(client: openai.OpenAI, tiny_llm: LocalLLM) -> None:
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        n=2,
        temperature=1.0,
        seed=1,
        logprobs=True,
        top_logprobs=2,
    )
    assert len(chat.choices) == 2
    content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) >= 1 and len(content[0].top_logprobs) == 2
    completion = client.completions.create(
        model="tiny",
        prompt="The cat sat on the mat",
        max_tokens=1,
        temperature=0,
        extra_body={"prompt_logprobs": 1},
    )
    shaped = completion.choices[0].model_extra["prompt_logprobs"]  # type: ignore[index]
    spec = EngineRequest(
        tuple(tiny_llm.encode("The cat sat on the mat")),
        SamplingParams(max_tokens=1),
        prompt_logprobs=1,
    )
    expected = asyncio.run(tiny_llm.run(spec)).prompt.prompt_logprobs or ()
    assert shaped[0] is None and len(shaped) == len(expected)
    for row, entry in zip(shaped[1:], expected[1:], strict=True):
        assert row[str(entry.token_id)]["logprob"] == pytest.approx(entry.logprob, abs=1e-4)


def test_echo_scores_the_prompt(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model="tiny", prompt="The cat sat", max_tokens=0, echo=True, logprobs=0
    )
    logprobs = reply.choices[0].logprobs
    assert reply.choices[0].text == "The cat sat" and logprobs is not None
    assert logprobs.token_logprobs is not None and logprobs.token_logprobs[0] is None
    assert all(v is not None and v <= 0 for v in logprobs.token_logprobs[1:])


def test_json_schema_output(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "JSON please"}],
        max_tokens=20,
        temperature=0,
        extra_body={"structured_outputs": {"json": schema}},
    )
    assert json.loads(reply.choices[0].message.content or "") in ({"ok": True}, {"ok": False})


def test_tokenize_like_vllm(base_url: str, tiny_llm: LocalLLM) -> None:
    reply = post(base_url, "/tokenize", {"model": "tiny", "prompt": "one two three"}).json()
    assert reply["tokens"] == tiny_llm.encode("one two three")
    assert reply["count"] == len(reply["tokens"]) and reply["max_model_len"] == 256


def test_embeddings(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model="test/hash-embedder", input=["a cat", "a dog"])
    expected = HashEmbedder().embed(["a cat", "a dog"])
    for row, vector in zip(reply.data, expected, strict=True):  # base64 on the wire (SDK default)
        assert row.embedding == pytest.approx(vector.tolist(), abs=1e-6)
    plain = client.embeddings.create(
        model="test/hash-embedder", input="a cat", encoding_format="float"
    )
    assert plain.data[0].embedding == pytest.approx(expected[0].tolist(), abs=1e-6)


def test_sixteen_concurrent_requests_all_correct(base_url: str, client: openai.OpenAI) -> None:
    prompts = [f"Story number {i} begins" for i in range(4)]
    alone = [
        client.completions.create(model="tiny", prompt=p, max_tokens=10, temperature=0)
        .choices[0]
        .text
        for p in prompts
    ]

    async def together() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=KEY) as sdk:
            replies = await asyncio.gather(
                *(
                    sdk.completions.create(
                        model="tiny", prompt=prompts[i % 4], max_tokens=10, temperature=0
                    )
                    for i in range(16)
                )
            )
        return [r.choices[0].text for r in replies]

    assert asyncio.run(together()) == [alone[i % 4] for i in range(16)]


def test_client_disconnect_mid_stream_frees_the_engine(base_url: str, tiny_llm: LocalLLM) -> None:
    body = {"model": "tiny", "prompt": "Once", "max_tokens": 200, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, headers=headers) as reply:
        lines = reply.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    deadline = time.monotonic() + 10
    while tiny_llm.engine.cache.live and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tiny_llm.engine.cache.live == 0


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "does not exist"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "echo"),
        ("/v1/completions", {"model": "tiny", "prompt": "word " * 400}, 400, "context"),
        ("/v1/completions", {"model": "tiny", "prompt": ""}, 400, "empty"),
        ("/v1/completions", {"model": "tiny", "prompt": [999999999]}, 400, "token ids"),
        (
            "/v1/completions",
            {"model": "tiny", "prompt": "x", "temperature": "hot"},
            400,
            "temperature",
        ),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "n": 1000}, 400, "n"),
        (
            "/v1/completions",
            {"model": "tiny", "prompt": "x", "presence_penalty": 2.5},
            400,
            "presence_penalty: Input should be less than or equal to 2",
        ),
        (
            "/v1/completions",
            {"model": "tiny", "prompt": "x", "repetition_penalty": 0},
            400,
            "repetition_penalty: Input should be greater than 0",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": "x"}],
                "frequency_penalty": -3,
            },
            400,
            "frequency_penalty: Input should be greater than or equal to -2",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "min_p": 1.5},
            400,
            "min_p: Input should be less than or equal to 1",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": "x"}],
                "repetition_penalty": 12,
            },
            400,
            "repetition_penalty: Input should be less than or equal to 10",
        ),
        ("/v1/completions", b'{"model": "tiny", "prompt": ', 400, "JSON"),
        ("/v1/chat/completions", {"model": "tiny"}, 400, "messages"),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]},
            400,
            "role",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "xml"},
            },
            400,
            "xml",
        ),
        ("/v1/embeddings", {"model": "other", "input": "x"}, 404, "does not exist"),
        ("/v1/embeddings", {"model": "test/hash-embedder", "input": []}, 400, "input"),
    ],
)
def test_bad_requests_get_openai_style_4xx(
    base_url: str, path: str, body: Any, status: int, words: str
) -> None:
    reply = post(base_url, path, body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert words in error["message"] and error["code"] == status


def test_api_key_is_required(base_url: str) -> None:
    reply = post(base_url, "/v1/completions", {"model": "tiny", "prompt": "x"}, key=None)
    assert reply.status_code == 401 and "API key" in reply.json()["error"]["message"]
    assert (
        post(base_url, "/v1/completions", {"model": "tiny", "prompt": "x"}, key="wrong").status_code
        == 401
    )
    assert httpx.get(f"{base_url}/health").status_code == 200


def test_mneme_client_against_mneme_server(base_url: str, tiny_llm: LocalLLM) -> None:
    """The same LLM Protocol through HTTP gives what the in-process backend gives."""
    from pydantic import BaseModel

    from serving.llm import ChatMessage
    from serving.openai_client import OpenAIClientConfig, OpenAICompatibleLLM

    class Flag(BaseModel):
        ok: bool

    async def both() -> None:
        remote = OpenAICompatibleLLM(
            OpenAIClientConfig(base_url=f"{base_url}/v1", model="tiny", api_key=KEY)
        )
        try:
            params = SamplingParams(temperature=0.0, max_tokens=8)
            question = [ChatMessage("user", "Hello there")]
            assert (await remote.chat(question, params)).text == (
                await tiny_llm.chat(question, params)
            ).text
            streamed = "".join([d.text async for d in remote.stream_complete("Once", params)])
            assert streamed == (await tiny_llm.complete("Once", params)).text
            text = "The keeper lit the lamp."
            here = await tiny_llm.token_logprobs(text)
            there = await remote.token_logprobs(text)
            assert len(there) == len(here) and there[0].logprob is None
            assert [t.token_id for t in there[1:]] == [t.token_id for t in here[1:]]
            for near, far in zip(here[1:], there[1:], strict=True):
                assert far.logprob == pytest.approx(near.logprob, abs=1e-4)
            assert await remote.count_tokens(text) == await tiny_llm.count_tokens(text)
            flag = await remote.generate_json([ChatMessage("user", "ok?")], Flag, params)
            assert isinstance(flag, Flag)
        finally:
            await remote.aclose()

    asyncio.run(both())
