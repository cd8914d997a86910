"""The OpenAI client path against real pretrained models served by Mneme's server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch

from serving.engine.config import EngineConfig
from serving.local import LocalLLM
from serving.server.app import create_app
from tests.net import serving


def serve(llm: LocalLLM) -> Iterator[openai.OpenAI]:
    try:
        with (
            serving(create_app(llm)) as url,
            openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client,
        ):
            yield client
    finally:
        llm.close()


@pytest.fixture(scope="module")
def tinystories(test_model: Path) -> Iterator[tuple[openai.OpenAI, LocalLLM, Path]]:
    llm = LocalLLM.load(EngineConfig(model=str(test_model)))
    for client in serve(llm):
        yield client, llm, test_model


@pytest.mark.model
def test_tiny_pretrained_model_over_http(
    tinystories: tuple[openai.OpenAI, LocalLLM, Path],
) -> None:
    from transformers import AutoModelForCausalLM

    client, llm, folder = tinystories
    prompt = "Once upon a time, there was a little dog"
    reply = client.completions.create(
        model=llm.model, prompt=prompt, max_tokens=30, temperature=0, logprobs=1
    )
    ids = llm.encode(prompt)
    expected = AutoModelForCausalLM.from_pretrained(str(folder)).generate(
        torch.tensor([ids]), max_new_tokens=30, do_sample=False
    )[0, len(ids) :]
    assert reply.choices[0].text == llm.tokenizer.decode(expected, skip_special_tokens=True)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=llm.model, prompt=prompt, max_tokens=30, temperature=0, stream=True
        )
    )
    assert streamed == reply.choices[0].text
    scored = client.completions.create(
        model=llm.model, prompt=prompt, max_tokens=1, extra_body={"prompt_logprobs": 0}
    )
    assert len(scored.choices[0].model_extra["prompt_logprobs"]) == len(ids)  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="chat template"):
        client.chat.completions.create(
            model=llm.model, messages=[{"role": "user", "content": "hi"}]
        )


@pytest.mark.slow
def test_smollm2_chat_and_json_over_http() -> None:
    for client in serve(LocalLLM.load(EngineConfig())):
        answer = client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            temperature=0,
            max_tokens=20,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        assert "Paris" in (answer.choices[0].message.content or "")
        schema = {
            "type": "object",
            "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
            "required": ["city", "country"],
        }
        structured = client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            temperature=0,
            max_tokens=40,
            messages=[{"role": "user", "content": "Name a city and its country as JSON."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "place", "schema": schema},
            },
        )
        place = json.loads(structured.choices[0].message.content or "")
        assert set(place) == {"city", "country"}

        async def concurrent(base_url: str) -> list[str]:
            async with openai.AsyncOpenAI(base_url=base_url, api_key="x") as sdk:
                replies = await asyncio.gather(
                    *(
                        sdk.chat.completions.create(
                            model="SmolLM2-135M-Instruct",
                            temperature=0,
                            max_tokens=12,
                            messages=[{"role": "user", "content": f"Count to {n}."}],
                        )
                        for n in (3, 4, 3, 4)
                    )
                )
            return [r.choices[0].message.content or "" for r in replies]

        first, second, third, fourth = asyncio.run(concurrent(str(client.base_url)))
        assert first == third and second == fourth and first != second
