"""BlockAttention: the engine mode for landmark block selection (``serving.kernels.blocks``).

Per sequence and layer a :class:`~serving.kernels.blocks.BlockIndex` cuts the far context into
fixed pages as tokens leave the local window and keeps one representative per block: the mean
of the block's 4 keys most attended by the recent queries (InfLLM), or Quest's min/max bounds.
Each decode pass scores the representatives per KV-head group, takes the best blocks (and
neighbours) within the budget, and attends exactly over them, the not-yet-complete last block
and the static set, for every row of the batch at once: ``blocks.select_rows`` stacks the rows'
representatives for one scoring call, and ``SparseAttention.decode`` makes one attention call.
Prompt passes attend in full (Quest) unless ``prefill`` is "sparse" (InfLLM): then each run of
16 consecutive queries chooses its own blocks, row by row, merged with the static set by
log-sum-exp. Choosing per run rather than once per prefill chunk matters: a question at the end
of a prompt shares its chunk with hundreds of filler tokens whose queries would otherwise
outvote it (issue 16).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from serving.engine.attention import ModeContext
from serving.engine.sparsity import SparseAttention, spans
from serving.kernels.blocks import BlockIndex, select_rows
from serving.kernels.merge import Partial, merge
from serving.kernels.static import Layout, static_attention

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

    def observe(
        self, state: _BlockState, query: torch.Tensor, keys: torch.Tensor, split: Layout
    ) -> None:
        """Keep the last queries (group mean per KV head) of every pass, prompt passes too:
        InfLLM's representatives are the keys they attend to most."""
        kv_heads = keys.shape[0]
        heads, new, dim = query.shape
        grouped = query.detach().float().reshape(kv_heads, heads // kv_heads, new, dim).mean(1)
        recent = grouped if state.recent is None else torch.cat([state.recent, grouped], 1)
        state.recent = recent[:, -_RECENT:]

    def select(
        self,
        states: Sequence[_BlockState],
        query: torch.Tensor,  # (B, Hq, D)
        keys: torch.Tensor,  # (B, Hkv, S, D)
        splits: Sequence[Layout],
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (B, Hkv, N)
        """Every row's best blocks within its room, scored in one call, and its open tail."""
        kv_heads = keys.shape[1]
        indexes: list[BlockIndex | None] = []
        rooms, tails = [], []
        for row, (state, split) in enumerate(zip(states, splits, strict=True)):
            if split.far_length == 0:
                indexes.append(None)
                rooms.append(0)
                tails.append((split.far_end, split.far_end))
                continue
            state.index.extend(keys[row], split.far_end, state.recent)
            tails.append((state.index.end, split.far_end))
            indexes.append(state.index)
            rooms.append(self.budget - split.static_length - (split.far_end - state.index.end))
        positions, valid = select_rows(
            indexes,
            query,
            rooms,
            self.neighbours,
            kv_heads=kv_heads,
            score=self.kernels.block_scores,
        )
        tail, open_tail = (t[:, None].expand(-1, kv_heads, -1) for t in spans(tails, keys.device))
        return torch.cat([positions, tail], -1), torch.cat([valid, open_tail], -1)

    def sparse_prefill(
        self,
        states: Sequence[_BlockState],
        query: torch.Tensor,  # (B, Hq, T, D)
        keys: torch.Tensor,  # (B, Hkv, S, D)
        values: torch.Tensor,
        splits: Sequence[Layout],
        scaling: float,
    ) -> torch.Tensor:  # (B, Hq, T, D)
        """InfLLM's prompt passes, row by row: each run of queries chooses its own blocks."""
        rows = []
        for row, split in enumerate(splits):
            q = query[row]  # (Hq, T, D)
            k, v = keys[row, :, : split.total], values[row, :, : split.total]
            static = static_attention(q, k, v, split, scaling)
            far = self.far(states[row], q, k, v, split, scaling)
            rows.append(merge([static, far]).out if far is not None else static.out)
        return torch.stack(rows).to(query.dtype)

    def far(
        self,
        state: _BlockState,
        query: torch.Tensor,  # (Hq, T, D)
        keys: torch.Tensor,  # (Hkv, S, D)
        values: torch.Tensor,
        split: Layout,
        scaling: float,
    ) -> Partial | None:
        """One row's attention over its chosen far blocks and open tail, per run of queries;
        None = nothing far. (The row-by-row path of prompt passes; decoding uses
        :meth:`select`.)"""
        kv_heads = keys.shape[0]
        heads, new, dim = query.shape
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
