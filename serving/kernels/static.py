"""The static set: ``n_init`` attention-sink tokens and the ``n_local`` most recent tokens.

Every method attends exactly over this set (StreamingLLM's sinks + window; InfLLM/EM-LLM's
``n_init``/``n_local``; RetrievalAttention's GPU-resident static pattern). What lies between the
two is the far context, which block selection or retrieval covers. During chunked prefill the
window is the ``n_local`` tokens before the chunk plus the chunk itself (causal), as in InfLLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from serving.kernels.merge import Partial, attend


@dataclass(frozen=True, slots=True)
class Layout:
    """How one sequence's cached tokens split for a pass of ``new`` tokens after ``past``.

    ``[0, init_end)`` sinks, ``[init_end, far_end)`` far context, ``[far_end, past + new)``
    local window. The far context only holds tokens cached before this pass.
    """

    init_end: int
    far_end: int
    total: int  # past + new

    @property
    def far_start(self) -> int:
        return self.init_end

    @property
    def far_length(self) -> int:
        return self.far_end - self.init_end

    @property
    def static_length(self) -> int:
        return self.init_end + self.total - self.far_end


def layout(past: int, new: int, n_init: int, n_local: int) -> Layout:
    """Split ``past + new`` tokens into sinks, far context and local window."""
    total = past + new
    init_end = min(n_init, total)
    far_end = max(init_end, past - n_local)
    return Layout(init_end, far_end, total)


def static_positions(split: Layout, device: torch.device | None = None) -> torch.Tensor:
    """(N,) int64 positions of the static set: the sinks, then the local window."""
    return torch.cat(
        [
            torch.arange(split.init_end, device=device),
            torch.arange(split.far_end, split.total, device=device),
        ]
    )


def static_table(
    splits: Sequence[Layout], device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) int64 positions of each row's static set (sinks, then window), padded to the
    widest row, and (B, N) validity: :func:`static_positions` for a batch of rows."""
    first = torch.tensor([[s.init_end, s.far_end, s.total] for s in splits], device=device)
    init_end, far_end, total = first[:, :1], first[:, 1:2], first[:, 2:]  # (B, 1) each
    width = max((s.static_length for s in splits), default=0)
    index = torch.arange(width, device=device)[None, :]  # (1, N)
    positions = torch.where(index < init_end, index, far_end + index - init_end)
    valid = positions < total
    return torch.where(valid, positions, 0), valid


def static_attention(
    query: torch.Tensor,  # (Hq, T, D) queries at positions past .. past + T - 1
    keys: torch.Tensor,  # (Hkv, S, D) cached keys, S >= split.total
    values: torch.Tensor,  # (Hkv, S, D)
    split: Layout,
    scaling: float,
) -> Partial:
    """Exact causal attention of the new queries over the sinks and the local window."""
    new = query.shape[1]
    positions = static_positions(split, keys.device)  # (N,)
    if split.init_end == split.far_end:  # nothing far: one contiguous slice, no gather
        static_keys, static_values = keys[:, : split.total], values[:, : split.total]
    else:
        static_keys, static_values = keys[:, positions], values[:, positions]  # (Hkv, N, D)
    query_positions = torch.arange(split.total - new, split.total, device=keys.device)  # (T,)
    visible = positions[None, :] <= query_positions[:, None]  # (T, N)
    return attend(query, static_keys, static_values, scaling, visible[None])
