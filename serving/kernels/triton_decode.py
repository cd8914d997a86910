"""Triton kernel: one decode query per head over a paged set of key/value blocks -> (out, lse).

Each program handles one query head: it walks its KV head's block table (start, length per
block; length 0 = unused slot), scores each block's keys, and keeps an online softmax
(FlashDecoding-style running max and sum) so that the output and its log-sum-exp come back for
the merge. The PyTorch twin :func:`paged_decode_reference` computes the same with
:func:`serving.kernels.merge.attend`.
"""

from __future__ import annotations

from typing import Any

import torch

from serving.kernels.merge import Partial, attend


def paged_decode_reference(
    query: torch.Tensor,  # (Hq, D)
    keys: torch.Tensor,  # (Hkv, S, D)
    values: torch.Tensor,  # (Hkv, S, D)
    starts: torch.Tensor,  # (Hkv, NB) int
    lengths: torch.Tensor,  # (Hkv, NB) int, 0 = unused
    scaling: float,
) -> Partial:
    """The PyTorch twin: gather every block's tokens per KV head and attend exactly."""
    kv_heads, blocks = starts.shape
    width = int(lengths.max()) if lengths.numel() else 0
    offsets = torch.arange(width, device=keys.device)
    positions = (starts[..., None].long() + offsets).reshape(kv_heads, blocks * width)
    valid = (offsets < lengths[..., None]).reshape(kv_heads, blocks * width)
    positions = torch.where(valid, positions, torch.zeros_like(positions))
    index = positions[..., None].expand(-1, -1, keys.shape[-1])
    picked_keys, picked_values = torch.gather(keys, 1, index), torch.gather(values, 1, index)
    group = query.shape[0] // kv_heads
    visible = valid.repeat_interleave(group, 0)[:, None, :]  # (Hq, 1, N)
    part = attend(query[:, None], picked_keys, picked_values, scaling, visible)
    return Partial(part.out[:, 0], part.lse[:, 0])


def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def paged_decode(
        query,
        keys,
        values,
        starts,
        lengths,
        out,
        lse,
        scaling,
        blocks,
        group,
        stride_kh,
        stride_ks,
        DIM: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        head = tl.program_id(0)
        kv_head = head // group
        dims = tl.arange(0, DIM)
        q = tl.load(query + head * DIM + dims).to(tl.float32)
        best = -float("inf")
        total = 0.0
        acc = tl.zeros([DIM], dtype=tl.float32)
        for block in range(0, blocks):
            start = tl.load(starts + kv_head * blocks + block)
            length = tl.load(lengths + kv_head * blocks + block)
            for offset in range(0, length, BLOCK_N):
                rows = offset + tl.arange(0, BLOCK_N)
                inside = rows < length
                where = kv_head * stride_kh + (start + rows)[:, None] * stride_ks + dims[None, :]
                k = tl.load(keys + where, mask=inside[:, None], other=0.0).to(tl.float32)
                v = tl.load(values + where, mask=inside[:, None], other=0.0).to(tl.float32)
                scores = tl.sum(k * q[None, :], axis=1) * scaling
                scores = tl.where(inside, scores, -float("inf"))
                top = tl.maximum(best, tl.max(scores, axis=0))
                rescale = tl.exp(best - top)
                weights = tl.exp(scores - top)
                total = total * rescale + tl.sum(weights, axis=0)
                acc = acc * rescale + tl.sum(weights[:, None] * v, axis=0)
                best = top
        seen = total > 0
        tl.store(out + head * DIM + dims, tl.where(seen, acc / tl.where(seen, total, 1.0), 0.0))
        tl.store(
            lse + head, tl.where(seen, best + tl.log(tl.where(seen, total, 1.0)), -float("inf"))
        )

    return paged_decode


_COMPILED: dict[str, Any] = {}


def paged_decode(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    starts: torch.Tensor,
    lengths: torch.Tensor,
    scaling: float,
    *,
    block_n: int = 32,
) -> Partial:
    """Triton twin of :func:`paged_decode_reference`; D must be a power of two."""
    heads, dim = query.shape
    if dim & (dim - 1):
        raise ValueError(f"head dim {dim} must be a power of two for the Triton kernel")
    if "kernel" not in _COMPILED:
        _COMPILED["kernel"] = _kernel()
    keys, values = keys.contiguous(), values.contiguous()
    out = torch.empty(heads, dim, dtype=torch.float32, device=query.device)
    lse = torch.empty(heads, dtype=torch.float32, device=query.device)
    _COMPILED["kernel"][(heads,)](
        query.contiguous(),
        keys,
        values,
        starts.to(torch.int32).contiguous(),
        lengths.to(torch.int32).contiguous(),
        out,
        lse,
        float(scaling),
        starts.shape[1],
        heads // keys.shape[0],
        keys.stride(0),
        keys.stride(1),
        DIM=dim,
        BLOCK_N=block_n,
    )
    return Partial(out, lse)
