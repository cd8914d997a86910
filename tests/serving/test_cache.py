"""The engine's KV slab: grows by doubling while sequences need it, and gives the memory back
once the last sequence finishes."""

from __future__ import annotations

import torch

from serving.engine.cache import SlotKVCache


def test_the_slab_grows_for_a_burst_and_shrinks_when_it_is_over() -> None:
    cache = SlotKVCache(2, 1, 4, dtype=torch.float32, device="cpu", slots=2, capacity=8)
    first = cache.keys.shape
    slots = [cache.allocate() for _ in range(5)]  # more than 2 slots: doubled twice
    cache.reserve(100)  # longer than 8 tokens: doubled to 128
    keys = torch.ones(2, 1, 100, 4)
    cache.load(slots[0], keys, keys * 2)
    assert cache.slots == 8 and cache.capacity == 128
    for slot in reversed(slots[1:]):
        cache.release(slot)
    assert cache.capacity == 128  # a sequence still lives: its cache stays whole
    assert torch.equal(cache.prefix(slots[0], 100)[1], keys * 2)
    cache.release(slots[0])
    assert cache.keys.shape == first and cache.values.shape == first and cache.live == 0
    again = cache.allocate()  # and it serves again from the first size
    assert again == 0 and int(cache.lengths[again]) == 0
