"""BlockAttention: the engine mode for landmark block selection (``serving.kernels.blocks``).

Per sequence and layer a :class:`~serving.kernels.blocks.BlockIndex` cuts the far context into
fixed pages as tokens leave the local window and keeps one representative per block: the mean
of the block's 4 keys most attended by the recent queries (InfLLM), or Quest's min/max bounds.
Each decode pass scores the representatives per KV-head group, takes the best blocks (and
neighbours) within the budget, and attends exactly over them, the not-yet-complete last block
and the static set, merged by log-sum-exp. Prompt passes attend in full (Quest) unless
``prefill`` is "sparse" (InfLLM): then each run of 16 consecutive queries chooses its own
blocks. Choosing per run rather than once per prefill chunk matters: a question at the end of a
prompt shares its chunk with hundreds of filler tokens whose queries would otherwise outvote it
(issue 16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from serving.engine.attention import ModeContext
from serving.engine.sparsity import SparseAttention
from serving.kernels.blocks import BlockIndex
from serving.kernels.merge import Partial
from serving.kernels.static import Layout

_RECENT = 64  # group-mean queries kept per KV head to find each block's most-attended keys
_QUERY_RUN = 16  # consecutive queries that share one block selection (chunked prefill)
_GATHER = 1 << 23  # most gathered key elements per attention call (bounds prefill memory)


@dataclass(eq=False)
class _BlockState:
    index: BlockIndex
    recent: torch.Tensor | None = None  # (Hkv, <= _RECENT, D)

    def copy(self) -> _BlockState:
        return _BlockState(self.index.copy(), self.recent)


class BlockAttention(SparseAttention):
    name = "blocks"

    def __init__(self, context: ModeContext) -> None:
        super().__init__(context)
        self.block_size = self.settings.block_size
        self.representative = self.settings.representative
        self.neighbours = self.settings.neighbours

    def new_state(self) -> _BlockState:
        return _BlockState(
            BlockIndex(self.n_init, size=self.block_size, representative=self.representative)
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
        # Each run of queries chooses its own blocks. The room is what the budget leaves beside
        # the sinks, the window and the open tail for one query; during chunked prefill a query
        # also sees its own chunk's earlier tokens exactly (InfLLM's local window), so a
        # prefill query may attend to up to prefill_chunk - 1 tokens more than the budget.
        run = min(_QUERY_RUN, new)
        runs = -(-new // run)
        before = split.init_end + (split.total - new - split.far_end)  # sinks + window
        room = self.budget - before - 1 - tail.numel()
        positions, valid, _ = index.select(
            query, room, self.neighbours, kv_heads=kv_heads, group=run
        )  # (U, Hkv, N)
        if runs > 1 and all(torch.equal(t, t[:1].expand_as(t)) for t in (positions, valid)):
            run, runs = new, 1  # every run chose the same (all fits): one gather for all
            positions, valid = positions[:1], valid[:1]
        positions = torch.cat([positions.to(keys.device), tail.expand(runs, kv_heads, -1)], -1)
        everyone = torch.ones(runs, kv_heads, tail.numel(), dtype=torch.bool, device=keys.device)
        valid = torch.cat([valid.to(keys.device), everyone], -1)
        if positions.shape[-1] == 0:
            return None
        padded = torch.cat([query, query[:, -1:].expand(-1, runs * run - new, -1)], 1)
        queries = padded.view(heads, runs, run, dim).transpose(0, 1)  # (U, Hq, run, D)
        step = max(1, _GATHER // max(1, positions.shape[1] * positions.shape[2] * dim))
        parts = [
            self.attend_positions(
                queries[i : i + step],
                keys,
                values,
                positions[i : i + step],
                valid[i : i + step],
                split,
                scaling,
            )
            for i in range(0, runs, step)
        ]
        out = torch.cat([p.out for p in parts]).transpose(0, 1).reshape(heads, -1, dim)
        lse = torch.cat([p.lse for p in parts]).transpose(0, 1).reshape(heads, -1)
        return Partial(out[:, :new], lse[:, :new])
