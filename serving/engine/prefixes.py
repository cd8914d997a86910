"""Prefix caching for the built-in engine: prompts' KV kept after prefill, reused by later
prompts that start with the same tokens.

When a prompt has been prefilled, a copy of its keys and values is kept under its token ids. A
later prompt takes the longest common prefix with any kept entry from there and prefills only
the rest, so RankGen's beam search (each step's prompt = the previous step's + one beam piece),
multi-turn chat and repeated system prompts skip recomputing what they share. The cached KV is
exactly what a prefill would compute (same tokens at the same positions), so outputs do not
change.

Entries live in a least-recently-used map bounded by a token budget. An entry whose tokens are a
prefix of a newer one is dropped: the newer one serves every lookup it could. The slab cache
(serving/engine/cache.py) has one row per sequence, so kept prefixes are copies, not shared
pages as in vLLM's automatic prefix caching; a hit costs one copy of the reused KV.

Prompts that arrive together and share a prefix (the writer's drafts, a chat fanned out) would
all be prefilled in the same step, before any of them is kept; the engine holds the later ones
back until the first is prefilled (:func:`worth_waiting`), so they reuse it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

MIN_REUSE = 4
"""Shortest shared prefix worth a copy, in tokens."""


@dataclass(frozen=True, slots=True)
class PrefixHit:
    """Keys and values (L, Hkv, T, D) of the first ``length`` tokens of a prompt."""

    length: int
    keys: torch.Tensor
    values: torch.Tensor


@dataclass(frozen=True, slots=True)
class PrefixStats:
    """What prefix caching did since the engine started."""

    lookups: int
    hits: int
    prompt_tokens: int
    """Prompt tokens of the requests looked up."""
    reused_tokens: int
    """Prompt tokens taken from the cache instead of prefilled."""
    kept_tokens: int
    """Tokens held now."""


class PrefixCache:
    """Prompts' KV by token ids, least recently used first out, at most ``budget`` tokens."""

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"budget={budget} must be at least 1 token")
        self.budget = budget
        self._entries: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = (
            OrderedDict()
        )
        self._kept = 0
        self._lookups = self._hits = self._prompts = self._reused = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def stats(self) -> PrefixStats:
        return PrefixStats(self._lookups, self._hits, self._prompts, self._reused, self._kept)

    def lookup(self, prompt: Sequence[int]) -> PrefixHit | None:
        """The longest kept prefix of ``prompt``, leaving at least its last token to prefill
        (the first sample needs that token's logits); None below :data:`MIN_REUSE` tokens."""
        self._lookups += 1
        self._prompts += len(prompt)
        limit = len(prompt) - 1
        best, best_length = None, 0
        for tokens in self._entries:
            length = common_prefix(tokens, prompt, limit)
            if length > best_length:
                best, best_length = tokens, length
        if best is None or best_length < MIN_REUSE:
            return None
        self._entries.move_to_end(best)
        keys, values = self._entries[best]
        self._hits += 1
        self._reused += best_length
        return PrefixHit(best_length, keys[:, :, :best_length], values[:, :, :best_length])

    def store(self, prompt: Sequence[int], keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep ``keys``/``values`` (L, Hkv, len(prompt), D, copied here) for ``prompt``; a
        prompt longer than the budget keeps its first ``budget`` tokens."""
        tokens = tuple(prompt[: self.budget])
        if len(tokens) < MIN_REUSE:
            return
        if tokens in self._entries:
            self._entries.move_to_end(tokens)
            return
        if any(common_prefix(k, tokens, len(tokens)) == len(tokens) for k in self._entries):
            return  # already inside a kept entry, which serves every lookup this one would
        for kept in [k for k in self._entries if common_prefix(k, tokens, len(k)) == len(k)]:
            self._drop(kept)  # a prefix of the new entry: the new one serves its lookups
        while self._kept + len(tokens) > self.budget:
            self._drop(next(iter(self._entries)))
        length = len(tokens)
        self._entries[tokens] = (keys[:, :, :length].clone(), values[:, :, :length].clone())
        self._kept += length

    def clear(self) -> None:
        self._entries.clear()
        self._kept = 0

    def _drop(self, tokens: tuple[int, ...]) -> None:
        del self._entries[tokens]
        self._kept -= len(tokens)


def worth_waiting(prompt: tuple[int, ...], other: tuple[int, ...], budget: int) -> bool:
    """Should ``prompt`` wait for ``other``'s prefill? When at least half of it (and at least
    :data:`MIN_REUSE` tokens, within what ``budget`` keeps) would then come from the cache."""
    need = max(MIN_REUSE, len(prompt) // 2)
    return need <= min(len(prompt) - 1, len(other), budget) and prompt[:need] == other[:need]


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit``."""
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
