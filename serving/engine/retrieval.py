"""RetrievalAttention: the engine mode for graph retrieval (``serving.kernels.retrieval``).

Per sequence and layer an :class:`~serving.kernels.retrieval.AttentionGraph` indexes the far
context one segment at a time from the queries seen since the last segment (the prompt's queries
during prefill, then the generated tokens'). Prefill chunks attend to the far context exactly
(RetrievalAttention runs full attention at prefill); each decode query searches the graph for its
head's top keys, attends to them, the not-yet-indexed tail and the static set, merged by
log-sum-exp. The search runs on CPU over a CPU copy of the indexed keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from serving.engine.attention import ModeContext
from serving.engine.sparsity import SparseAttention
from serving.kernels.errors import AttentionSettingsError
from serving.kernels.merge import Partial, attend
from serving.kernels.retrieval import AttentionGraph
from serving.kernels.static import Layout

_PENDING = 4096  # most building queries kept per KV head between segments (older thinned)


@dataclass(eq=False)
class _GraphState:
    graph: AttentionGraph
    pending: list[torch.Tensor] = field(default_factory=list)  # (Hkv, q, D) CPU float32

    def copy(self) -> _GraphState:
        return _GraphState(self.graph.copy(), list(self.pending))


class RetrievalAttention(SparseAttention):
    def __init__(self, context: ModeContext) -> None:
        config = context.config
        self.segment, self.degree = config.retrieval_segment, config.retrieval_degree
        if self.segment < 1 or self.degree < 2:
            raise AttentionSettingsError(
                f"retrieval_segment={self.segment} must be >= 1 and retrieval_degree="
                f"{self.degree} >= 2"
            )
        # room for a not-yet-indexed segment plus some retrieved keys
        super().__init__(context, minimum_far=self.segment + 16)
        self.kv_heads: int | None = None

    def new_state(self) -> _GraphState:
        return _GraphState(AttentionGraph(self.n_init, degree=self.degree))

    def observe(self, state: _GraphState, query: torch.Tensor, split: Layout) -> None:
        heads, new, dim = query.shape
        kv_heads = self.kv_heads or heads
        grouped = query.detach().float().cpu().reshape(kv_heads, (heads // kv_heads) * new, dim)
        state.pending.append(grouped)
        held = sum(p.shape[1] for p in state.pending)
        if held > 2 * _PENDING:  # thin evenly rather than grow without bound
            everything = torch.cat(state.pending, 1)
            state.pending = [everything[:, :: max(1, held // _PENDING)]]

    def __call__(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        past: torch.Tensor,
        scaling: float,
        layer: int,
    ) -> torch.Tensor:
        self.kv_heads = keys.shape[1]
        return super().__call__(query, keys, values, past, scaling, layer)

    def far(
        self,
        state: _GraphState,
        query: torch.Tensor,  # (Hq, T, D)
        keys: torch.Tensor,  # (Hkv, S, D)
        values: torch.Tensor,
        split: Layout,
        scaling: float,
    ) -> Partial | None:
        if split.far_length == 0:
            return None
        graph = state.graph
        if split.far_end - graph.end >= self.segment and state.pending:
            graph.extend(keys, split.far_end, torch.cat(state.pending, 1))
            state.pending = []
        heads, new, _ = query.shape
        if new > 1:  # prefill: the far context exactly, as RetrievalAttention does
            return attend(
                query,
                keys[:, split.far_start : split.far_end],
                values[:, split.far_start : split.far_end],
                scaling,
            )
        tail = torch.arange(graph.end, split.far_end, device=keys.device)
        room = self.budget - split.static_length - tail.numel()
        if graph.count == 0:
            found = torch.zeros(heads, 0, dtype=torch.long, device=keys.device)
            valid = torch.zeros(heads, 0, dtype=torch.bool, device=keys.device)
        elif graph.count <= room:
            found = torch.arange(graph.start, graph.end, device=keys.device).expand(heads, -1)
            valid = torch.ones_like(found, dtype=torch.bool)
        else:
            result = graph.search(keys, query[:, 0], room)
            found, valid = result.indices.to(keys.device), result.valid.to(keys.device)
        positions = torch.cat([found, tail.expand(heads, -1)], 1)  # (Hq, N)
        everyone = torch.ones(heads, tail.numel(), dtype=torch.bool, device=keys.device)
        valid = torch.cat([valid, everyone], 1)
        if positions.shape[1] == 0:
            return None
        return self.attend_positions(query, keys, values, positions, valid, split, scaling)
