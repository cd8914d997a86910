"""Search latency of ``benchmarks.retrieval``'s systems over a large corpus (``--latency``).

The corpus namespaces hold documents already ingested by the recall run, copied with their
vectors (``copy_document``): embedding 1M tokens takes longer on two cores than a run may.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from memory import MemoryStore, NewEpisode

WARMUP = 5  # searches run before latency timing starts
BUDGET = 512  # tokens per timed search


class Searcher(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def key(self) -> str: ...

    async def recall(self, namespace: str, query: str, budget: int) -> list[str]: ...


def log(message: str, began: float = time.perf_counter()) -> None:
    print(f"[{time.perf_counter() - began:7.1f} s] {message}", file=sys.stderr, flush=True)


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    p50, p99 = np.percentile(np.array(seconds) * 1000.0, [50, 99])
    return float(p50), float(p99)


def copy_document(store: MemoryStore, source: str, name: str, target: str) -> None:
    """Store document ``name`` of namespace ``source`` again in ``target``, vectors and all.

    Nothing is re-embedded: this is how the latency corpus reaches ~1M tokens on two cores.
    """
    document = store.documents.find(source, name=name)[0]
    episodes = store.episodes.page(source, document_id=document.id, limit=10**9)
    space = store.namespaces.get(source)
    ids, vectors = store.episodes.embeddings(space.id, [e.id for e in episodes])
    row = {episode_id: i for i, episode_id in enumerate(ids)}
    new = [
        NewEpisode(
            text=e.text,
            start_char=e.start_char,
            end_char=e.end_char,
            token_count=e.token_count,
            surprise_mean=e.surprise_mean,
            surprise_max=e.surprise_max,
        )
        for e in episodes
    ]
    text = "".join(e.text for e in episodes)
    store.add_document(
        target, f"{source}/{name}", text, new, vectors[[row[e.id] for e in episodes]]
    )


async def latency(
    retrievers: Sequence[Searcher],
    store: MemoryStore,
    copies: Sequence[tuple[str, str]],
    tokens: int,
    queries: Sequence[str],
) -> list[list[str]]:
    """Search latency at :data:`BUDGET` in each system's ``corpus`` namespace.

    The namespace (``KEY:corpus``, per ingestion key) holds the book; first each (namespace
    suffix, document name) in ``copies`` is copied into it; ``tokens`` is then the corpus size.
    Each search includes embedding the query; systems run in turn.
    """
    rows = []
    filled: set[str] = set()
    for retriever in retrievers:
        namespace = f"{retriever.key}:corpus"
        for suffix, name in copies if retriever.key not in filled else ():
            await asyncio.to_thread(
                copy_document, store, f"{retriever.key}:{suffix}", name, namespace
            )
        filled.add(retriever.key)
        units = store.episodes.count(namespace)
        log(f"{retriever.name}: corpus of {tokens:,} tokens, {units:,} units; timing searches")
        for query in queries[:WARMUP]:
            await retriever.recall(namespace, query, BUDGET)
        seconds = []
        for query in queries:
            began = time.perf_counter()
            await retriever.recall(namespace, query, BUDGET)
            seconds.append(time.perf_counter() - began)
        p50, p99 = percentiles(seconds)
        rows.append([retriever.name, f"{tokens:,}", f"{units:,}", f"{p50:.1f}", f"{p99:.1f}"])
    return rows
