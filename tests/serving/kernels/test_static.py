"""The static set (sinks + local window) and how a pass's context splits."""

from __future__ import annotations

import torch

from serving.kernels.merge import attend, merge
from serving.kernels.static import layout, static_attention, static_positions


def test_layout_splits_sinks_far_and_window() -> None:
    split = layout(past=100, new=1, n_init=4, n_local=16)
    assert (split.init_end, split.far_end, split.total) == (4, 84, 101)
    assert split.far_length == 80 and split.static_length == 4 + 17
    short = layout(past=10, new=5, n_init=4, n_local=16)
    assert short.far_length == 0 and short.static_length == 15
    tiny = layout(past=0, new=2, n_init=4, n_local=16)
    assert (tiny.init_end, tiny.far_end) == (2, 2)
    positions = static_positions(split)
    assert positions[:4].tolist() == [0, 1, 2, 3] and positions[4:].tolist() == list(range(84, 101))


def test_static_plus_far_equals_causal_full_attention() -> None:
    past, new = 60, 3
    query = torch.randn(4, new, 16)
    keys, values = torch.randn(2, past + new, 16), torch.randn(2, past + new, 16)
    split = layout(past, new, n_init=3, n_local=10)
    static = static_attention(query, keys, values, split, 0.25)
    far = attend(
        query,
        keys[:, split.far_start : split.far_end],
        values[:, split.far_start : split.far_end],
        0.25,
    )
    causal = torch.arange(past + new)[None, :] <= torch.arange(past, past + new)[:, None]
    full = attend(query, keys, values, 0.25, causal[None])
    merged = merge([static, far])
    torch.testing.assert_close(merged.out, full.out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged.lse, full.lse)
