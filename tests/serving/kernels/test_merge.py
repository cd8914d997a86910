"""The merge primitive against PyTorch SDPA on fresh random inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from serving.kernels.merge import Partial, attend, merge


def sdpa(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float
) -> torch.Tensor:
    return F.scaled_dot_product_attention(
        query, keys, values, scale=scale, enable_gqa=query.shape[-3] != keys.shape[-3]
    )


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (8, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attend_equals_sdpa_with_lse(heads: int, kv_heads: int, dtype: torch.dtype) -> None:
    query = torch.randn(2, heads, 3, 16).to(dtype)
    keys, values = (
        torch.randn(2, kv_heads, 37, 16).to(dtype),
        torch.randn(2, kv_heads, 37, 16).to(dtype),
    )
    part = attend(query, keys, values, 0.3)
    expected = sdpa(query.float(), keys.float(), values.float(), 0.3)
    torch.testing.assert_close(part.out, expected, atol=1e-4, rtol=1e-4)
    group = heads // kv_heads
    scores = query.float() @ keys.float().repeat_interleave(group, 1).transpose(-1, -2) * 0.3
    torch.testing.assert_close(part.lse, torch.logsumexp(scores, -1))


def test_merge_of_a_random_partition_is_exact() -> None:
    query = torch.randn(4, 2, 32)  # (Hq, T, D)
    keys, values = torch.randn(2, 301, 32), torch.randn(2, 301, 32)
    owner = torch.randint(0, 4, (301,))  # four disjoint, interleaved key sets
    parts = []
    for index in range(4):
        chosen = (owner == index).nonzero().flatten()
        parts.append(attend(query, keys[:, chosen], values[:, chosen], 0.2))
    merged = merge(parts)
    whole = attend(query, keys, values, 0.2)
    torch.testing.assert_close(merged.out, whole.out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged.lse, whole.lse)


def test_a_set_the_query_cannot_see_drops_out() -> None:
    query, keys, values = torch.randn(2, 1, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    hidden = attend(query, keys, values, 1.0, torch.zeros(1, 1, 5, dtype=torch.bool))
    assert torch.isinf(hidden.lse).all() and (hidden.out == 0).all()
    seen = attend(query, keys, values, 1.0)
    merged = merge([hidden, seen])
    torch.testing.assert_close(merged.out, seen.out)
    nothing = merge([hidden, hidden])
    assert (nothing.out == 0).all() and torch.isinf(nothing.lse).all()


def test_merge_needs_parts_and_gqa_needs_divisible_heads() -> None:
    with pytest.raises(ValueError, match="at least one"):
        merge([])
    with pytest.raises(ValueError, match="3 query heads"):
        attend(torch.randn(3, 1, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8), 1.0)
    assert isinstance(merge([Partial(torch.zeros(1, 1, 1), torch.zeros(1, 1))]), Partial)
