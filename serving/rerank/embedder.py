"""EmbedderReranker: cosine similarity of a sentence-embedding bi-encoder as the scorer.

Not trained for continuations the way RankGen is (it rewards topical closeness to the prefix),
but it loads offline: the default all-MiniLM-L6-v2 comes inside a wheel (serving/embeddings.py).
MiniLM reads at most 256 word pieces, so the prefix is cut to its last ``prefix_words`` words:
what comes right before a continuation matters most for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from serving.rerank.reranker import PrefixCache, Ranked, rank


class TextEmbedder(Protocol):
    """What this scorer needs of an embedder (``SentenceTransformerEmbedder`` has it)."""

    @property
    def model_name(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """(N, dim) L2-normalised vectors."""
        ...


class EmbedderReranker:
    """Scores = cosine similarity of the prefix's tail and each candidate."""

    def __init__(self, embedder: TextEmbedder, *, prefix_words: int = 150, cache: int = 32):
        if prefix_words < 1:
            raise ValueError(f"prefix_words={prefix_words} must be at least 1")
        self.embedder = embedder
        self.prefix_words = prefix_words
        self.prefixes: PrefixCache[npt.NDArray[np.float32]] = PrefixCache(cache)

    @classmethod
    def load(cls, model: str = "all-MiniLM-L6-v2", device: str | None = None) -> EmbedderReranker:
        """Over a sentence-transformers model (the bundled MiniLM by default), offline."""
        from serving.embeddings import EmbedderConfig, SentenceTransformerEmbedder

        return cls(SentenceTransformerEmbedder(EmbedderConfig(model=model, device=device)))

    @property
    def name(self) -> str:
        return f"embedder:{self.embedder.model_name}"

    def _prefix(self, text: str) -> npt.NDArray[np.float32]:
        tail = " ".join(text.split()[-self.prefix_words :])
        vector: npt.NDArray[np.float32] = self.embedder.embed([tail])[0]
        return vector

    def score(self, prefix: str, candidates: Sequence[str]) -> list[float]:
        if not candidates:
            return []
        vector = self.prefixes.get(prefix, self._prefix)
        scores = self.embedder.embed(list(candidates)) @ vector  # (N,)
        return [float(s) for s in scores]

    def top(self, prefix: str, candidates: Sequence[str], k: int) -> list[Ranked]:
        return rank(candidates, self.score(prefix, candidates), k)
