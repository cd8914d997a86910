"""The engine's KV cache: one slab per layer, one slot (row) per live sequence.

Slots of live sequences are kept dense at the front (0..live-1), so a decode step reads
``keys[:, :B]`` as a view with no gather. Finishing a sequence moves the last slot into its
place. Capacity along the sequence axis and the slot count grow by doubling when needed, and go back
to their first size when the last sequence finishes, so a burst of long or many requests does
not keep its memory after it is over.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class SlotObserver(Protocol):
    """Keeps per-slot state beside the cache (the long-context modes' indexes) in step."""

    def slot_moved(self, source: int, target: int | None) -> None:
        """``source``'s data now lives in ``target``; None = ``source`` was emptied."""

    def slot_copied(self, source: int, target: int) -> None:
        """``target`` now holds a copy of ``source``."""


class SlotKVCache:
    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        slots: int = 4,
        capacity: int = 256,
    ) -> None:
        shape = (layers, slots, kv_heads, capacity, head_dim)
        self._first_shape = shape
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # (L, S, Hkv, C, D)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)  # tokens held per slot
        self.live = 0  # slots 0..live-1 are in use
        self.observers: list[SlotObserver] = []

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    @property
    def slots(self) -> int:
        return self.keys.shape[1]

    def _grow(self, slots: int, capacity: int) -> None:
        if slots <= self.slots and capacity <= self.capacity:
            return
        new_slots = max(self.slots, slots)
        new_capacity = self.capacity
        while new_capacity < capacity:
            new_capacity *= 2
        layers, old_slots, heads, old_capacity, dim = self.keys.shape
        shape = (layers, new_slots, heads, new_capacity, dim)
        for name in ("keys", "values"):
            old = getattr(self, name)
            grown = torch.zeros(shape, dtype=old.dtype, device=old.device)
            grown[:, :old_slots, :, :old_capacity] = old
            setattr(self, name, grown)
        lengths = torch.zeros(new_slots, dtype=torch.long, device=self.lengths.device)
        lengths[:old_slots] = self.lengths
        self.lengths = lengths

    def allocate(self) -> int:
        """A fresh empty slot at the end of the live ones."""
        if self.live == self.slots:
            self._grow(self.slots * 2, self.capacity)
        slot = self.live
        self.lengths[slot] = 0
        self.live += 1
        for observer in self.observers:
            observer.slot_moved(slot, None)
        return slot

    def fork(self, source: int) -> int:
        """A new slot holding a copy of ``source``'s cache (``n`` > 1 shares one prefill)."""
        slot = self.allocate()
        length = int(self.lengths[source])
        self.keys[:, slot, :, :length] = self.keys[:, source, :, :length]
        self.values[:, slot, :, :length] = self.values[:, source, :, :length]
        self.lengths[slot] = length
        for observer in self.observers:
            observer.slot_copied(source, slot)
        return slot

    def load(self, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Fill empty ``slot`` with keys/values (L, Hkv, T, D) of its first T tokens."""
        length = keys.shape[2]
        self.reserve(length)
        self.keys[:, slot, :, :length] = keys
        self.values[:, slot, :, :length] = values
        self.lengths[slot] = length

    def prefix(self, slot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the keys/values (L, Hkv, length, D) of ``slot``'s first tokens."""
        return self.keys[:, slot, :, :length], self.values[:, slot, :, :length]

    def release(self, slot: int) -> int | None:
        """Free ``slot``; returns the slot whose data moved into it (the former last), if any."""
        last = self.live - 1
        moved = None
        if slot != last:
            length = int(self.lengths[last])
            self.keys[:, slot, :, :length] = self.keys[:, last, :, :length]
            self.values[:, slot, :, :length] = self.values[:, last, :, :length]
            self.lengths[slot] = length
            moved = last
        for observer in self.observers:
            observer.slot_moved(slot, None)
            if moved is not None:
                observer.slot_moved(moved, slot)
        self.lengths[last] = 0
        self.live -= 1
        if self.live == 0 and self.keys.shape != self._first_shape:
            self._shrink()
        return moved

    def _shrink(self) -> None:
        """Back to the first size (no sequence is live: nothing to copy)."""
        old = self.keys
        self.keys = torch.zeros(self._first_shape, dtype=old.dtype, device=old.device)
        self.values = torch.zeros(self._first_shape, dtype=old.dtype, device=old.device)
        self.lengths = torch.zeros(self._first_shape[1], dtype=torch.long, device=old.device)

    def reserve(self, tokens: int) -> None:
        """Make room for sequences of up to ``tokens`` tokens."""
        self._grow(self.slots, tokens)

    def write(
        self,
        layer: int,
        slots: torch.Tensor,
        past: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
    ) -> None:
        """Store new keys/values (B, Hkv, T, D) at positions past[b]..past[b]+T-1 of slot b."""
        new = key.shape[2]
        if slots.numel() == 1:
            slot, start = int(slots[0]), int(past[0])
            self.keys[layer, slot, :, start : start + new] = key[0]
            self.values[layer, slot, :, start : start + new] = value[0]
            return
        # decode: one token per row, all rows at different positions
        positions = past[:, None] + torch.arange(new, device=past.device)[None, :]  # (B, T)
        rows = slots[:, None].expand_as(positions)
        self.keys[layer, rows, :, positions] = key.permute(0, 2, 1, 3)  # (B, T, Hkv, D)
        self.values[layer, rows, :, positions] = value.permute(0, 2, 1, 3)

    def read(self, layer: int, slots: torch.Tensor, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, Hkv, upto, D) of the given slots; a view when slots are 0..B-1."""
        count = slots.numel()
        first = int(slots[0])
        if first + count <= self.live and bool(
            (slots == torch.arange(first, first + count, device=slots.device)).all()
        ):
            return (
                self.keys[layer, first : first + count, :, :upto],
                self.values[layer, first : first + count, :, :upto],
            )
        return self.keys[layer, slots, :, :upto], self.values[layer, slots, :, :upto]
