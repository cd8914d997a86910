"""RetrievalAttention: the engine mode for graph retrieval (``serving.kernels.retrieval``).

Per sequence and layer an :class:`~serving.kernels.retrieval.AttentionGraph` indexes the far
context one segment at a time from the queries at and after the segment (the prompt's queries
during prefill, then the generated tokens'), so a key is linked to the later queries that look
for it. Prefill chunks attend to the far context exactly
(RetrievalAttention runs full attention at prefill); each decode query searches the graph for its
head's top keys, attends to them, the not-yet-indexed tail and the static set. The search runs
row by row on CPU over a CPU copy of the indexed keys; the attention over what every row found
is one batched kernel call (``SparseAttention.decode``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from serving.engine.attention import ModeContext
from serving.engine.sparsity import SparseAttention, stack_rows
from serving.kernels.retrieval import AttentionGraph
from serving.kernels.static import Layout

_PENDING = 4096  # most building queries kept per KV head (older ones thinned)
_QUERY_STRIDE = 8  # one query position in this many builds the graph (bounds build time)


@dataclass(eq=False)
class _GraphState:
    graph: AttentionGraph
    queries: torch.Tensor | None = None  # (Hkv, Q, D) CPU float32, at or after graph.end
    positions: torch.Tensor | None = None  # (Q,) the token position of each
    unseen: int = 0  # the last ``unseen`` queries were not yet given to the graph

    def copy(self) -> _GraphState:
        return _GraphState(self.graph.copy(), self.queries, self.positions, self.unseen)

    def add(self, queries: torch.Tensor, positions: torch.Tensor) -> None:
        if self.queries is None or self.positions is None:
            self.queries, self.positions = queries, positions
        else:
            self.queries = torch.cat([self.queries, queries], 1)
            self.positions = torch.cat([self.positions, positions])
        self.unseen += queries.shape[1]
        held = self.positions.numel()
        if held > 2 * _PENDING:  # thin evenly rather than grow without bound
            keep = torch.arange(0, held, max(1, held // _PENDING))
            self.unseen = int((keep >= held - self.unseen).sum())
            self.queries, self.positions = self.queries[:, keep], self.positions[keep]

    def drop_before(self, position: int) -> None:
        """Forget queries before ``position``: they cannot attend to keys indexed from there."""
        if self.positions is None or self.queries is None:
            return
        keep = self.positions >= position
        self.queries, self.positions = self.queries[:, keep], self.positions[keep]


class RetrievalAttention(SparseAttention):
    name = "retrieval"

    def __init__(self, context: ModeContext) -> None:
        super().__init__(context)
        self.segment = self.settings.retrieval_segment
        self.degree = self.settings.retrieval_degree

    def new_state(self) -> _GraphState:
        return _GraphState(AttentionGraph(self.n_init, degree=self.degree))

    def observe(
        self, state: _GraphState, query: torch.Tensor, keys: torch.Tensor, split: Layout
    ) -> None:
        """Buffer the pass's queries; index the next segment once it is far enough."""
        heads, new, dim = query.shape
        kv_heads = keys.shape[0]
        group = heads // kv_heads
        positions = torch.arange(split.total - new, split.total)
        kept = positions % _QUERY_STRIDE == 0
        grouped = query.detach()[:, kept.to(query.device)].float().cpu()  # (Hq, t, D)
        state.add(
            grouped.reshape(kv_heads, group * int(kept.sum()), dim), positions[kept].repeat(group)
        )
        graph = state.graph
        if split.far_end - graph.end >= self.segment and state.queries is not None:
            # build from every query that can attend to the new segment (RetrievalAttention
            # builds from all prompt queries), not only from those since the last segment
            state.drop_before(graph.end)
            graph.extend(keys, split.far_end, state.queries, state.unseen)
            state.unseen = 0
            state.drop_before(split.far_end)

    def select(
        self,
        states: Sequence[_GraphState],
        query: torch.Tensor,  # (B, Hq, D): prefill passes attend exactly (exact_prefill)
        keys: torch.Tensor,  # (B, Hkv, S, D)
        splits: Sequence[Layout],
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (B, Hq, N)
        """Per row on CPU: each query head's top keys from the graph (all of them when they
        fit the room) and the not-yet-indexed tail."""
        heads = query.shape[1]
        queries = query.detach().float().cpu()
        rows = []
        for row, (state, split) in enumerate(zip(states, splits, strict=True)):
            if split.far_length == 0:
                nothing = torch.zeros(heads, 0, dtype=torch.long)
                rows.append((nothing, nothing.bool()))
                continue
            graph = state.graph
            tail = torch.arange(graph.end, split.far_end)
            room = self.budget - split.static_length - tail.numel()
            if graph.count == 0:
                found = torch.zeros(heads, 0, dtype=torch.long)
                valid = torch.zeros(heads, 0, dtype=torch.bool)
            elif graph.count <= room:
                found = torch.arange(graph.start, graph.end).expand(heads, -1)
                valid = torch.ones_like(found, dtype=torch.bool)
            else:
                result = graph.search(keys[row], queries[row], room)
                found, valid = result.indices, result.valid
            everyone = torch.ones(heads, tail.numel(), dtype=torch.bool)
            rows.append(
                (torch.cat([found, tail.expand(heads, -1)], 1), torch.cat([valid, everyone], 1))
            )
        return stack_rows(rows, keys.device)
