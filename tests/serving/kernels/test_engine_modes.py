"""The engine's blocks and retrieval modes against dense attention, end to end."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from serving.engine.attention import ModeContext
from serving.engine.config import EngineConfig
from serving.engine.engine import EngineOutput, EngineRequest, PromptResult, TorchEngine
from serving.engine.modes import MODES as ENGINE_MODES
from serving.engine.modes import make_mode
from serving.engine.sparsity import rotate
from serving.kernels.config import MODES as CONFIG_MODES
from serving.kernels.config import AttentionConfig
from serving.kernels.errors import AttentionSettingsError
from serving.llm import SamplingParams

TEXT = (
    "The quick brown fox jumps over the lazy dog and then it ran far away into the forest "
    "where nobody could see it any more. The hunters came back at night with lanterns. "
) * 2
SMALL = {"sinks": 2, "window": 8}
MODES: dict[str, dict[str, Any]] = {
    "blocks-mean": {"mode": "blocks", "block_size": 4, "representative": "mean", **SMALL},
    "blocks-bounds": {"mode": "blocks", "block_size": 4, "representative": "bounds", **SMALL},
    "blocks-packed": {"mode": "blocks", "block_size": 4, "positions": "packed", **SMALL},
    "blocks-sparse": {"mode": "blocks", "block_size": 4, "prefill": "sparse", **SMALL},
    "retrieval": {"mode": "retrieval", "retrieval_segment": 8, **SMALL},
}


def run(
    folder: Path, text: str = TEXT, max_tokens: int = 12, **settings: Any
) -> tuple[list[float], list[int], list[float]]:
    """Prompt logprobs, greedy tokens and their logprobs from a fresh engine; ``settings``
    are the AttentionConfig's."""
    engine = TorchEngine(engine_config(folder, **settings))
    try:
        ids = tuple(engine.tokenizer(text, add_special_tokens=False)["input_ids"])
        spec = EngineRequest(
            ids, SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0), 0
        )
        return asyncio.run(collect(engine, spec))
    finally:
        engine.shutdown()


def engine_config(folder: Path, **settings: Any) -> EngineConfig:
    attention = AttentionConfig(**settings)
    return EngineConfig(model=str(folder), prefill_chunk=5, max_context=512, attention=attention)


async def collect(
    engine: TorchEngine, spec: EngineRequest
) -> tuple[list[float], list[int], list[float]]:
    prompt: list[float] = []
    tokens: list[int] = []
    chosen: list[float] = []
    async for item in engine.generate(spec):
        if isinstance(item, PromptResult):
            scored = item.prompt_logprobs or ()
            prompt = [t.logprob for t in scored[1:] if t.logprob is not None]
        elif isinstance(item, EngineOutput) and item.index == 0:
            tokens += item.token_ids
            chosen += [t.logprob for t in item.logprobs if t.logprob is not None]
    return prompt, tokens, chosen


@pytest.fixture(scope="module")
def dense(tiny_llama: Path) -> tuple[list[float], list[int], list[float]]:
    return run(tiny_llama)


@pytest.mark.parametrize("name", sorted(MODES))
def test_budget_at_least_the_context_equals_dense(
    name: str, tiny_llama: Path, dense: tuple[list[float], list[int], list[float]]
) -> None:
    prompt, tokens, chosen = run(tiny_llama, budget=512, **MODES[name])
    assert len(prompt) > 40  # long enough that far context exists (2 sinks + 8 local)
    torch.testing.assert_close(torch.tensor(prompt), torch.tensor(dense[0]), atol=1e-4, rtol=0)
    assert tokens == dense[1]
    torch.testing.assert_close(torch.tensor(chosen), torch.tensor(dense[2]), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("name", "budget"),
    [("blocks-mean", 30), ("blocks-bounds", 30), ("blocks-sparse", 30), ("retrieval", 40)],
)
def test_a_small_budget_attends_to_less(
    name: str, budget: int, tiny_llama: Path, dense: tuple[list[float], list[int], list[float]]
) -> None:
    prompt, tokens, chosen = run(tiny_llama, budget=budget, **MODES[name])
    assert len(tokens) == len(dense[1])
    if name == "blocks-sparse":  # prefill selects too (InfLLM)
        gap = (torch.tensor(prompt) - torch.tensor(dense[0])).abs().max()
    else:  # prefill is exact (Quest, RetrievalAttention); decoding selects
        torch.testing.assert_close(torch.tensor(prompt), torch.tensor(dense[0]), atol=1e-4, rtol=0)
        gap = (torch.tensor(chosen) - torch.tensor(dense[2][: len(chosen)])).abs().max()
    assert float(gap) > 1e-3


@pytest.mark.parametrize("name", ["blocks-mean", "retrieval"])
def test_concurrent_requests_keep_their_own_indexes(name: str, tiny_llama: Path) -> None:
    """Sequences that finish at different times move cache slots; n=2 forks one; each must
    still see its own index: results equal one-at-a-time runs."""
    settings = {"budget": 36, **MODES[name]}
    texts = [TEXT, TEXT[40:] + "Once upon a time", "Short one. " * 8]
    alone = [run(tiny_llama, text, 6 + 3 * i, **settings)[1] for i, text in enumerate(texts)]
    engine = TorchEngine(engine_config(tiny_llama, **settings))
    try:

        async def together() -> list[list[int]]:
            specs = [
                EngineRequest(
                    tuple(engine.tokenizer(text, add_special_tokens=False)["input_ids"]),
                    SamplingParams(temperature=0.0, max_tokens=6 + 3 * i, n=2 if i == 0 else 1),
                )
                for i, text in enumerate(texts)
            ]
            results = await asyncio.gather(*(collect(engine, spec) for spec in specs))
            return [r[1] for r in results]

        got = asyncio.run(together())
    finally:
        engine.shutdown()
    assert got == alone


def test_bad_settings_name_the_fix() -> None:
    with pytest.raises(AttentionSettingsError, match="raise --attention-budget"):
        AttentionConfig(mode="blocks", budget=100)
    with pytest.raises(AttentionSettingsError, match="raise --attention-budget"):
        make_mode("blocks", ModeContext(EngineConfig(attention=AttentionConfig(budget=100))))
    with pytest.raises(AttentionSettingsError, match="is not one of bounds, mean"):
        AttentionConfig(representative="max")  # type: ignore[arg-type]
    with pytest.raises(AttentionSettingsError, match="is not one of"):
        AttentionConfig(mode="retrieval", positions="far")  # type: ignore[arg-type]
    fixed = EngineConfig(attention=AttentionConfig(positions="fixed"))
    with pytest.raises(AttentionSettingsError, match="fixed frequencies"):
        make_mode("blocks", ModeContext(fixed, None, "none"))
    with pytest.raises(ValueError, match="unknown"):
        make_mode("sparse", ModeContext(EngineConfig()))


def test_the_engine_builds_every_mode_the_config_names() -> None:
    assert sorted(ENGINE_MODES) == sorted(CONFIG_MODES)


def test_rotating_a_cached_key_moves_it_exactly() -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    rotary = LlamaRotaryEmbedding(LlamaConfig(hidden_size=64, num_attention_heads=4))
    keys = torch.randn(1, 2, 5, 16)
    old, new = torch.tensor([[3, 40, 41, 100, 7]]), torch.tensor([[90, 91, 92, 93, 94]])
    cos, sin = rotary(keys, old)
    _, at_old = apply_rotary_pos_emb(keys, keys, cos, sin)
    cos, sin = rotary(keys, new)
    _, at_new = apply_rotary_pos_emb(keys, keys, cos, sin)
    moved = rotate(at_old, (new - old)[:, None, :].expand(1, 2, 5), rotary.inv_freq)
    torch.testing.assert_close(moved, at_new, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def pretrained() -> Iterator[Path]:
    folder = os.environ.get("MNEME_TEST_MODEL")
    if not folder or not Path(folder).exists():
        pytest.skip("set MNEME_TEST_MODEL to the tiny pretrained model (stories260K, hf format)")
    yield Path(folder)


@pytest.mark.model
@pytest.mark.parametrize("name", ["blocks-mean", "blocks-bounds", "retrieval"])
def test_pretrained_model_with_full_budget_equals_dense(name: str, pretrained: Path) -> None:
    text = "Once upon a time, there was a little girl named Lily. She liked to play outside. " * 3
    dense = run(pretrained, text, 16)
    prompt, tokens, _ = run(pretrained, text, 16, budget=512, **MODES[name])
    torch.testing.assert_close(torch.tensor(prompt), torch.tensor(dense[0]), atol=1e-4, rtol=0)
    assert tokens == dense[1]


@pytest.mark.parametrize("representative", ["bounds", "mean"])
def test_decoding_past_the_window_before_a_far_block_is_complete(
    representative: str, tiny_llama: Path
) -> None:
    """A sequence that has just passed sinks + window has a far tail but no complete block:
    decoding goes on (nothing to select yet) and matches full attention, which sees the same
    tokens."""
    settings = {"sinks": 2, "window": 8, "block_size": 16, "budget": 64}
    dense = run(tiny_llama, "Once upon a time", max_tokens=20)
    blocks = run(
        tiny_llama,
        "Once upon a time",
        max_tokens=20,
        mode="blocks",
        representative=representative,
        **settings,
    )
    assert blocks[1] == dense[1]
