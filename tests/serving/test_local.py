"""LocalLLM: the LLM Protocol over the built-in engine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

import pytest
import torch
from pydantic import BaseModel

from serving.engine.config import EngineConfig
from serving.llm import Capabilities, ChatMessage, SamplingParams, takes_token_ids
from serving.local import LocalLLM

GREEDY8 = SamplingParams(temperature=0.0, max_tokens=8)


def test_token_logprobs_match_a_forward_pass(tiny_llm: LocalLLM, tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    text = "The lighthouse keeper lit the lamp."
    scored = asyncio.run(tiny_llm.token_logprobs(text))
    ids = tiny_llm.encode(text, special=False)
    assert [s.token_id for s in scored] == ids
    assert "".join(s.token for s in scored) == text
    full = tiny_llm.encode(text)  # with the tokenizer's own special tokens, as servers do
    with torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0], -1)
    shift = len(full) - len(ids)
    for i, entry in enumerate(scored):
        if i + shift == 0:
            assert entry.logprob is None
        else:
            assert entry.logprob == pytest.approx(
                float(logp[i + shift - 1, full[i + shift]]), abs=1e-4
            )
    assert asyncio.run(tiny_llm.token_logprobs("")) == []


def test_chat_stream_and_complete_agree(tiny_llm: LocalLLM) -> None:
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hello!")]
    whole = asyncio.run(tiny_llm.chat(messages, GREEDY8))

    async def streamed() -> str:
        return "".join([d.text async for d in tiny_llm.stream_chat(messages, GREEDY8)])

    assert asyncio.run(streamed()) == whole.text
    assert whole.prompt_tokens == len(tiny_llm.encode_chat(messages))
    assert whole.completion_tokens == 8 or whole.choices[0].finish_reason == "stop"
    completion = asyncio.run(tiny_llm.complete("Once upon a time", GREEDY8))
    assert completion.model == tiny_llm.model and completion.choices[0].logprobs is None


def test_count_tokens(tiny_llm: LocalLLM) -> None:
    assert asyncio.run(tiny_llm.count_tokens("one two three")) == len(
        tiny_llm.tokenizer("one two three", add_special_tokens=False)["input_ids"]
    )


def test_token_level_calls_agree_with_text(tiny_llm: LocalLLM) -> None:
    """What the capabilities say, and ids continued then detokenised give the text a
    completion gives; a stop string cuts the text before it."""
    assert tiny_llm.capabilities == Capabilities(context_tokens=256, token_ids=True)
    assert takes_token_ids(tiny_llm) and tiny_llm.max_context == 256
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    ids = tiny_llm.encode("Once upon a time")
    [choice] = asyncio.run(tiny_llm.continue_ids(ids, params))
    assert len(choice.token_ids) == 8 and not choice.stopped
    assert all(0 <= t < tiny_llm.vocab_size for t in choice.token_ids)
    text, cut = tiny_llm.detokenize(choice.token_ids)
    assert text == asyncio.run(tiny_llm.complete("Once upon a time", params)).text and not cut
    assert len(text) >= 6, "the tiny model's eight tokens spell at least six characters"
    stop = text[3:6]
    assert tiny_llm.detokenize(choice.token_ids, (stop,)) == (text[: text.index(stop)], True)
    assert tiny_llm.decode(ids, special=False) == "Once upon a time"


class Verdict(BaseModel):
    mood: Literal["happy", "sad"]
    confident: bool


def test_generate_json_is_guided_and_validated(tiny_llm: LocalLLM) -> None:
    reply = asyncio.run(
        tiny_llm.generate_json(
            [ChatMessage("user", "Rate this.")],
            Verdict,
            SamplingParams(temperature=0.0, max_tokens=64),
        )
    )
    assert isinstance(reply, Verdict)


@pytest.mark.slow
def test_bundled_smollm2_answers_and_returns_json() -> None:
    llm = LocalLLM.load(EngineConfig())
    try:
        question = [ChatMessage("user", "What is the capital of France?")]
        reply = asyncio.run(llm.chat(question, SamplingParams(temperature=0.0, max_tokens=20)))
        assert "Paris" in reply.text
        # token for token what transformers' own generate gives on the same weights
        model, ids = llm.engine.loaded.model, llm.encode_chat(question)
        model.config._attn_implementation = "sdpa"  # the engine is idle: borrow its model
        try:
            expected = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)
        finally:
            model.config._attn_implementation = "mneme"
        assert reply.text == llm.tokenizer.decode(expected[0, len(ids) :], skip_special_tokens=True)
        verdict = asyncio.run(
            llm.generate_json(
                [ChatMessage("user", "Are you happy or sad, and are you sure? Answer in JSON.")],
                Verdict,
                SamplingParams(temperature=0.0, max_tokens=40),
            )
        )
        assert isinstance(verdict, Verdict)
    finally:
        llm.close()
