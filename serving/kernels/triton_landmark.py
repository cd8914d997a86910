"""Triton kernel: landmark scoring of every block for one decode query per head, then top-k.

Each program scores ``BLOCK_B`` blocks of one KV head of one batch row for the G query heads
of its group and keeps the maximum over the group: q*r for mean representatives
(..., Hkv, nb, D), or Quest's bound q+ * max + q- * min for (..., Hkv, nb, 2, D). Leading
dimensions (the rows of a decode batch, each with its own representatives) flatten into the
grid. The PyTorch twin is :func:`serving.kernels.blocks.score_blocks`; :func:`top_blocks` adds
the top-k and neighbours.
"""

from __future__ import annotations

from typing import Any

import torch

from serving.kernels.blocks import score_blocks, select_blocks


def landmark_scores_reference(query: torch.Tensor, representatives: torch.Tensor) -> torch.Tensor:
    """The PyTorch twin: (..., Hkv, nb) float32 scores for queries (..., Hq, D)."""
    return score_blocks(query[..., None, :], representatives)


def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def landmark_scores(
        query,
        vectors,
        scores,
        blocks,
        group,
        DIM: tl.constexpr,
        BLOCK_B: tl.constexpr,
        BOUNDS: tl.constexpr,
    ):
        kv_head = tl.program_id(0)
        rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
        inside = rows < blocks
        dims = tl.arange(0, DIM)
        best = tl.full([BLOCK_B], -float("inf"), dtype=tl.float32)
        for member in range(0, group):
            q = tl.load(query + (kv_head * group + member) * DIM + dims).to(tl.float32)
            if BOUNDS:
                base = (kv_head * blocks + rows)[:, None] * 2 * DIM + dims[None, :]
                low = tl.load(vectors + base, mask=inside[:, None], other=0.0).to(tl.float32)
                high = tl.load(vectors + base + DIM, mask=inside[:, None], other=0.0).to(tl.float32)
                positive = tl.maximum(q, 0.0)[None, :]
                negative = tl.minimum(q, 0.0)[None, :]
                score = tl.sum(positive * high + negative * low, axis=1)
            else:
                base = (kv_head * blocks + rows)[:, None] * DIM + dims[None, :]
                r = tl.load(vectors + base, mask=inside[:, None], other=0.0).to(tl.float32)
                score = tl.sum(r * q[None, :], axis=1)
            best = tl.maximum(best, score)
        tl.store(scores + kv_head * blocks + rows, best, mask=inside)

    return landmark_scores


_COMPILED: dict[str, Any] = {}


def landmark_scores(
    query: torch.Tensor, representatives: torch.Tensor, *, block_b: int = 64
) -> torch.Tensor:
    """Triton twin of :func:`landmark_scores_reference`; D must be a power of two."""
    *lead, heads, dim = query.shape
    bounds = representatives.dim() == query.dim() + 2
    kv_heads, blocks = representatives.shape[len(lead) : len(lead) + 2]
    if dim & (dim - 1):
        raise ValueError(f"head dim {dim} must be a power of two for the Triton kernel")
    rows = query.numel() // (heads * dim)  # programs' KV heads run over rows * Hkv
    scores = torch.empty(*lead, kv_heads, blocks, dtype=torch.float32, device=query.device)
    if scores.numel() == 0:
        return scores
    if "kernel" not in _COMPILED:
        _COMPILED["kernel"] = _kernel()
    import triton

    _COMPILED["kernel"][(rows * kv_heads, triton.cdiv(blocks, block_b))](
        query.contiguous(),
        representatives.contiguous(),
        scores,
        blocks,
        heads // kv_heads,
        DIM=dim,
        BLOCK_B=block_b,
        BOUNDS=bounds,
    )
    return scores


def top_blocks(
    query: torch.Tensor, representatives: torch.Tensor, count: int, neighbours: int = 1
) -> torch.Tensor:
    """(..., Hkv, nb) bool: the ``count`` best blocks per KV head (Triton scores) and
    neighbours."""
    return select_blocks(landmark_scores(query, representatives), count, neighbours)
