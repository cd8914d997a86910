"""Triton kernel: the exact merge of P partial attentions (out, lse) per query head.

``lse = log sum_i exp(lse_i)`` and ``out = sum_i exp(lse_i - lse) * out_i``; parts a head did
not see (lse = -inf) drop out. The PyTorch twin is :func:`serving.kernels.merge.merge`.
"""

from __future__ import annotations

from typing import Any

import torch

from serving.kernels.merge import Partial


def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def merge_parts(outs, lses, out, lse, parts, heads, DIM: tl.constexpr):
        head = tl.program_id(0)
        dims = tl.arange(0, DIM)
        best = -float("inf")
        for part in range(0, parts):
            best = tl.maximum(best, tl.load(lses + part * heads + head))
        safe = tl.where(best == -float("inf"), 0.0, best)
        total = 0.0
        acc = tl.zeros([DIM], dtype=tl.float32)
        for part in range(0, parts):
            weight = tl.exp(tl.load(lses + part * heads + head) - safe)
            total += weight
            acc += weight * tl.load(outs + (part * heads + head) * DIM + dims).to(tl.float32)
        seen = total > 0
        tl.store(out + head * DIM + dims, tl.where(seen, acc / tl.where(seen, total, 1.0), 0.0))
        tl.store(
            lse + head, tl.where(seen, safe + tl.log(tl.where(seen, total, 1.0)), -float("inf"))
        )

    return merge_parts


_COMPILED: dict[str, Any] = {}


def merge_partials(outs: torch.Tensor, lses: torch.Tensor) -> Partial:
    """Merge P partials: ``outs`` (P, H, D), ``lses`` (P, H) -> Partial((H, D), (H,)) float32.
    D must be a power of two."""
    parts, heads, dim = outs.shape
    if dim & (dim - 1):
        raise ValueError(f"head dim {dim} must be a power of two for the Triton kernel")
    if "kernel" not in _COMPILED:
        _COMPILED["kernel"] = _kernel()
    out = torch.empty(heads, dim, dtype=torch.float32, device=outs.device)
    lse = torch.empty(heads, dtype=torch.float32, device=outs.device)
    _COMPILED["kernel"][(heads,)](
        outs.contiguous(), lses.float().contiguous(), out, lse, parts, heads, DIM=dim
    )
    return Partial(out, lse)
