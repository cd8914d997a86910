"""Prefix caching in the built-in engine: reuse is exact, bounded, and used by beam search."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from serving.engine.config import EngineConfig
from serving.engine.engine import EngineRequest, TorchEngine
from serving.engine.prefixes import MIN_REUSE, PrefixCache, worth_waiting
from serving.kernels.config import AttentionConfig
from serving.llm import SamplingParams
from serving.local import LocalLLM
from serving.rerank import RerankConfig, generate
from serving.rerank.rankgen import RankGenReranker
from tests.serving.rerank.conftest import TINY_T5
from tests.serving.test_engine import collect, ids_of, tokens

STORY = "Once upon a time there was a small fox who lived at the edge of a very old wood"


def kv(length: int, value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    tensor = torch.full((2, 1, length, 4), value)
    return tensor, tensor.clone()


def test_lookup_takes_the_longest_common_prefix_and_leaves_a_token() -> None:
    cache = PrefixCache(budget=100)
    cache.store(range(10), *kv(10, 1.0))
    cache.store([0, 1, 2, 3, 4, 9, 9], *kv(7, 2.0))
    hit = cache.lookup([0, 1, 2, 3, 4, 5, 6, 7, 42])
    assert hit is not None and hit.length == 8 and hit.keys.shape == (2, 1, 8, 4)
    assert float(hit.keys.mean()) == 1.0
    whole = cache.lookup(list(range(10)))  # the same prompt: its last token is prefilled again
    assert whole is not None and whole.length == 9
    assert cache.lookup([0, 1, 2, 7]) is None  # 3 shared tokens < MIN_REUSE
    assert cache.stats.hits == 2 and cache.stats.lookups == 3 and cache.stats.reused_tokens == 17


def test_store_drops_covered_prefixes_and_the_least_recently_used() -> None:
    cache = PrefixCache(budget=20)
    cache.store(range(6), *kv(6))
    cache.store(range(9), *kv(9))  # extends the first: it replaces it
    assert len(cache) == 1 and cache.stats.kept_tokens == 9
    cache.store(range(100, 108), *kv(8))
    assert cache.lookup([*range(9), 1]) is not None  # touch: range(9) is now the newest
    cache.store(range(200, 210), *kv(10))  # 9 + 8 + 10 > 20: the least recently used goes
    assert cache.lookup([*range(100, 108), 0]) is None
    assert cache.lookup([*range(9), 1]) is not None
    assert cache.stats.kept_tokens <= 20
    cache.store(range(MIN_REUSE - 1), *kv(MIN_REUSE - 1))  # too short to be worth keeping
    assert cache.stats.kept_tokens == 19
    cache.store(range(3), *kv(3))  # inside a kept entry: nothing new to keep
    assert cache.stats.kept_tokens == 19 and len(cache) == 2
    cache.store(range(300, 330), *kv(30))  # longer than the whole budget: its first 20 tokens
    assert cache.stats.kept_tokens == 20 and len(cache) == 1
    hit = cache.lookup([*range(300, 330), 0])
    assert hit is not None and hit.length == 20 and hit.keys.shape[2] == 20
    with pytest.raises(ValueError, match="budget=0"):
        PrefixCache(0)


@pytest.fixture(scope="module")
def engines(tiny_llama: Path) -> Iterator[tuple[TorchEngine, TorchEngine]]:
    with_cache = TorchEngine(EngineConfig(model=str(tiny_llama), prefill_chunk=5))
    without = TorchEngine(
        EngineConfig(model=str(tiny_llama), prefill_chunk=5, prefix_cache_tokens=0)
    )
    yield with_cache, without
    with_cache.shutdown()
    without.shutdown()


def run(
    engine: TorchEngine, prompt: tuple[int, ...], **params: object
) -> tuple[list[int], list[float]]:
    spec = EngineRequest(prompt, SamplingParams(max_tokens=8, logprobs=0, **params))  # type: ignore[arg-type]
    _, out = asyncio.run(collect(engine, spec))
    logprobs = [float(e.logprob or 0.0) for o in out[0] for e in o.logprobs]
    return tokens(out[0]), logprobs


def test_a_reused_prefix_gives_what_a_full_prefill_gives(
    engines: tuple[TorchEngine, TorchEngine],
) -> None:
    cached, plain = engines
    assert cached.prefixes is not None and plain.prefixes is None
    first = ids_of(cached, STORY)
    longer = first + ids_of(cached, " and every night the fox")
    before = cached.prefixes.stats
    for prompt in (first, longer):
        got, got_logprobs = run(cached, prompt, temperature=0.0)
        want, want_logprobs = run(plain, prompt, temperature=0.0)
        assert got == want
        assert got_logprobs == pytest.approx(want_logprobs, abs=1e-4)
    after = cached.prefixes.stats
    assert after.hits - before.hits >= 1
    assert after.reused_tokens - before.reused_tokens >= len(first)  # only the new words prefilled


def test_prompt_logprobs_requests_prefill_everything(
    engines: tuple[TorchEngine, TorchEngine],
) -> None:
    cached, _ = engines
    assert cached.prefixes is not None
    prompt = ids_of(cached, STORY)
    run(cached, prompt, temperature=0.0)
    lookups = cached.prefixes.stats.lookups
    spec = EngineRequest(prompt, SamplingParams(max_tokens=2), prompt_logprobs=0)
    result, _ = asyncio.run(collect(cached, spec))
    assert result is not None and result.prompt_logprobs is not None
    assert len(result.prompt_logprobs) == len(prompt)
    assert cached.prefixes.stats.lookups == lookups  # not even looked up


def test_long_context_modes_have_no_prefix_cache(tiny_llama: Path) -> None:
    engine = TorchEngine(
        EngineConfig(model=str(tiny_llama), attention=AttentionConfig(mode="blocks"))
    )
    try:
        assert engine.prefixes is None
    finally:
        engine.shutdown()


def test_beam_search_reuses_each_steps_prompt_and_decodes_the_same(
    engines: tuple[TorchEngine, TorchEngine],
) -> None:
    cached, plain = engines
    assert cached.prefixes is not None
    scorer = RankGenReranker.random(cached.tokenizer, seed=1, **TINY_T5)
    config = RerankConfig(method="beam", samples=3, beam=2, step_tokens=4, max_tokens=12)

    def beam(engine: TorchEngine) -> str:
        llm = LocalLLM(engine)
        result = asyncio.run(generate(llm, STORY, rerank=config, reranker=scorer, seed=7))
        return result.text

    before = cached.prefixes.stats.reused_tokens
    assert beam(cached) == beam(plain)
    prompt = len(ids_of(cached, STORY))
    # steps 2 and 3: each beam's prompt starts with the whole prompt of the step before
    assert cached.prefixes.stats.reused_tokens - before >= 2 * 2 * prompt


def test_prompts_arriving_together_prefill_their_shared_prefix_once(
    engines: tuple[TorchEngine, TorchEngine],
) -> None:
    cached, plain = engines
    assert cached.prefixes is not None
    prompt = ids_of(cached, STORY + " Three drafts of the next line:")
    prompts = [prompt, prompt, (*prompt, *ids_of(cached, " A"))]

    async def together(engine: TorchEngine) -> list[list[int]]:
        async def one(ids: tuple[int, ...]) -> list[int]:
            _, out = await collect(
                engine, EngineRequest(ids, SamplingParams(max_tokens=6, temperature=0.0))
            )
            return tokens(out[0])

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    before = cached.prefixes.stats
    assert asyncio.run(together(cached)) == asyncio.run(together(plain))
    after = cached.prefixes.stats
    # the first is prefilled whole; the other two wait for it and reuse all but their ends
    assert after.reused_tokens - before.reused_tokens >= 2 * (len(prompt) - 1)


def test_only_a_large_shared_part_is_worth_waiting_for() -> None:
    prompt = tuple(range(100))
    assert worth_waiting(prompt, prompt, budget=4096)
    assert worth_waiting(prompt, (*range(60), 7, 7), budget=4096)  # 60 of 100 shared
    assert not worth_waiting(prompt, (*range(30), 7), budget=4096)  # a short shared head
    assert not worth_waiting(prompt, prompt, budget=40)  # what would be kept is too short
    assert not worth_waiting((1, 2, 3), (1, 2, 3), budget=4096)  # below MIN_REUSE


def test_prompts_the_cache_cannot_serve_are_not_held_back(tiny_llama: Path) -> None:
    engine = TorchEngine(
        EngineConfig(model=str(tiny_llama), prefill_chunk=8, prefix_cache_tokens=16)
    )
    steps = 0
    prefill = engine._prefill_step

    def counted() -> None:
        nonlocal steps
        steps += 1
        prefill()

    engine._prefill_step = counted  # type: ignore[method-assign]
    head = ids_of(engine, STORY + STORY)[:36]
    prompts = [(*head, *ids_of(engine, f" {word}")) for word in ("one", "two", "three", "four")]

    async def together() -> None:
        spec = [EngineRequest(p, SamplingParams(max_tokens=1, temperature=0.0)) for p in prompts]
        await asyncio.gather(*(collect(engine, s) for s in spec))

    try:
        asyncio.run(together())
    finally:
        engine.shutdown()
    # 16 kept tokens are under half of each prompt: the four prefill side by side (5 chunks of
    # 8 each, ~5 steps, a few more if they arrive a step apart), not one after another (20)
    assert steps <= 10


def test_an_idle_engine_drops_its_kept_prefixes(tiny_llama: Path) -> None:
    engine = TorchEngine(EngineConfig(model=str(tiny_llama), prefix_idle_s=0.3))
    try:
        assert engine.prefixes is not None
        prompt = ids_of(engine, STORY)
        first, _ = run(engine, prompt, temperature=0.0)
        deadline = time.monotonic() + 30  # a bound on waiting, not a speed assertion
        while len(engine.prefixes) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(engine.prefixes) == 0
        again, _ = run(engine, prompt, temperature=0.0)  # serves as before, and keeps it again
        assert again == first and engine.prefixes.stats.kept_tokens > 0
    finally:
        engine.shutdown()


def test_prefix_idle_must_be_positive(tiny_llama: Path) -> None:
    with pytest.raises(ValueError, match="prefix_idle_s=0"):
        TorchEngine(EngineConfig(model=str(tiny_llama), prefix_idle_s=0))
