"""What the long-context attention modes share: the static set, per-slot state, re-positioning,
and the batched decode step.

A mode attends each row exactly over its sinks and local window (``serving.kernels.static``) and
over a selection of its far context. The far selection is the subclass's: block selection
(``selection.py``) or graph retrieval (``retrieval.py``). Rows whose far context is empty take
the full path unchanged, and so do prefill passes when ``prefill`` is "exact" (the default).

A decode pass (one new token per row) is batched (issue 16): the subclass's :meth:`select`
does the per-row bookkeeping (growing each row's index, searching each row's graph) and
returns every row's far positions, padded; the static sets join them in one (B, H, N) list of
positions, and one call of ``DecodeKernels.decode`` (``serving.kernels.backend``: Triton on
CUDA, the PyTorch twin elsewhere) attends over all of them, with no loop over rows or heads.
Only prompt passes with ``prefill="sparse"`` (block selection) go row by row.

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
from collections.abc import Sequence
from typing import Any

import torch

from serving.engine.attention import CURRENT, FullAttention, ModeContext
from serving.kernels.backend import DecodeKernels
from serving.kernels.config import AttentionMode
from serving.kernels.errors import AttentionSettingsError
from serving.kernels.merge import Partial, attend
from serving.kernels.static import Layout, layout, static_table
from serving.kernels.triton_decode import gather_positions


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
        self.kernels = DecodeKernels(context.kernels)
        """The decode step's scoring and attention kernels, for every row at once."""
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
        if new > 1:
            return self.sparse_prefill(states, query, keys, values, splits, scaling)
        return self.decode(states, query, keys, values, splits, scaling)

    def decode(
        self,
        states: Sequence[Any],
        query: torch.Tensor,  # (B, Hq, 1, D)
        keys: torch.Tensor,  # (B, Hkv, S, D)
        values: torch.Tensor,
        splits: Sequence[Layout],
        scaling: float,
    ) -> torch.Tensor:  # (B, Hq, 1, D)
        """One new token per row: each row's far selection and its static set in one padded
        list of positions (B, H, N), attended by one kernel call for the whole batch."""
        queries = query[:, :, 0]  # (B, Hq, D)
        far, far_valid = self.select(states, queries, keys, splits)  # (B, H, Nf)
        lists = far.shape[1]
        static, static_valid = static_table(splits, keys.device)  # (B, Ns)
        static, static_valid = (t[:, None].expand(-1, lists, -1) for t in (static, static_valid))
        positions = torch.cat([static, far], -1)  # (B, H, N)
        valid = torch.cat([static_valid, far_valid], -1)
        if self.positions != "original" and self.inv_freq is not None:
            # far keys move (one more rotation each): attend over rotated copies
            far_end = torch.tensor([s.far_end for s in splits], device=far.device)[:, None, None]
            shift = torch.cat(
                [torch.zeros_like(static), self.new_positions(far, far_valid, far_end) - far], -1
            )
            keys = rotate(gather_positions(keys, positions), shift, self.inv_freq)
            values = gather_positions(values, positions)  # (B, H, N, D)
            positions = torch.arange(positions.shape[-1], device=far.device).expand_as(positions)
        out = self.kernels.decode(queries, keys, values, positions, valid, scaling).out
        return out[:, :, None].to(query.dtype)

    def sparse_prefill(
        self,
        states: Sequence[Any],
        query: torch.Tensor,  # (B, Hq, T, D)
        keys: torch.Tensor,  # (B, Hkv, S, D)
        values: torch.Tensor,
        splits: Sequence[Layout],
        scaling: float,
    ) -> torch.Tensor:  # (B, Hq, T, D)
        """A prompt pass that selects (``prefill="sparse"``), which only block selection
        offers (the config refuses it for the others)."""
        raise AttentionSettingsError(f"prefill='sparse' is not available for {self.name!r}")

    def observe(self, state: Any, query: torch.Tensor, keys: torch.Tensor, split: Layout) -> None:
        """See every pass's queries (Hq, T, D) and the cached keys (Hkv, S, D), far context or
        not (to buffer queries and grow an index); by default a mode keeps none."""
        return None

    @abstractmethod
    def new_state(self) -> Any:
        """A slot's fresh per-request state (the subclass's index)."""

    @abstractmethod
    def select(
        self,
        states: Sequence[Any],
        query: torch.Tensor,  # (B, Hq, D) each row's decode query
        keys: torch.Tensor,  # (B, Hkv, S, D)
        splits: Sequence[Layout],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's far positions to attend to, (B, H, N) int64 on the keys' device with
        H = Hkv (a list per KV head) or Hq (per query head), padded, and (B, H, N) validity;
        a row without far context selects nothing. Grows each row's index as needed."""

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
            moved = self.new_positions(positions, valid, split.far_end) - positions
            picked_keys = rotate(picked_keys, moved, self.inv_freq)
        group = query.shape[-3] // heads
        visible = valid.repeat_interleave(group, -2)[..., None, :]  # (..., Hq, 1, N)
        return attend(query, picked_keys, picked_values, scaling, visible)

    def new_positions(
        self, positions: torch.Tensor, valid: torch.Tensor, far_end: int | torch.Tensor
    ) -> torch.Tensor:
        """Where far tokens (..., N) are placed: InfLLM's fixed distance ``n_local`` before the
        first new query, or landmark's contiguous packing just before the local window.
        ``far_end`` is the row's end of the far context (a tensor broadcastable to (..., 1)
        for the rows of a batch)."""
        if self.positions == "fixed":
            return torch.zeros_like(positions) + far_end
        order = torch.argsort(torch.where(valid, positions, positions.new_full((), 1 << 62)), -1)
        rank = torch.empty_like(order)
        ranks = torch.arange(order.shape[-1], device=order.device).expand_as(order)
        rank.scatter_(-1, order, ranks)
        count = valid.sum(-1, keepdim=True)
        return far_end - count + rank  # valid ones fill far_end - count .. far_end - 1


def stack_rows(
    rows: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row positions (..., N_b) and validity, padded to the longest: (B, ..., N) on
    ``device``, padding invalid."""
    width = max((p.shape[-1] for p, _ in rows), default=0)
    shape = (len(rows), *(rows[0][0].shape[:-1] if rows else ()), width)
    positions = torch.zeros(shape, dtype=torch.long)
    valid = torch.zeros(shape, dtype=torch.bool)
    for row, (p, v) in enumerate(rows):
        positions[row, ..., : p.shape[-1]], valid[row, ..., : v.shape[-1]] = p.cpu(), v.cpu()
    return positions.to(device), valid.to(device)


def spans(
    bounds: Sequence[tuple[int, int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) positions ``start .. end - 1`` of each row's ``(start, end)``, padded, and
    validity (each row's open tail of not-yet-indexed far tokens)."""
    ends = torch.tensor([[start, end] for start, end in bounds], device=device).view(-1, 2)
    width = max((end - start for start, end in bounds), default=0)
    positions = ends[:, :1] + torch.arange(width, device=device)[None, :]
    valid = positions < ends[:, 1:]
    return torch.where(valid, positions, 0), valid
