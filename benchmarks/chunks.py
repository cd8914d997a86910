"""The chunked-RAG baselines of ``benchmarks.retrieval``: one set of chunks, three rankings.

Each document is cut by LangChain's ``RecursiveCharacterTextSplitter`` (512 characters, 50 of
overlap) and stored as episodes of a namespace of its own (embedded with the same model as every
system). The chunks are ranked for a query

- ``dense``: by cosine similarity (Chroma, through ``MemoryStore.search``);
- ``bm25``: by Okapi BM25 (k1 1.5, b 0.75) over the document's chunks, in Python — independent
  of Mneme's lexical index; words lower-cased, stop words dropped, no stemming;
- ``hybrid``: reciprocal-rank fusion (k = 60, equal weights) of the two;

and the top ones are packed greedily, best first, into the budget (a chunk that does not fit is
cut to what is left, as Mneme cuts its best hit), then returned in document order.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from langchain_text_splitters import RecursiveCharacterTextSplitter

from memory import Episode, MemoryStore, NewEpisode
from memory.fusion import fuse
from memory.lexical import STOPWORDS, WORD
from memory.retrieval import Reason, pack

CHUNK_SIZE = 512  # characters per chunk
CHUNK_OVERLAP = 50  # characters shared by neighbouring chunks
Ranking = Literal["dense", "bm25", "hybrid"]


def words(text: str) -> list[str]:
    """Lower-cased words without stop words: what BM25 counts."""
    return [w for w in WORD.findall(text.lower()) if w not in STOPWORDS]


class Bm25:
    """Okapi BM25 over a fixed list of texts (Robertson and Zaragoza's formulation)."""

    def __init__(self, texts: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.counts = [Counter(words(t)) for t in texts]
        self.lengths = [sum(c.values()) for c in self.counts]
        self.mean_length = sum(self.lengths) / len(self.lengths) if self.lengths else 0.0
        frequency: Counter[str] = Counter()
        for counts in self.counts:
            frequency.update(counts.keys())
        n = len(self.counts)
        self.idf = {w: math.log(1 + (n - df + 0.5) / (df + 0.5)) for w, df in frequency.items()}

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        """(index, score) of the ``k`` best texts with a score above 0, best first."""
        terms = [w for w in dict.fromkeys(words(query)) if w in self.idf]
        scores = []
        for index, (counts, length) in enumerate(zip(self.counts, self.lengths, strict=True)):
            norm = self.k1 * (1 - self.b + self.b * length / (self.mean_length or 1.0))
            score = sum(
                self.idf[t] * counts[t] * (self.k1 + 1) / (counts[t] + norm)
                for t in terms
                if counts[t]
            )
            if score > 0:
                scores.append((index, score))
        return sorted(scores, key=lambda pair: -pair[1])[:k]


def chunk_candidates(budget: int) -> int:
    """Chunks each ranking keeps at ``budget`` tokens (512-character chunks are ~115): more
    than fit, so every ranking can fill the budget."""
    return max(4, budget // 32)


@dataclass(slots=True)
class ChunkStore:
    """Chunks of each namespace: as episodes in the store, and as a BM25 index in memory."""

    store: MemoryStore
    count_tokens: Callable[[str], int]
    splitter: RecursiveCharacterTextSplitter = field(
        default_factory=lambda: RecursiveCharacterTextSplitter(
            chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP, add_start_index=True
        )
    )
    chunks: dict[str, list[Episode]] = field(default_factory=dict)
    bm25: dict[str, Bm25] = field(default_factory=dict)

    async def ingest(self, namespace: str, text: str, name: str) -> list[int]:
        """Store ``text``'s chunks in ``namespace``; their token counts."""
        new = [
            NewEpisode(
                text=chunk.page_content,
                start_char=chunk.metadata["start_index"],
                end_char=chunk.metadata["start_index"] + len(chunk.page_content),
                token_count=self.count_tokens(chunk.page_content),
            )
            for chunk in self.splitter.create_documents([text])
        ]
        vectors = await asyncio.to_thread(self.store.embedder.embed, [e.text for e in new])
        _, stored = await asyncio.to_thread(
            self.store.add_document, namespace, name, text, new, vectors
        )
        held = self.chunks.setdefault(namespace, [])
        held += stored
        self.bm25[namespace] = Bm25([e.text for e in held])
        return [e.token_count for e in stored]

    def dense(self, namespace: str, query: str, k: int) -> list[Episode]:
        return [h.episode for h in self.store.search(namespace, query, k)]

    def lexical(self, namespace: str, query: str, k: int) -> list[Episode]:
        held = self.chunks[namespace]
        return [held[i] for i, _ in self.bm25[namespace].top(query, k)]

    def ranked(self, ranking: Ranking, namespace: str, query: str, k: int) -> list[Episode]:
        """The ``k`` best chunks by ``ranking``, best first."""
        if ranking == "dense":
            return self.dense(namespace, query, k)
        if ranking == "bm25":
            return self.lexical(namespace, query, k)
        depth = max(2 * k, 20)
        dense, lexical = self.dense(namespace, query, depth), self.lexical(namespace, query, depth)
        chunks = {e.id: e for e in [*dense, *lexical]}
        fused = fuse([[e.id for e in dense], [e.id for e in lexical]], [1.0, 1.0], 60)
        return [chunks[i] for i, _ in fused[:k]]


@dataclass(frozen=True, slots=True)
class ChunkRetriever:
    """One ranking over a :class:`ChunkStore`, packed into the budget."""

    name: str
    chunks: ChunkStore
    ranking: Ranking
    key: str = "chunks"  # every ranking searches the same chunks

    async def ingest(self, namespace: str, text: str, name: str) -> list[int]:
        return await self.chunks.ingest(namespace, text, name)

    async def recall(self, namespace: str, query: str, budget: int) -> list[str]:
        found = await asyncio.to_thread(
            self.chunks.ranked, self.ranking, namespace, query, chunk_candidates(budget)
        )
        # Scores that keep the ranking's order (pack sorts by score, best first).
        ranked: list[tuple[Episode, float, Reason]] = [
            (e, float(len(found) - i), "similarity") for i, e in enumerate(found)
        ]
        return [r.text for r in pack(ranked, budget, self.chunks.count_tokens)]
