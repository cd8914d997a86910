"""The merge primitive: attention over disjoint key/value sets, merged exactly.

Attention over a set of keys returns its output ``o`` and the log-sum-exp ``lse`` of its
scaled scores. For disjoint sets the full softmax attention is
``o = sum_i exp(lse_i - lse) * o_i`` with ``lse = log sum_i exp(lse_i)`` (RetrievalAttention;
FlashAttention's online softmax). A set a query cannot see at all has ``lse = -inf`` and output
0, so it drops out of the merge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class Partial:
    """Attention of some queries over one key set."""

    out: torch.Tensor  # (..., Hq, T, D) float32
    lse: torch.Tensor  # (..., Hq, T) float32, -inf where the query saw no key


def group_queries(query: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(..., Hq, T, D) -> (..., Hkv, G*T, D): the G query heads sharing a KV head side by side."""
    *lead, heads, new, dim = query.shape
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads do not split into {kv_heads} KV-head groups")
    return query.reshape(*lead, kv_heads, (heads // kv_heads) * new, dim)


def attend(
    query: torch.Tensor,  # (..., Hq, T, D)
    keys: torch.Tensor,  # (..., Hkv, S, D)
    values: torch.Tensor,  # (..., Hkv, S, D)
    scaling: float,
    visible: torch.Tensor | None = None,  # bool, broadcastable to (..., Hq, T, S)
) -> Partial:
    """Exact attention with its log-sum-exp; the reference every kernel is tested against.

    Scores and the softmax are computed in float32 whatever the input dtype. GQA: query head
    ``h`` uses KV head ``h // (Hq // Hkv)``.
    """
    *lead, heads, new, dim = query.shape
    kv_heads, length = keys.shape[-3], keys.shape[-2]
    grouped = group_queries(query.float(), kv_heads)  # (..., Hkv, G*T, D)
    scores = grouped @ keys.float().transpose(-1, -2) * scaling  # (..., Hkv, G*T, S)
    scores = scores.reshape(*lead, heads, new, length)  # (..., Hq, T, S)
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (..., Hq, T)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    weights = torch.exp(scores - safe[..., None])  # exp(-inf) = 0 for hidden keys
    grouped_weights = weights.reshape(*lead, kv_heads, (heads // kv_heads) * new, length)
    out = (grouped_weights @ values.float()).reshape(*lead, heads, new, dim)
    return Partial(out, lse)


def merge(parts: Sequence[Partial]) -> Partial:
    """The exact attention over the union of the parts' (disjoint) key sets."""
    if not parts:
        raise ValueError("merge needs at least one partial attention")
    if len(parts) == 1:
        return parts[0]
    lses = torch.stack([p.lse for p in parts])  # (P, ..., Hq, T)
    total = torch.logsumexp(lses, dim=0)  # (..., Hq, T)
    safe = torch.where(torch.isinf(total), torch.zeros_like(total), total)
    weights = torch.exp(lses - safe)  # (P, ..., Hq, T); 0 for parts with lse = -inf
    out = sum(w[..., None] * p.out for w, p in zip(weights, parts, strict=True))
    assert isinstance(out, torch.Tensor)
    return Partial(out, total)
