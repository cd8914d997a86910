"""The three segmenters behind one async Protocol, as :class:`EpisodicMemory` uses them.

CPU work (planning, embedding sentences) runs in a worker thread so the event loop keeps serving
other requests while a book is segmented.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal, Protocol

from memory.embedder import Embedder
from memory.scoring import Progress, score_text
from memory.segmentation import (
    Event,
    SegmenterConfig,
    StreamingSegmenter,
    TokenScorer,
    approximate_tokens,
    segment_by_embedding,
    segment_by_surprise,
    segment_fixed,
)

SegmenterKind = Literal["surprise", "embedding", "fixed"]


class Segmenter(Protocol):
    """Cuts a text into events (spans covering it, in order)."""

    @property
    def kind(self) -> SegmenterKind: ...

    async def segment(self, text: str, on_progress: Progress | None = None) -> list[Event]:
        """Events of ``text``; ``on_progress(done, total)`` as work proceeds."""
        ...

    def streaming(self) -> StreamingSegmenter:
        """A segmenter for text that arrives in pieces (see :class:`StreamingSegmenter`)."""
        ...


class SurpriseSegmenter:
    """EM-LLM surprise: token logprobs from ``scorer``, windows of ``context_tokens``."""

    kind: SegmenterKind = "surprise"

    def __init__(
        self,
        scorer: TokenScorer,
        config: SegmenterConfig,
        *,
        context_tokens: int,
        embedder: Embedder | None = None,
        count_tokens: Callable[[str], int] = approximate_tokens,
        overlap_tokens: int = 64,
        concurrency: int = 4,
    ) -> None:
        self.scorer = scorer
        self.config = config
        self.context_tokens = context_tokens
        self.embedder = embedder
        self.count_tokens = count_tokens
        self.overlap_tokens = min(overlap_tokens, context_tokens // 4)
        self.concurrency = concurrency

    async def segment(self, text: str, on_progress: Progress | None = None) -> list[Event]:
        tokens = await score_text(
            text,
            self.scorer,
            self.count_tokens,
            context_tokens=self.context_tokens,
            overlap_tokens=self.overlap_tokens,
            concurrency=self.concurrency,
            on_progress=on_progress,
        )
        return await asyncio.to_thread(
            segment_by_surprise, text, tokens, self.config, self.embedder
        )

    def streaming(self) -> StreamingSegmenter:
        # Re-scoring a growing tail is not one-pass-equal; streams use embedding novelty
        # (or fixed windows without an embedder), which is exact (see StreamingSegmenter).
        return StreamingSegmenter(self.config, self.embedder, self.count_tokens)


class EmbeddingSegmenter:
    """Sentence novelty from ``embedder``: for endpoints that give no logprobs."""

    kind: SegmenterKind = "embedding"

    def __init__(
        self,
        embedder: Embedder,
        config: SegmenterConfig,
        count_tokens: Callable[[str], int] = approximate_tokens,
    ) -> None:
        self.embedder = embedder
        self.config = config
        self.count_tokens = count_tokens

    async def segment(self, text: str, on_progress: Progress | None = None) -> list[Event]:
        events = await asyncio.to_thread(
            segment_by_embedding, text, self.embedder, self.config, self.count_tokens
        )
        if on_progress is not None:
            on_progress(1, 1)
        return events

    def streaming(self) -> StreamingSegmenter:
        return StreamingSegmenter(self.config, self.embedder, self.count_tokens)


class FixedSegmenter:
    """Windows of ``max_tokens`` at sentence ends: the baseline."""

    kind: SegmenterKind = "fixed"

    def __init__(
        self, config: SegmenterConfig, count_tokens: Callable[[str], int] = approximate_tokens
    ) -> None:
        self.config = config
        self.count_tokens = count_tokens

    async def segment(self, text: str, on_progress: Progress | None = None) -> list[Event]:
        events = await asyncio.to_thread(segment_fixed, text, self.config, self.count_tokens)
        if on_progress is not None:
            on_progress(1, 1)
        return events

    def streaming(self) -> StreamingSegmenter:
        return StreamingSegmenter(self.config, None, self.count_tokens)
