"""Recall as issue 19 built it: a hybrid first stage and a budget-aware second stage."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from memory import ChromaVectorIndex, Database, MemoryStore
from memory.episodic import EpisodicMemory, RecallDefaults
from memory.fusion import FusionConfig
from memory.records import Episode
from memory.retrieval import Reach, pack_budget
from memory.segmentation import SegmenterConfig, approximate_tokens
from memory.segmenters import FixedSegmenter
from memory.tables import utcnow
from tests.texts import TOPICS

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class BlindEmbedder:
    """An Embedder whose vectors say nothing: every text gets the same one."""

    model_name = "test/blind"
    dimension = 8

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.full((len(texts), self.dimension), 8**-0.5, dtype=np.float32)


def small_events(store: MemoryStore, defaults: RecallDefaults | None = None) -> EpisodicMemory:
    segmenter = FixedSegmenter(SegmenterConfig(min_tokens=2, max_tokens=24))
    return EpisodicMemory(store, "ns", segmenter, defaults=defaults or RecallDefaults())


def chain(sizes: list[int]) -> dict[int, Episode]:
    now = utcnow()
    return {
        i: Episode(
            i, 1, 1, i, f"event {i} " * (size // 2), 0, 1, size, 0.0, 0.0, 1.0, False, None, 1,
            now, now, now, None, {},
        )
        for i, size in enumerate(sizes)
    }  # fmt: skip


def test_the_budget_decides_how_much_comes_back(store: MemoryStore) -> None:
    memory = small_events(store)
    run(memory.ingest(" ".join(t for t in TOPICS for _ in range(6))))
    for budget in (64, 200, 400):
        hits = run(memory.search("chess queen king", budget_tokens=budget))
        used = sum(h.tokens for h in hits)
        assert 0.9 * budget <= used <= budget, (budget, used)
        assert [h.ordinal for h in hits] == sorted(h.ordinal for h in hits)
        assert "chess" in max(hits, key=lambda h: h.score).text
    # A caller's explicit k still holds: one hit, no neighbours.
    [one] = run(memory.search("chess queen king", budget_tokens=400, k_similar=1, k_contiguous=0))
    assert "chess" in one.text and one.reason == "similarity"


def test_a_neighbour_goes_in_only_when_it_earns_its_tokens() -> None:
    found = chain([20] * 30)
    hits = [(found[p], p, score) for p, score in ((5, 1.0), (15, 0.95), (25, 0.9))]

    def packed(decay: float, budget: int) -> list[int]:
        reach = Reach(after_tokens=20, before_tokens=0, decay=decay)  # the next event only
        chosen = pack_budget(hits, found, budget, approximate_tokens, reach, lambda a, b: True)
        return [r.ordinal for r in chosen]

    tokens = approximate_tokens(found[0].text)
    # Neighbours worth less than every hit (decay 0.5): the hits fill the budget first.
    assert packed(0.5, 3 * tokens) == [5, 15, 25]
    # The best hit's next event is worth 0.99 > 0.95: it displaces the weakest hit.
    assert packed(0.99, 3 * tokens) == [5, 6, 15]
    # Room for more: neighbours follow once every hit is in.
    assert packed(0.5, 4 * tokens) == [5, 6, 15, 25]


def test_words_find_what_meaning_misses(database: Database, chroma: ChromaVectorIndex) -> None:
    store = MemoryStore(database, chroma, BlindEmbedder())
    memory = small_events(store)
    text = " ".join(t for t in TOPICS for _ in range(3))
    text += " The zeppelin Hindenburg drifted over the orchard."
    run(memory.ingest(text))
    [best] = run(memory.search("zeppelin Hindenburg", budget_tokens=40, k_similar=1,
                               k_contiguous=0))  # fmt: skip
    assert "zeppelin" in best.text and best.score > 0.5
    dense = small_events(store, RecallDefaults(fusion=FusionConfig(lexical_weight=0.0)))
    blind = run(dense.search("zeppelin Hindenburg", budget_tokens=40, k_similar=1, k_contiguous=0))
    assert "zeppelin" not in " ".join(h.text for h in blind)  # meaning alone cannot tell


def test_a_question_of_stop_words_still_recalls_by_meaning(store: MemoryStore) -> None:
    memory = small_events(store)
    run(memory.ingest(" ".join(TOPICS)))
    hits = run(memory.search("what is it?", budget_tokens=60))
    assert hits and sum(h.tokens for h in hits) <= 60


class KeywordScorer:
    """A PassageScorer that likes one word (a stand-in for a cross-encoder's judgement)."""

    name = "test/keyword"

    def __init__(self, word: str) -> None:
        self.word = word
        self.seen: list[int] = []

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        self.seen.append(len(passages))
        return [float(self.word in p) for p in passages]


def test_a_cross_encoder_reorders_the_first_stage(store: MemoryStore) -> None:
    text = " ".join(t for t in TOPICS for _ in range(2))
    text += " The lantern maker sold a kite to the zeppelin pilot."
    memory = small_events(store, RecallDefaults(rerank_depth=8))
    run(memory.ingest(text))
    query = f"{TOPICS[0]} kite"  # the first stage's best is the lighthouse, the kite lower
    [plain] = run(memory.search(query, budget_tokens=40, k_similar=1, k_contiguous=0))
    assert "zeppelin" not in plain.text
    scorer = KeywordScorer("zeppelin")
    reranked = EpisodicMemory(store, "ns", memory.segmenter, defaults=memory.defaults,
                              scorer=scorer)  # fmt: skip
    [best] = run(reranked.search(query, budget_tokens=40, k_similar=1, k_contiguous=0))
    assert "zeppelin" in best.text
    assert best.score == plain.score  # the best place keeps the best fused score
    assert scorer.seen and max(scorer.seen) <= 8  # only the first stage's best are read
