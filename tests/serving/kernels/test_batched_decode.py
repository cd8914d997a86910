"""The long-context modes' batched decode step (issue 16, "kernels on the path").

Rows of different lengths decoded together equal the rows computed one at a time by the
row-by-row code (static set, far part, merge); the Triton kernels forced on CPU (Triton's
interpreter, set by conftest) equal the PyTorch twins end to end through the modes; and a
decode pass makes one attention call for the whole batch, not one per row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from serving.engine.attention import CURRENT, ForwardBatch, ModeContext
from serving.engine.cache import SlotKVCache
from serving.engine.config import EngineConfig
from serving.engine.engine import EngineRequest, TorchEngine
from serving.engine.retrieval import RetrievalAttention
from serving.engine.selection import BlockAttention
from serving.engine.sparsity import SparseAttention
from serving.kernels.backend import DecodeKernels
from serving.kernels.config import AttentionConfig, KernelBackend
from serving.kernels.errors import AttentionSettingsError
from serving.kernels.merge import Partial, merge
from serving.kernels.static import layout, static_attention
from serving.llm import SamplingParams
from tests.serving.kernels.test_engine_modes import TEXT, collect, engine_config

SMALL = {"sinks": 2, "window": 8}
MODES: dict[str, dict[str, Any]] = {
    "blocks-mean": {"mode": "blocks", "block_size": 4, "representative": "mean", "budget": 30},
    "blocks-bounds": {"mode": "blocks", "block_size": 4, "neighbours": 1, "budget": 40},
    "blocks-packed": {"mode": "blocks", "block_size": 4, "positions": "packed", "budget": 30},
    "blocks-fixed": {"mode": "blocks", "block_size": 4, "positions": "fixed", "budget": 30},
    "retrieval": {"mode": "retrieval", "retrieval_segment": 8, "budget": 40},
}
HEADS, KV_HEADS, DIM = 4, 2, 16
PASTS = [300, 150, 5, 64]  # row 2 has no far context yet
STEPS = 3


def make(name: str, kernels: KernelBackend = "torch") -> SparseAttention:
    attention = AttentionConfig(**SMALL, **MODES[name])
    inv_freq = 1.0 / 10000 ** (torch.arange(0, DIM, 2).float() / DIM)
    context = ModeContext(EngineConfig(attention=attention), inv_freq, "default", kernels)
    return BlockAttention(context) if attention.mode == "blocks" else RetrievalAttention(context)


@contextmanager
def forward(mode: SparseAttention, slots: list[int], past: list[int], new: int) -> Iterator[None]:
    cache = SlotKVCache(1, KV_HEADS, DIM, dtype=torch.float32, device="cpu")  # not read
    batch = ForwardBatch(cache, torch.tensor(slots), torch.tensor(past), new, mode)
    token = CURRENT.set(batch)
    try:
        yield
    finally:
        CURRENT.reset(token)


class Sequences:
    """Random queries, keys and values for rows of different lengths, decoded step by step."""

    def __init__(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        length = max(PASTS) + STEPS
        self.keys = torch.randn(len(PASTS), KV_HEADS, length, DIM, generator=generator)
        self.values = torch.randn(len(PASTS), KV_HEADS, length, DIM, generator=generator)
        self.queries = torch.randn(len(PASTS), HEADS, length, DIM, generator=generator)

    def prefill(self, *modes: SparseAttention) -> None:
        """Each row's prompt in one exact pass, alone (it builds retrieval graphs)."""
        for mode in modes:
            for row, past in enumerate(PASTS):
                with forward(mode, [row], [0], past):
                    mode(
                        self.queries[row : row + 1, :, :past],
                        self.keys[row : row + 1, :, :past],
                        self.values[row : row + 1, :, :past],
                        torch.tensor([0]),
                        DIM**-0.5,
                        0,
                    )

    def step(self, mode: SparseAttention, step: int) -> torch.Tensor:
        """Decode token ``step`` of every row in one batched call: (B, Hq, 1, D)."""
        past = [p + step for p in PASTS]
        query = torch.stack([self.queries[r, :, p : p + 1] for r, p in enumerate(past)])
        upto = max(past) + 1
        with forward(mode, list(range(len(PASTS))), past, 1):
            return mode(
                query,
                self.keys[:, :, :upto],
                self.values[:, :, :upto],
                torch.tensor(past),
                DIM**-0.5,
                0,
            )


def one_row(mode: SparseAttention, data: Sequences, row: int, step: int) -> Partial:
    """The row-by-row computation of one row's decode token: static set, far part, merge."""
    past = PASTS[row] + step
    split = layout(past, 1, mode.n_init, mode.n_local)
    query = data.queries[row, :, past : past + 1]  # (Hq, 1, D)
    keys, values = data.keys[row, :, : past + 1], data.values[row, :, : past + 1]
    state = mode.states[row][0]  # the row's slot is its index (Sequences.prefill)
    mode.observe(state, query, keys, split)
    static = static_attention(query, keys, values, split, DIM**-0.5)
    if isinstance(mode, BlockAttention):
        far = mode.far(state, query, keys, values, split, DIM**-0.5)
    else:  # retrieval: what the row's graph finds, attended on its own
        positions, valid = mode.select([state], query[None, :, 0], keys[None], [split])
        far = None
        if bool(valid.any()):
            far = mode.attend_positions(
                query, keys, values, positions[0], valid[0], split, DIM**-0.5
            )
    return merge([static, far]) if far is not None else static


@pytest.mark.parametrize("name", sorted(MODES))
def test_batched_decode_equals_each_row_alone(name: str) -> None:
    data = Sequences(seed=len(name))
    batched, alone = make(name), make(name)
    data.prefill(batched, alone)
    for step in range(STEPS):
        got = data.step(batched, step)[:, :, 0]
        for row in range(len(PASTS)):
            expected = one_row(alone, data, row, step).out[:, 0]
            torch.testing.assert_close(got[row], expected, atol=1e-5, rtol=1e-5)
    full = torch.nn.functional.scaled_dot_product_attention(
        data.queries[:1, :, PASTS[0] + STEPS - 1 : PASTS[0] + STEPS],
        data.keys[:1, :, : PASTS[0] + STEPS],
        data.values[:1, :, : PASTS[0] + STEPS],
        scale=DIM**-0.5,
        enable_gqa=True,
    )[0, :, 0]
    assert float((got[0] - full).abs().max()) > 1e-3  # the long row did select


@pytest.mark.parametrize("name", sorted(MODES))
def test_triton_kernels_through_the_modes_equal_the_torch_twins(name: str) -> None:
    pytest.importorskip("triton")
    data = Sequences(seed=len(name) + 1)
    twins, kernels = make(name, "torch"), make(name, "triton")
    assert kernels.kernels.uses_triton(data.keys) and not twins.kernels.uses_triton(data.keys)
    data.prefill(twins, kernels)
    for step in range(STEPS):
        torch.testing.assert_close(
            data.step(kernels, step), data.step(twins, step), atol=1e-4, rtol=1e-4
        )


class CountingKernels(DecodeKernels):
    """The PyTorch twins, counting calls and the rows each call covers."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.decodes: list[int] = []
        self.scorings: list[int] = []

    def block_scores(self, query: torch.Tensor, representatives: torch.Tensor) -> torch.Tensor:
        self.scorings.append(query.shape[0])
        return super().block_scores(query, representatives)

    def decode(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        positions: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
    ) -> Partial:
        self.decodes.append(query.shape[0])
        return super().decode(query, keys, values, positions, valid, scaling)


@pytest.mark.parametrize("name", ["blocks-mean", "retrieval"])
def test_a_decode_pass_makes_one_attention_call_for_the_batch(name: str) -> None:
    data = Sequences(seed=3)
    mode = make(name)
    data.prefill(mode)
    counter = CountingKernels()
    mode.kernels = counter
    data.step(mode, 0)
    assert counter.decodes == [len(PASTS)]
    far = sum(past > mode.n_init + mode.n_local + 4 for past in PASTS)  # rows with blocks
    assert counter.scorings == ([far] if name == "blocks-mean" else [])


def test_the_engine_decodes_its_running_sequences_in_one_call_per_layer(
    tiny_llama: Path,
) -> None:
    settings = {**SMALL, **MODES["blocks-mean"], "budget": 36}
    engine = TorchEngine(engine_config(tiny_llama, **settings))
    (mode,) = [o for o in engine.cache.observers if isinstance(o, SparseAttention)]
    counter = CountingKernels()
    mode.kernels = counter
    prompts = [TEXT, TEXT[40:], TEXT[:90]]
    try:

        async def together() -> None:
            specs = [
                EngineRequest(
                    tuple(engine.tokenizer(text, add_special_tokens=False)["input_ids"]),
                    SamplingParams(temperature=0.0, max_tokens=40),
                )
                for text in prompts
            ]
            await asyncio.gather(*(collect(engine, spec) for spec in specs))

        asyncio.run(together())
    finally:
        engine.shutdown()
    layers = 2  # tests.models.build_tiny_llama
    assert counter.decodes and len(counter.decodes) % layers == 0
    assert max(counter.decodes) == len(prompts)  # every running sequence in one call
    assert len(counter.scorings) <= len(counter.decodes)


def test_an_unknown_kernel_backend_names_the_known_ones() -> None:
    with pytest.raises(AttentionSettingsError, match="not one of auto, torch, triton"):
        DecodeKernels("cuda")  # type: ignore[arg-type]
    assert not DecodeKernels("auto").uses_triton(torch.zeros(1))  # CPU tensors: the twins
