"""Triton kernel: decode attention, one query per head, over selected cached positions.

Every row of a decode batch attends to its own selection: positions (B, Hp, N) into its cached
keys (B, Hkv, S, D), one list per KV head (block selection, Hp = Hkv) or per query head
(retrieval, Hp = Hq), padded. Each program takes one query head of one row and one split of
``split`` positions of its list (FlashDecoding's split-K, so that a small batch still fills
the GPU): it gathers keys and values by position, keeps an online softmax (running max and
sum) and writes the split's output and log-sum-exp, and
:func:`~serving.kernels.triton_merge.merge_partials` merges the splits exactly.
:func:`paged_decode` is the same over one sequence's paged block table (start, length per
block).

The PyTorch twins :func:`selected_decode_reference` and :func:`paged_decode_reference` compute
the same with :func:`serving.kernels.merge.attend` (and :func:`~serving.kernels.merge.merge`).
"""

from __future__ import annotations

from typing import Any

import torch

from serving.kernels.merge import Partial, attend, merge
from serving.kernels.triton_merge import merge_partials

_GATHERED = 1 << 21  # gathered key elements per split of the PyTorch twin (8 MB in float32)


def gather_positions(tensor: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, Hp, N, D): each row's and list's vectors of ``tensor`` (B, Hkv, S, D) at
    ``positions`` (B, Hp, N); list ``h`` reads KV head ``h // (Hp // Hkv)``."""
    rows, kv_heads, length, dim = tensor.shape
    lists = positions.shape[1]
    if lists % kv_heads:
        raise ValueError(f"{lists} position lists do not split into {kv_heads} KV heads")
    batch = torch.arange(rows, device=tensor.device)[:, None, None]
    source = (torch.arange(lists, device=tensor.device) // (lists // kv_heads))[None, :, None]
    strides = tensor.stride()
    if tensor.numel() == 0 or strides[-1] != 1 or any(s % dim for s in strides[:3]):
        return tensor[batch, source, positions]
    # Rows of D contiguous values (the cache slab, or a view of it): one index_select over a
    # (rows, D) view of the storage, several times faster on CPU than advanced indexing.
    steps = [stride // dim for stride in strides[:3]]  # in rows of D values
    span = (rows - 1) * steps[0] + (kv_heads - 1) * steps[1] + (length - 1) * steps[2] + 1
    flat = tensor.as_strided((span, dim), (dim, 1))
    offsets = (batch * steps[0] + source * steps[1]) + positions * steps[2]
    return flat.index_select(0, offsets.flatten()).view(*positions.shape, dim)


def selected_decode_reference(
    query: torch.Tensor,  # (B, Hq, D)
    keys: torch.Tensor,  # (B, Hkv, S, D)
    values: torch.Tensor,  # (B, Hkv, S, D)
    positions: torch.Tensor,  # (B, Hp, N) int, Hkv | Hp | Hq
    valid: torch.Tensor,  # (B, Hp, N) bool
    scaling: float,
    *,
    split: int | None = None,
) -> Partial:  # out (B, Hq, D), lse (B, Hq) float32
    """The PyTorch twin: gather the keys and values of ``split`` positions of every list at a
    time, attend exactly and merge the splits (:func:`~serving.kernels.merge.merge`), as the
    kernel does. By default a split's gather holds about 8 MB: larger buffers are fresh pages
    on every call (glibc maps allocations over 32 MB anew), which costs more than the copy."""
    rows, heads, dim = query.shape
    lists, width = positions.shape[1:]
    split = split or max(64, _GATHERED // max(1, rows * lists * dim))
    safe = torch.where(valid, positions, torch.zeros_like(positions))
    visible = valid.repeat_interleave(heads // lists, 1)[:, :, None, :]  # (B, Hq, 1, N)
    parts = []
    for start in range(0, max(width, 1), split):
        chunk = safe[..., start : start + split]
        picked_keys = gather_positions(keys, chunk)  # (B, Hp, n, D)
        picked_values = gather_positions(values, chunk)
        seen = visible[..., start : start + split]
        parts.append(attend(query[:, :, None], picked_keys, picked_values, scaling, seen))
    part = merge(parts)
    return Partial(part.out[:, :, 0], part.lse[:, :, 0])


def paged_positions(
    starts: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The token positions (H, NB*L) and validity of a block table (H, NB) of (start, length)
    per block, L the longest block; unused slots have length 0."""
    heads, blocks = starts.shape
    width = int(lengths.max()) if lengths.numel() else 0
    offsets = torch.arange(width, device=starts.device)
    positions = (starts[..., None].long() + offsets).reshape(heads, blocks * width)
    valid = (offsets < lengths[..., None]).reshape(heads, blocks * width)
    return torch.where(valid, positions, torch.zeros_like(positions)), valid


def paged_decode_reference(
    query: torch.Tensor,  # (Hq, D)
    keys: torch.Tensor,  # (Hkv, S, D)
    values: torch.Tensor,  # (Hkv, S, D)
    starts: torch.Tensor,  # (Hkv, NB) int
    lengths: torch.Tensor,  # (Hkv, NB) int, 0 = unused
    scaling: float,
) -> Partial:
    """The PyTorch twin: gather every block's tokens per KV head and attend exactly."""
    positions, valid = paged_positions(starts, lengths)
    index = positions[..., None].expand(-1, -1, keys.shape[-1])
    picked_keys, picked_values = torch.gather(keys, 1, index), torch.gather(values, 1, index)
    group = query.shape[0] // keys.shape[0]
    visible = valid.repeat_interleave(group, 0)[:, None, :]  # (Hq, 1, N)
    part = attend(query[:, None], picked_keys, picked_values, scaling, visible)
    return Partial(part.out[:, 0], part.lse[:, 0])


def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def selected_decode(
        query,
        keys,
        values,
        positions,
        outs,
        lses,
        scaling,
        heads,
        kv_group,
        list_group,
        lists,
        width,
        split,
        stride_kb,
        stride_kh,
        stride_ks,
        stride_vb,
        stride_vh,
        stride_vs,
        DIM: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        row = tl.program_id(0)  # batch row * heads + query head
        part = tl.program_id(1)
        batch = (row // heads).to(tl.int64)
        head = row % heads
        kv_head = (head // kv_group).to(tl.int64)
        table = positions + (batch * lists + head // list_group) * width
        key_base = keys + batch * stride_kb + kv_head * stride_kh
        value_base = values + batch * stride_vb + kv_head * stride_vh
        dims = tl.arange(0, DIM)
        q = tl.load(query + row.to(tl.int64) * DIM + dims).to(tl.float32)
        best = -float("inf")
        total = 0.0
        acc = tl.zeros([DIM], dtype=tl.float32)
        begin = part * split
        end = tl.minimum(begin + split, width)
        for offset in range(begin, end, BLOCK_N):
            columns = offset + tl.arange(0, BLOCK_N)
            at = tl.load(table + columns, mask=columns < end, other=-1)
            live = at >= 0  # -1 = padding
            at = tl.where(live, at, 0).to(tl.int64)
            k = tl.load(
                key_base + at[:, None] * stride_ks + dims[None, :], mask=live[:, None], other=0.0
            ).to(tl.float32)
            v = tl.load(
                value_base + at[:, None] * stride_vs + dims[None, :], mask=live[:, None], other=0.0
            ).to(tl.float32)
            scores = tl.where(live, tl.sum(k * q[None, :], axis=1) * scaling, -float("inf"))
            top = tl.maximum(best, tl.max(scores, axis=0))
            shift = tl.where(top == -float("inf"), 0.0, top)  # a tile of padding only
            rescale = tl.exp(best - shift)
            weights = tl.exp(scores - shift)
            total = total * rescale + tl.sum(weights, axis=0)
            acc = acc * rescale + tl.sum(weights[:, None] * v, axis=0)
            best = top
        seen = total > 0
        slot = part.to(tl.int64) * tl.num_programs(0) + row
        tl.store(outs + slot * DIM + dims, tl.where(seen, acc / tl.where(seen, total, 1.0), 0.0))
        tl.store(
            lses + slot, tl.where(seen, best + tl.log(tl.where(seen, total, 1.0)), -float("inf"))
        )

    return selected_decode


_COMPILED: dict[str, Any] = {}


def selected_decode(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor,
    scaling: float,
    *,
    block_n: int = 32,
    split: int = 256,
) -> Partial:
    """Triton twin of :func:`selected_decode_reference`; D must be a power of two. ``keys`` and
    ``values`` may be strided views (the engine's cache slab); only their last dimension must
    be contiguous."""
    rows, heads, dim = query.shape
    kv_heads, lists, width = keys.shape[1], positions.shape[1], positions.shape[2]
    if dim & (dim - 1):
        raise ValueError(f"head dim {dim} must be a power of two for the Triton kernel")
    if heads % lists or lists % kv_heads:
        raise ValueError(f"{lists} position lists must divide {heads} and split {kv_heads} heads")
    if width == 0 or rows == 0:
        out = torch.zeros(rows, heads, dim, dtype=torch.float32, device=query.device)
        return Partial(out, out.new_full((rows, heads), float("-inf")))
    if "kernel" not in _COMPILED:
        _COMPILED["kernel"] = _kernel()
    keys = keys if keys.stride(-1) == 1 else keys.contiguous()
    values = values if values.stride(-1) == 1 else values.contiguous()
    table = torch.where(valid, positions, -1).to(torch.int32).contiguous()
    parts = -(-width // split)
    outs = torch.empty(parts, rows * heads, dim, dtype=torch.float32, device=query.device)
    lses = torch.empty(parts, rows * heads, dtype=torch.float32, device=query.device)
    _COMPILED["kernel"][(rows * heads, parts)](
        query.contiguous(),
        keys,
        values,
        table,
        outs,
        lses,
        float(scaling),
        heads,
        heads // kv_heads,
        heads // lists,
        lists,
        width,
        split,
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        values.stride(0),
        values.stride(1),
        values.stride(2),
        DIM=dim,
        BLOCK_N=block_n,
    )
    merged = Partial(outs[0], lses[0]) if parts == 1 else merge_partials(outs, lses)
    return Partial(merged.out.view(rows, heads, dim), merged.lse.view(rows, heads))


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
    """Triton twin of :func:`paged_decode_reference` (the block table's tokens through
    :func:`selected_decode`); D must be a power of two."""
    positions, valid = paged_positions(starts, lengths)
    part = selected_decode(
        query[None],
        keys[None],
        values[None],
        positions[None],
        valid[None],
        scaling,
        block_n=block_n,
    )
    return Partial(part.out[0], part.lse[0])
