"""BlockAttention: the engine mode for landmark block selection (``serving.kernels.blocks``).

Per sequence and layer a :class:`~serving.kernels.blocks.BlockIndex` cuts the far context into
fixed pages as tokens leave the local window and keeps one representative per block: the mean
of the block's 4 keys most attended by the recent queries (InfLLM), or Quest's min/max bounds.
Each pass scores the representatives per KV-head group, takes the best blocks and their
neighbours within the budget, and attends exactly over them, the not-yet-complete last block
and the static set, merged by log-sum-exp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from serving.engine.attention import ModeContext
from serving.engine.sparsity import SparseAttention
from serving.kernels.blocks import BlockIndex, Representative
from serving.kernels.errors import AttentionSettingsError
from serving.kernels.merge import Partial
from serving.kernels.static import Layout

_RECENT = 64  # group-mean queries kept per KV head to find each block's most-attended keys


@dataclass(eq=False)
class _BlockState:
    index: BlockIndex
    recent: torch.Tensor | None = None  # (Hkv, <= _RECENT, D)

    def copy(self) -> _BlockState:
        return _BlockState(self.index.copy(), self.recent)


class BlockAttention(SparseAttention):
    def __init__(self, context: ModeContext) -> None:
        config = context.config
        self.block_size = config.block_size
        self.representative = config.block_representative
        self.neighbours = config.block_neighbours
        if self.block_size < 1 or self.neighbours < 0:
            raise AttentionSettingsError(
                f"block_size={self.block_size} must be >= 1 and block_neighbours="
                f"{self.neighbours} >= 0"
            )
        if self.representative not in ("mean", "bounds"):
            raise AttentionSettingsError(
                f"block_representative {self.representative!r} is not 'mean' or 'bounds'"
            )
        # room for the open last block plus one selected block with its neighbours
        super().__init__(context, minimum_far=(2 * self.neighbours + 2) * self.block_size)

    def new_state(self) -> _BlockState:
        representative: Representative = "bounds" if self.representative == "bounds" else "mean"
        return _BlockState(
            BlockIndex(self.n_init, size=self.block_size, representative=representative)
        )

    def far(
        self,
        state: _BlockState,
        query: torch.Tensor,  # (Hq, T, D)
        keys: torch.Tensor,  # (Hkv, S, D)
        values: torch.Tensor,
        split: Layout,
        scaling: float,
    ) -> Partial | None:
        kv_heads = keys.shape[0]
        heads, new, dim = query.shape
        grouped = query.float().reshape(kv_heads, heads // kv_heads, new, dim).mean(1)
        state.recent = (grouped if state.recent is None else torch.cat([state.recent, grouped], 1))[
            :, -_RECENT:
        ]
        if split.far_length == 0:
            return None
        index = state.index
        index.extend(keys, split.far_end, state.recent)
        tail = torch.arange(index.end, split.far_end, device=keys.device)
        room = self.budget - split.static_length - tail.numel()
        positions, valid, _ = index.select(query, room, self.neighbours, kv_heads=kv_heads)
        positions = torch.cat([positions.to(keys.device), tail.expand(kv_heads, -1)], 1)
        everyone = torch.ones(kv_heads, tail.numel(), dtype=torch.bool, device=keys.device)
        valid = torch.cat([valid.to(keys.device), everyone], 1)
        if positions.shape[1] == 0:
            return None
        return self.attend_positions(query, keys, values, positions, valid, split, scaling)
