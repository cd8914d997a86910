"""The scorer boundary: a :class:`Reranker` scores continuations against their prefix.

Implementations: :class:`~serving.rerank.rankgen.RankGenReranker` (a T5 encoder + projection,
the paper's model) and :class:`~serving.rerank.embedder.EmbedderReranker` (a sentence-transformers
bi-encoder). Both encode a prefix once and keep it in a small :class:`PrefixCache`, so the many
scoring calls of one request (every beam-search step) reuse it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

Vector = TypeVar("Vector")


@dataclass(frozen=True, slots=True)
class Ranked:
    """One scored candidate: its position in the list scored, its text, its score."""

    index: int
    text: str
    score: float


class Reranker(Protocol):
    """Scores continuations of a prefix; higher = a better continuation. Thread-safe."""

    @property
    def name(self) -> str:
        """The scorer's name (checkpoint or model) as reported to clients."""
        ...

    def score(self, prefix: str, candidates: Sequence[str]) -> list[float]:
        """One score per candidate, in order. The prefix is encoded once and cached."""
        ...

    def top(self, prefix: str, candidates: Sequence[str], k: int) -> list[Ranked]:
        """The ``k`` best candidates (fewer if there are fewer), best first."""
        ...


def rank(candidates: Sequence[str], scores: Sequence[float], k: int) -> list[Ranked]:
    """The ``k`` best of already computed ``scores``, best first; ties keep the earlier one."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: max(k, 0)]
    return [Ranked(i, candidates[i], float(scores[i])) for i in order]


class PrefixCache(Generic[Vector]):
    """The last ``size`` encoded prefixes, keyed by text (least recently used goes first).

    ``hits`` and ``misses`` count lookups, so callers and tests can see the cache at work.
    """

    def __init__(self, size: int = 32) -> None:
        if size < 1:
            raise ValueError(f"prefix cache size={size} must be at least 1")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, Vector] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, prefix: str, encode: Callable[[str], Vector]) -> Vector:
        """The cached encoding of ``prefix``, computing it with ``encode`` on a miss."""
        with self._lock:
            if prefix in self._entries:
                self.hits += 1
                self._entries.move_to_end(prefix)
                return self._entries[prefix]
            self.misses += 1
        vector = encode(prefix)
        with self._lock:
            self._entries[prefix] = vector
            self._entries.move_to_end(prefix)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return vector

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
