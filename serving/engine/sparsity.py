"""What the long-context attention modes share: the static set, per-slot state, re-positioning.

A mode attends each row exactly over its sinks and local window (``serving.kernels.static``) and
over a selection of its far context, and merges the two (``serving.kernels.merge``). The far
selection is the subclass's: block selection (``selection.py``) or graph retrieval
(``retrieval.py``). Rows whose far context is empty take the full path unchanged, and so do
prefill passes when ``prefill`` is "exact" (the default).

Positions: transformers applies rotary embedding before the attention function is called, so
the cache holds rotated keys. RoPE at position p is a rotation R(p), and R(p') = R(p' - p)R(p),
so a cached key is moved to a new position by one more rotation by the difference; storing
pre-rotary keys instead would need a patched attention module per model family. This is exact
for RoPE whose frequencies do not depend on the sequence length (default, linear, llama3, yarn
and longrope scaling all qualify); "dynamic" NTK scaling does not, and is refused.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any

import torch

from serving.engine.attention import CURRENT, FullAttention, ModeContext
from serving.kernels.config import AttentionMode
from serving.kernels.errors import AttentionSettingsError
from serving.kernels.merge import Partial, attend, merge
from serving.kernels.static import Layout, layout, static_attention


def rotate(keys: torch.Tensor, shift: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Move rotated keys (..., N, D) by ``shift`` (..., N) positions (rotate-half convention)."""
    angles = shift.to(torch.float32)[..., None] * inv_freq.to(keys.device, torch.float32)
    angles = torch.cat([angles, angles], -1)  # (..., N, D)
    half = keys.shape[-1] // 2
    turned = torch.cat([-keys[..., half:], keys[..., :half]], -1)
    return (keys.float() * angles.cos() + turned.float() * angles.sin()).to(keys.dtype)


class SparseAttention(ABC):
    """Base of the long-context modes: sinks + window exact, far context by the subclass."""

    name: AttentionMode
    """The mode's name in :class:`~serving.kernels.config.AttentionConfig`."""

    def __init__(self, context: ModeContext) -> None:
        settings = context.config.attention  # checked when built, for its own mode
        if settings.mode != self.name:  # built for another mode: check the budget for this one
            settings = dataclasses.replace(settings, mode=self.name)
        self.settings = settings
        self.exact_prefill = settings.prefill == "exact"
        """Prefill passes (more than one new token) attend exactly, as full attention does; the
        mode still sees them through :meth:`observe` (Quest's and RetrievalAttention's
        full-attention prefill)."""
        self.budget, self.n_init, self.n_local = settings.budget, settings.sinks, settings.window
        self.positions = settings.positions
        self.inv_freq = context.inv_freq
        if self.positions != "original" and (
            self.inv_freq is None or context.rope_type == "dynamic"
        ):
            raise AttentionSettingsError(
                f"positions={self.positions!r} needs rotary embedding with fixed "
                f"frequencies; this model has {context.rope_type!r}: use 'original'"
            )
        self.states: dict[int, list[Any]] = {}  # slot -> per-layer state (None until used)
        self._full = FullAttention()

    # ------------------------------------------------------------------ slot bookkeeping

    def slot_moved(self, source: int, target: int | None) -> None:
        state = self.states.pop(source, None)
        if target is not None and state is not None:
            self.states[target] = state

    def slot_copied(self, source: int, target: int) -> None:
        state = self.states.get(source)
        if state is not None:
            self.states[target] = [None if s is None else s.copy() for s in state]

    def _state(self, slot: int, layer: int) -> Any:
        layers = self.states.setdefault(slot, [])
        while len(layers) <= layer:
            layers.append(None)
        if layers[layer] is None:
            layers[layer] = self.new_state()
        return layers[layer]

    # ------------------------------------------------------------------ the mode

    def __call__(
        self,
        query: torch.Tensor,  # (B, Hq, T, D)
        keys: torch.Tensor,  # (B, Hkv, S, D)
        values: torch.Tensor,
        past: torch.Tensor,  # (B,)
        scaling: float,
        layer: int,
    ) -> torch.Tensor:
        batch = CURRENT.get()
        if batch is None:
            raise RuntimeError("long-context attention called outside an engine forward pass")
        new = query.shape[2]
        splits = [layout(int(p), new, self.n_init, self.n_local) for p in past.tolist()]
        states = [self._state(int(slot), layer) for slot in batch.slots.tolist()]
        for row, split in enumerate(splits):
            self.observe(states[row], query[row], keys[row, :, : split.total], split)
        if all(s.far_length == 0 for s in splits) or (new > 1 and self.exact_prefill):
            return self._full(query, keys, values, past, scaling, layer)
        rows = []
        for row, split in enumerate(splits):
            state = states[row]
            q = query[row]  # (Hq, T, D)
            k, v = keys[row, :, : split.total], values[row, :, : split.total]
            static = static_attention(q, k, v, split, scaling)
            far = self.far(state, q, k, v, split, scaling)
            rows.append(merge([static, far]).out if far is not None else static.out)
        return torch.stack(rows).to(query.dtype)

    def observe(self, state: Any, query: torch.Tensor, keys: torch.Tensor, split: Layout) -> None:
        """See every pass's queries (Hq, T, D) and the cached keys (Hkv, S, D), far context or
        not (to buffer queries and grow an index); by default a mode keeps none."""
        return None

    @abstractmethod
    def new_state(self) -> Any:
        """A slot's fresh per-request state (the subclass's index)."""

    @abstractmethod
    def far(
        self,
        state: Any,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        split: Layout,
        scaling: float,
    ) -> Partial | None:
        """Attention of ``query`` over (part of) the far context; None = nothing far."""

    # ------------------------------------------------------------------ helpers

    def attend_positions(
        self,
        query: torch.Tensor,  # (..., Hq, T, D)
        keys: torch.Tensor,  # (Hkv, S, D)
        values: torch.Tensor,
        positions: torch.Tensor,  # (..., H, N) H = Hkv or Hq; far tokens, before every query
        valid: torch.Tensor,  # (..., H, N)
        split: Layout,
        scaling: float,
    ) -> Partial:
        """Exact attention over the given far positions per KV head (or per query head),
        re-positioned as ``positions`` says. Leading dimensions pair query runs with
        their own positions (selection per run of queries)."""
        heads = positions.shape[-2]
        source = torch.arange(heads, device=keys.device) // (heads // keys.shape[0])
        picked_keys = keys[source[:, None], positions]  # (..., H, N, D)
        picked_values = values[source[:, None], positions]
        if self.positions != "original" and self.inv_freq is not None:
            picked_keys = rotate(
                picked_keys, self.new_positions(positions, valid, split) - positions, self.inv_freq
            )
        group = query.shape[-3] // heads
        visible = valid.repeat_interleave(group, -2)[..., None, :]  # (..., Hq, 1, N)
        return attend(query, picked_keys, picked_values, scaling, visible)

    def new_positions(
        self, positions: torch.Tensor, valid: torch.Tensor, split: Layout
    ) -> torch.Tensor:
        """Where far tokens (..., N) are placed: InfLLM's fixed distance ``n_local`` before the
        first new query, or landmark's contiguous packing just before the local window."""
        if self.positions == "fixed":
            return torch.full_like(positions, split.far_end)
        order = torch.argsort(torch.where(valid, positions, positions.new_full((), 1 << 62)), -1)
        rank = torch.empty_like(order)
        ranks = torch.arange(order.shape[-1], device=order.device).expand_as(order)
        rank.scatter_(-1, order, ranks)
        count = valid.sum(-1, keepdim=True)
        return split.far_end - count + rank  # valid ones fill far_end - count .. far_end - 1
