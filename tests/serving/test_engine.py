"""The built-in engine against transformers' own forward/generate, on a tiny random Llama."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from serving.engine.config import EngineConfig
from serving.engine.engine import EngineOutput, EngineRequest, PromptResult, TorchEngine
from serving.errors import RequestRejected
from serving.llm import SamplingParams

PROMPTS = [
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog and then",
    "A",
    "In the beginning the universe was created. This has made a lot of people very angry",
]


def reference(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder)).eval()


def ids_of(engine: TorchEngine, text: str) -> tuple[int, ...]:
    return tuple(engine.tokenizer(text, add_special_tokens=False)["input_ids"])


async def collect(
    engine: TorchEngine, spec: EngineRequest, stop_after: int | None = None
) -> tuple[PromptResult | None, dict[int, list[EngineOutput]]]:
    prompt, outputs = None, {}
    count = 0
    async for item in engine.generate(spec):
        if isinstance(item, PromptResult):
            prompt = item
            continue
        outputs.setdefault(item.index, []).append(item)
        count += 1
        if stop_after is not None and count >= stop_after:
            break
    return prompt, outputs


def tokens(outputs: list[EngineOutput]) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


def greedy(max_tokens: int = 12) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens)


def test_greedy_equals_transformers_generate(tiny_engine: TorchEngine, tiny_llama: Path) -> None:
    model = reference(tiny_llama)
    for text in PROMPTS:
        ids = ids_of(tiny_engine, text)
        _, out = asyncio.run(collect(tiny_engine, EngineRequest(ids, greedy())))
        expected = model.generate(
            torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None
        )[0, len(ids) :]
        assert tokens(out[0]) == expected.tolist()[: len(tokens(out[0]))]
        assert out[0][-1].finish_reason in ("length", "stop")


def test_prompt_logprobs_equal_a_full_forward_across_chunks(
    tiny_engine: TorchEngine, tiny_llama: Path
) -> None:
    ids = ids_of(tiny_engine, PROMPTS[3])  # longer than prefill_chunk=5: several chunks
    prompt, _ = asyncio.run(collect(tiny_engine, EngineRequest(ids, greedy(1), prompt_logprobs=3)))
    assert prompt is not None and prompt.prompt_logprobs is not None
    with torch.no_grad():
        logp = torch.log_softmax(reference(tiny_llama)(torch.tensor([ids])).logits[0], -1)
    got = prompt.prompt_logprobs
    assert len(got) == len(ids) and got[0].logprob is None and got[0].token_id == ids[0]
    for i in range(1, len(ids)):
        assert got[i].token_id == ids[i]
        assert got[i].logprob == pytest.approx(float(logp[i - 1, ids[i]]), abs=1e-4)
        best = torch.topk(logp[i - 1], 3)
        assert list(got[i].top_ids) == best.indices.tolist()


def test_concurrent_requests_are_batched_and_each_correct(tiny_engine: TorchEngine) -> None:
    specs = [EngineRequest(ids_of(tiny_engine, PROMPTS[i % 4]), greedy(16)) for i in range(16)]
    alone = [tokens(asyncio.run(collect(tiny_engine, s))[1][0]) for s in specs[:4]]

    async def together() -> list[list[int]]:
        results = await asyncio.gather(*(collect(tiny_engine, s) for s in specs))
        return [tokens(out[0]) for _, out in results]

    assert asyncio.run(together()) == [alone[i % 4] for i in range(16)]
    assert tiny_engine.cache.live == 0  # every slot released


def test_n_choices_with_a_seed_are_repeatable_and_distinct(tiny_engine: TorchEngine) -> None:
    params = SamplingParams(temperature=1.0, n=3, seed=7, max_tokens=8, logprobs=2)
    spec = EngineRequest(ids_of(tiny_engine, PROMPTS[0]), params)
    first = asyncio.run(collect(tiny_engine, spec))[1]
    second = asyncio.run(collect(tiny_engine, spec))[1]
    assert sorted(first) == [0, 1, 2]
    assert [tokens(first[i]) for i in range(3)] == [tokens(second[i]) for i in range(3)]
    assert len({tuple(tokens(first[i])) for i in range(3)}) == 3
    entry = first[0][0].logprobs[0]
    assert entry.logprob is not None and entry.logprob <= 0 and len(entry.top) == 2


def test_max_tokens_and_stop_strings(tiny_engine: TorchEngine) -> None:
    ids = ids_of(tiny_engine, PROMPTS[1])
    _, out = asyncio.run(collect(tiny_engine, EngineRequest(ids, greedy(10))))
    text = "".join(o.text for o in out[0])
    assert len(tokens(out[0])) == 10 and out[0][-1].finish_reason == "length"
    middle = text.strip()[len(text.strip()) // 2 :]
    stop = middle.lstrip()[:3]  # a non-blank stop string that occurs in the output
    assert stop.strip()
    params = SamplingParams(temperature=0.0, max_tokens=10, stop=(stop,))
    _, cut = asyncio.run(collect(tiny_engine, EngineRequest(ids, params)))
    assert "".join(o.text for o in cut[0]) == text[: text.index(stop)]
    assert cut[0][-1].finish_reason == "stop"


def test_leaving_early_cancels_and_frees_the_cache(tiny_engine: TorchEngine) -> None:
    spec = EngineRequest(ids_of(tiny_engine, PROMPTS[0]), greedy(200))
    _, out = asyncio.run(collect(tiny_engine, spec, stop_after=2))
    assert len(out[0]) == 2
    for _ in range(50):  # the engine thread frees the slot on its next step
        if tiny_engine.cache.live == 0:
            break
        asyncio.run(asyncio.sleep(0.02))
    assert tiny_engine.cache.live == 0


def test_requests_beyond_the_context_are_rejected(tiny_engine: TorchEngine) -> None:
    with pytest.raises(RequestRejected, match="context is 256"):
        asyncio.run(collect(tiny_engine, EngineRequest(tuple(range(1, 250)), greedy(10))))
    with pytest.raises(RequestRejected, match="empty"):
        asyncio.run(collect(tiny_engine, EngineRequest((), greedy())))


def test_json_schema_constrains_the_output(tiny_engine: TorchEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"mood": {"enum": ["happy", "sad"]}, "ok": {"type": "boolean"}},
        "required": ["mood", "ok"],
        "additionalProperties": False,
    }
    spec = EngineRequest(
        ids_of(tiny_engine, "Reply in JSON:"),
        SamplingParams(temperature=1.0, seed=3, max_tokens=60),
        json_schema=schema,
    )
    _, out = asyncio.run(collect(tiny_engine, spec))
    reply = json.loads("".join(o.text for o in out[0]))
    assert reply["mood"] in ("happy", "sad") and isinstance(reply["ok"], bool)
    assert out[0][-1].finish_reason == "stop"


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    from serving.errors import ModelNotAvailable

    with pytest.raises(ModelNotAvailable, match="MNEME_LLM_MODEL"):
        TorchEngine(EngineConfig(model=str(tmp_path / "nothing-here")))
    with pytest.raises(ModelNotAvailable, match="MNEME_LLM_BASE_URL"):
        TorchEngine(EngineConfig(model="some-org/not-cached-anywhere"))


@pytest.mark.model
def test_tiny_pretrained_model_greedy_equals_transformers(test_model: Path) -> None:
    engine = TorchEngine(EngineConfig(model=str(test_model), prefill_chunk=4))
    try:
        ids = tuple(engine.tokenizer("Once upon a time, there was a little girl")["input_ids"])
        _, out = asyncio.run(collect(engine, EngineRequest(ids, greedy(40))))
        expected = reference(test_model).generate(
            torch.tensor([ids]), max_new_tokens=40, do_sample=False
        )[0, len(ids) :]
        assert tokens(out[0]) == expected.tolist()[: len(tokens(out[0]))]
        assert "".join(o.text for o in out[0]).strip()
    finally:
        engine.shutdown()


def test_min_tokens_and_ignore_eos_hold_off_the_end(
    tiny_engine: TorchEngine, tiny_llama: Path
) -> None:
    from serving.engine.loading import load_model

    ids = ids_of(tiny_engine, PROMPTS[0])
    _, out = asyncio.run(collect(tiny_engine, EngineRequest(ids, greedy(8))))
    favourite = tokens(out[0])[0]  # the token greedy decoding emits first
    config = EngineConfig(model=str(tiny_llama), max_context=256)
    engine = TorchEngine(config, loaded=replace(load_model(config), stop_token_ids=(favourite,)))
    try:
        _, stopped = asyncio.run(collect(engine, EngineRequest(ids, greedy(8))))
        assert tokens(stopped[0]) == [favourite] and stopped[0][-1].finish_reason == "stop"
        ignore = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
        _, kept = asyncio.run(collect(engine, EngineRequest(ids, ignore)))
        assert tokens(kept[0]) == tokens(out[0]) and kept[0][-1].finish_reason == "length"
        held = SamplingParams(temperature=0.0, max_tokens=8, min_tokens=8)
        _, forced = asyncio.run(collect(engine, EngineRequest(ids, held)))
        assert len(tokens(forced[0])) == 8 and favourite not in tokens(forced[0])
    finally:
        engine.shutdown()
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=4, min_tokens=5)


def repeats(ids: list[int]) -> int:
    """Tokens that are a repeat of an earlier one."""
    return len(ids) - len(set(ids))


def test_penalties_cut_repetition_per_sequence(tiny_engine: TorchEngine) -> None:
    """The random model repeats one token; penalties on generated tokens break that, each
    choice counting its own tokens, and sequences batched together keep their own params."""
    ids = ids_of(tiny_engine, PROMPTS[0])
    plain = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    penalised = replace(plain, frequency_penalty=2.0, presence_penalty=2.0)
    _, free = asyncio.run(collect(tiny_engine, EngineRequest(ids, plain)))
    _, held = asyncio.run(collect(tiny_engine, EngineRequest(ids, penalised)))
    assert repeats(tokens(held[0])) < repeats(tokens(free[0])) - 5
    assert len(tokens(held[0])) == len(tokens(free[0])) == 32

    async def together() -> list[dict[int, list[EngineOutput]]]:
        specs = [EngineRequest(ids, replace(penalised, n=2)), EngineRequest(ids, plain)]
        return [out for _, out in await asyncio.gather(*(collect(tiny_engine, s) for s in specs))]

    both, alongside = asyncio.run(together())
    assert tokens(both[0]) == tokens(both[1]) == tokens(held[0])
    assert tokens(alongside[0]) == tokens(free[0])


def test_repetition_penalty_equals_transformers_generate(
    tiny_engine: TorchEngine, tiny_llama: Path
) -> None:
    """vLLM's repetition penalty is CTRL's, as transformers applies it: prompt tokens count."""
    model = reference(tiny_llama)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, repetition_penalty=2.0)
    changed = 0
    for text in PROMPTS:
        ids = ids_of(tiny_engine, text)
        _, out = asyncio.run(collect(tiny_engine, EngineRequest(ids, params)))
        expected = model.generate(
            torch.tensor([ids]),
            max_new_tokens=12,
            do_sample=False,
            repetition_penalty=2.0,
            eos_token_id=None,
        )[0, len(ids) :]
        assert tokens(out[0]) == expected.tolist()
        _, plain = asyncio.run(collect(tiny_engine, EngineRequest(ids, greedy(12))))
        changed += tokens(plain[0]) != tokens(out[0])
    assert changed  # the penalty made a difference somewhere


@pytest.mark.model
def test_penalties_cut_repeated_phrases_of_the_tiny_pretrained_model(test_model: Path) -> None:
    engine = TorchEngine(EngineConfig(model=str(test_model)))
    try:
        ids = tuple(engine.tokenizer("One day, a big dog")["input_ids"])
        plain = SamplingParams(temperature=0.0, max_tokens=120, ignore_eos=True)

        def repeated_trigrams(params: SamplingParams) -> int:
            _, out = asyncio.run(collect(engine, EngineRequest(ids, params)))
            produced = tokens(out[0])
            trigrams = [tuple(produced[i : i + 3]) for i in range(len(produced) - 2)]
            return len(trigrams) - len(set(trigrams))

        loops = repeated_trigrams(plain)
        assert loops > 10  # greedy decoding of a small model loops
        assert repeated_trigrams(replace(plain, repetition_penalty=1.3)) < loops / 3
        assert repeated_trigrams(replace(plain, frequency_penalty=1.0)) < loops / 3
    finally:
        engine.shutdown()
