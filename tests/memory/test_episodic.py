"""EpisodicMemory over real SQL (SQLite and PostgreSQL) and a real Chroma, with a fake embedder."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import pytest

from memory import InvalidRecord, MemoryStore, NotFound
from memory.episodic import EpisodicMemory, IngestProgress, SyncEpisodicMemory
from memory.errors import InvalidQuery
from memory.forgetting import ForgetPolicy
from memory.records import Episode
from memory.retrieval import Reach, neighbour_positions, neighbours
from memory.scoring import plan_windows, score_text, scored_from_pieces
from memory.segmentation import ScoredToken, SegmenterConfig, approximate_tokens
from memory.segmenters import EmbeddingSegmenter, FixedSegmenter, SurpriseSegmenter
from memory.tables import utcnow
from tests.fakes import HashEmbedder
from tests.texts import TOPICS, story

T = TypeVar("T")


def fixed_memory(store: MemoryStore, namespace: str = "ns", max_tokens: int = 40) -> EpisodicMemory:
    config = SegmenterConfig(min_tokens=4, max_tokens=max_tokens)
    return EpisodicMemory(store, namespace, FixedSegmenter(config))


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def test_ingest_covers_the_text_and_is_idempotent(store: MemoryStore) -> None:
    memory = fixed_memory(store)
    text = story()
    seen: list[IngestProgress] = []
    first = run(memory.ingest(text, name="book", source="/tmp/book.txt", on_progress=seen.append))
    assert first.created and first.document.name == "book"
    spans = [(e.start_char, e.end_char) for e in first.episodes]
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert "".join(e.text for e in first.episodes) == text
    assert first.tokens == sum(approximate_tokens(e.text) for e in first.episodes)
    assert {p.stage for p in seen} == {"segment", "embed", "store"}
    again = run(memory.ingest(text, name="copy"))
    assert not again.created and again.document.id == first.document.id
    assert [e.id for e in again.episodes] == [e.id for e in first.episodes]
    assert len(run(memory.documents())) == 1


def test_empty_text_and_empty_query_are_refused(store: MemoryStore) -> None:
    memory = fixed_memory(store)
    with pytest.raises(InvalidRecord, match="empty"):
        run(memory.ingest("  \n "))
    with pytest.raises(NotFound, match="does not exist"):
        run(memory.search("anything"))
    run(memory.ingest(story()))
    with pytest.raises(InvalidQuery, match="empty"):
        run(memory.search(" "))
    with pytest.raises(InvalidQuery, match="more than the budget"):
        run(memory.search("word " * 50, budget_tokens=10))
    with pytest.raises(InvalidQuery, match="k_similar"):
        run(memory.search("chess", k_similar=0))


def test_search_finds_the_topic_within_budget_in_document_order(store: MemoryStore) -> None:
    memory = fixed_memory(store)
    run(memory.ingest(story()))
    hits = run(memory.search("chess champion queen king", budget_tokens=120, k_similar=2))
    assert hits and sum(h.tokens for h in hits) <= 120
    assert [h.ordinal for h in hits] == sorted(h.ordinal for h in hits)
    best = max((h for h in hits if h.reason == "similarity"), key=lambda h: h.score)
    assert "chess" in best.text
    text = story()
    assert all(text[h.start : h.end] == h.text for h in hits)


def test_contiguity_buffer_brings_the_following_event(store: MemoryStore) -> None:
    """The question matches one event; the answer sits in the next one."""
    filler = " ".join(TOPICS)
    text = (
        f"{filler}\nThe vault code was chosen by the old archivist in winter.\n"
        "Forty-two seventeen nine is what she wrote on the brass plate.\n"
        f"{filler}"
    )
    store_memory = EpisodicMemory(
        store, "ns", FixedSegmenter(SegmenterConfig(min_tokens=2, max_tokens=16))
    )
    run(store_memory.ingest(text))
    without = run(store_memory.search("vault code archivist", k_similar=1, k_contiguous=0))
    assert not any("Forty-two" in h.text for h in without)
    hits = run(store_memory.search("vault code archivist", k_similar=1, k_contiguous=2))
    answer = [h for h in hits if "Forty-two" in h.text]
    assert answer and answer[0].reason == "contiguity"
    assert answer[0].score < max(h.score for h in hits if h.reason == "similarity")


def chain(sizes: list[int]) -> dict[int, Episode]:
    """Episodes at positions 0..n-1 of one document, with the given token counts."""
    now = utcnow()
    return {
        i: Episode(
            i, 1, 1, i, f"e{i}", 0, 1, size, 0.0, 0.0, 1.0, False, None, 1, now, now, now, None, {}
        )
        for i, size in enumerate(sizes)
    }


def test_neighbours_follow_a_reach_in_tokens() -> None:
    found = chain([40] * 20)

    def same(a: Episode, b: Episode) -> bool:
        return True

    near = neighbours([(found[10], 10, 0.8)], found, 20, Reach(128, 32, 0.9), same)
    # Forward: gaps 0, 40, 80, 120 (< 128); backward: gap 0 only (< 32).
    assert sorted(e.id for e, _ in near) == [9, 11, 12, 13, 14]
    worth = {e.id: w for e, w in near}
    assert worth[11] == worth[9] == pytest.approx(0.8 * 0.9)
    assert worth[11] > worth[12] > worth[13] > worth[14]
    # Small events reach further in episodes, large ones less: the same text either way.
    small = chain([10] * 40)
    assert len(neighbours([(small[20], 20, 0.8)], small, 40, Reach(128, 32), same)) == 8 + 4
    big = chain([200] * 5)
    assert [e.id for e, _ in neighbours([(big[2], 2, 0.8)], big, 9, Reach(128, 32), same)] == [
        3, 1
    ]  # fmt: skip


def test_neighbours_prefer_strong_hits_and_stop_at_rejected_ones() -> None:
    found = chain([40] * 20)
    hits = [(found[3], 3, 0.9), (found[12], 12, 0.5)]
    near = neighbours(hits, found, 3, Reach(128, 32), lambda a, b: b.id != 5)
    assert [e.id for e, _ in near] == [4, 2, 13]  # 5 is rejected, so the walk from 3 stops
    assert neighbours([], found, 3, Reach(), lambda a, b: True) == []
    assert neighbour_positions([0, 10]) == [p for p in range(0, 19) if p not in (0, 10)]


def test_namespaces_do_not_cross(store: MemoryStore) -> None:
    run(fixed_memory(store, "a").ingest(story()))
    run(fixed_memory(store, "b").ingest("Completely different words about astronomy and stars."))
    hits = run(fixed_memory(store, "b").search("chess champion queen"))
    assert all("chess" not in h.text for h in hits)


def test_edit_is_versioned_and_reembedded(store: MemoryStore) -> None:
    memory = fixed_memory(store)
    ingested = run(memory.ingest(story()))
    target = ingested.episodes[0]
    run(memory.edit(target.id, text="Astronomers mapped the nebula with a telescope.", reason="x"))
    assert run(memory.get(target.id)).version == 2
    assert run(memory.history(target.id))[0].text == target.text
    hits = run(memory.search("nebula telescope astronomers", k_similar=1, k_contiguous=0))
    assert hits[0].episode_id == target.id
    with pytest.raises(InvalidRecord, match="negative"):
        run(memory.edit(target.id, importance=-1))


def test_forgetting_explicit_ttl_policy_and_pins(store: MemoryStore) -> None:
    memory = fixed_memory(store)
    episodes = run(memory.ingest(story())).episodes
    short = run(memory.ingest("Temporary note about the parking meter.", ttl=timedelta(0)))
    pinned, explicit, faded = episodes[0], episodes[1], episodes[2]
    run(memory.pin(pinned.id))
    with pytest.raises(InvalidRecord, match="pinned"):
        run(memory.forget([pinned.id]))
    assert all("parking" not in h.text for h in run(memory.search("parking meter")))
    gone = run(memory.forget([explicit.id]))
    assert explicit.id in gone and short.episodes[0].id in gone  # expired go with any forget
    run(memory.edit(faded.id, importance=0.01))
    later = utcnow() + timedelta(days=1)
    gone = run(memory.forget(policy=ForgetPolicy(half_life=timedelta(days=30)), now=later))
    assert gone == [faded.id]
    much_later = utcnow() + timedelta(days=3650)
    gone = run(memory.forget(policy=ForgetPolicy(), now=much_later))
    assert pinned.id not in gone and run(memory.get(pinned.id)).pinned
    with pytest.raises(NotFound):
        run(memory.forget([10**9]))


def test_append_equals_one_pass_and_survives_restart(store: MemoryStore) -> None:
    text = story(3)
    pieces = re.findall(r".{1,37}", text, flags=re.S)
    config = SegmenterConfig(min_tokens=4, max_tokens=30)
    embedder = store.embedder
    whole = run(EpisodicMemory(store, "one", EmbeddingSegmenter(embedder, config)).ingest(text))
    memory = EpisodicMemory(store, "streamed", EmbeddingSegmenter(embedder, config))
    half = len(pieces) // 2
    for piece in pieces[:half]:
        run(memory.append(piece, stream="log"))
    restarted = EpisodicMemory(store, "streamed", EmbeddingSegmenter(embedder, config))
    for piece in pieces[half:]:
        run(restarted.append(piece, stream="log"))
    run(restarted.flush(stream="log"))
    streamed = run(restarted.episodes())
    assert [(e.start_char, e.end_char) for e in streamed] == [
        (e.start_char, e.end_char) for e in whole.episodes
    ]
    document = run(restarted.documents())[0]
    assert document.char_count == len(text) and document.metadata["tail"] == ""
    with pytest.raises(InvalidRecord, match="ingested whole"):
        run(EpisodicMemory(store, "one", FixedSegmenter(config)).append("x", stream="text"))


def test_sync_wrapper(store: MemoryStore) -> None:
    with SyncEpisodicMemory(fixed_memory(store)) as memory:
        memory.ingest(story())
        assert memory.search("bakers sourdough ovens")
        assert memory.documents()


# -- surprise scoring in windows -------------------------------------------------------------


class WordScorer:
    """A TokenScorer with a context limit: words are tokens; surprise is the word's length."""

    def __init__(self, context: int) -> None:
        self.context = context
        self.calls: list[str] = []

    async def score(self, text: str) -> list[ScoredToken]:
        words = list(re.finditer(r"\S+\s*", text))
        assert len(words) <= self.context, "window larger than the context"
        self.calls.append(text)
        return [
            ScoredToken(m.group(), m.start(), m.end(), None if i == 0 else float(len(m.group())))
            for i, m in enumerate(words)
        ]

    async def count_tokens(self, text: str) -> int:
        return len(text.split())


class PieceScorer:
    """A TokenScorer whose tokenizer is much finer than the configured counter's (pieces of
    three characters against words), with a context it refuses to exceed — as a served model
    with a small vocabulary refuses a prompt over its context."""

    def __init__(self, context: int) -> None:
        self.context = context
        self.calls: list[str] = []

    def pieces(self, text: str) -> list[tuple[int, int]]:
        """Each word (with its trailing space) cut into pieces of three characters."""
        return [
            (i, min(i + 3, m.end()))
            for m in re.finditer(r"\S+\s*", text)
            for i in range(m.start(), m.end(), 3)
        ]

    async def count_tokens(self, text: str) -> int:
        return len(self.pieces(text))

    async def score(self, text: str) -> list[ScoredToken]:
        pieces = self.pieces(text)
        if len(pieces) > self.context:
            raise ValueError(f"the prompt has {len(pieces)} tokens; the context is {self.context}")
        self.calls.append(text)
        return [
            ScoredToken(text[a:b], a, b, None if i == 0 else float(text[a:b].count("e")))
            for i, (a, b) in enumerate(pieces)
        ]


def test_windows_fit_the_scorer_tokenizer_not_the_configured_counter(store: MemoryStore) -> None:
    """Issue 19: surprise ingest crashed when the model's tokenizer was not MNEME_TOKENIZER."""
    text = story(6)
    scorer = PieceScorer(context=120)
    tokens = run(score_text(text, scorer, approximate_tokens, context_tokens=120))
    assert "".join(t.text for t in tokens) == text
    assert len(scorer.calls) > 3  # each call fitted (the scorer raises otherwise)
    assert sum(t.surprise is None for t in tokens) == 1
    config = SegmenterConfig(min_tokens=4, max_tokens=40)
    segmenter = SurpriseSegmenter(
        PieceScorer(context=120), config, context_tokens=120, count_tokens=approximate_tokens
    )
    ingested = run(EpisodicMemory(store, "ns", segmenter).ingest(text))
    assert "".join(e.text for e in ingested.episodes) == text


def test_a_counter_far_off_is_corrected_by_replanning() -> None:
    text = story(6)
    scorer = PieceScorer(context=100)
    # A counter that rounds down: right on the whole sample, far too low for each sentence.
    tokens = run(score_text(text, scorer, lambda t: max(1, len(t) // 40), context_tokens=100))
    assert "".join(t.text for t in tokens) == text
    with pytest.raises(InvalidRecord, match="larger context"):
        run(score_text("x" * 30, PieceScorer(context=4), len, context_tokens=4, overlap_tokens=0))


def test_windows_cover_the_text_once_with_overlap() -> None:
    text = story(6)
    windows = plan_windows(text, lambda t: len(t.split()), context_tokens=60, overlap_tokens=12)
    assert windows[0].start == 0 and windows[-1].end == len(text)
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))
    assert all(w.context < w.start for w in windows[1:])
    scorer = WordScorer(context=60)
    tokens = run(
        score_text(text, scorer, lambda t: len(t.split()), context_tokens=60, overlap_tokens=12)
    )
    assert "".join(t.text for t in tokens) == text
    assert [t.start for t in tokens] == sorted(t.start for t in tokens)
    assert len(scorer.calls) == len(windows) > 3
    assert sum(t.surprise is None for t in tokens) == 1  # only the text's first token


def test_surprise_segmenter_ingests_through_windows(store: MemoryStore) -> None:
    config = SegmenterConfig(min_tokens=4, max_tokens=40)
    segmenter = SurpriseSegmenter(
        WordScorer(context=50), config, context_tokens=50, embedder=store.embedder
    )
    memory = EpisodicMemory(store, "ns", segmenter)
    ingested = run(memory.ingest(story()))
    assert "".join(e.text for e in ingested.episodes) == story()
    assert ingested.document.metadata["segmenter"] == "surprise"
    assert all(e.surprise_max >= e.surprise_mean > 0 for e in ingested.episodes)


def test_pieces_align_with_text_even_when_they_do_not_spell_it() -> None:
    text = "Café au lait, s'il vous plaît."
    pieces = ["Caf", "\ufffd", " au", " lait", ",", " s", "'il", " vous", " pla\ufffd", "t."]
    tokens = scored_from_pieces(text, pieces, [None, *[1.0] * (len(pieces) - 1)])
    starts = [t.start for t in tokens]
    assert starts == sorted(starts) and all(0 <= t.start <= t.end <= len(text) for t in tokens)
    assert tokens[2].start == text.index(" au")
    assert tokens[-1].end == len(text)


def test_fake_embedder_vectors_are_what_is_indexed(store: MemoryStore) -> None:
    """The episodes' stored embeddings are the embedder's vectors of their texts."""
    memory = fixed_memory(store)
    ingested = run(memory.ingest(story()))
    space = store.namespaces.get("ns")
    _ids, vectors = store.episodes.embeddings(space.id, [e.id for e in ingested.episodes])
    expected = HashEmbedder().embed([e.text for e in sorted(ingested.episodes, key=lambda e: e.id)])
    assert np.allclose(vectors, expected)


def test_small_budget_clips_the_best_hit_to_fit(store: MemoryStore) -> None:
    memory = fixed_memory(store, max_tokens=200)
    run(memory.ingest(story(6)))
    hits = run(memory.search("chess champion queen", budget_tokens=40, k_contiguous=0))
    assert len(hits) == 1 and "chess" in hits[0].text
    assert hits[0].tokens <= 40 and story(6)[hits[0].start : hits[0].end] == hits[0].text
    assert run(memory.search("chess champion queen", budget_tokens=20)) == []


class FailingScorer(WordScorer):
    """Scores two windows, then the endpoint 'goes down'."""

    async def score(self, text: str) -> list[ScoredToken]:
        if len(self.calls) >= 2:
            raise ConnectionError("endpoint went away")
        return await super().score(text)


def test_failure_mid_ingest_stores_nothing_and_a_retry_succeeds(store: MemoryStore) -> None:
    config = SegmenterConfig(min_tokens=4, max_tokens=40)
    failing = SurpriseSegmenter(FailingScorer(context=50), config, context_tokens=50,
                                concurrency=1)  # fmt: skip
    with pytest.raises(ConnectionError):
        run(EpisodicMemory(store, "ns", failing).ingest(story(), name="book"))
    assert run(EpisodicMemory(store, "ns", failing).documents()) == []
    assert store.episodes.count("ns") == 0
    working = SurpriseSegmenter(WordScorer(context=50), config, context_tokens=50)
    done = run(EpisodicMemory(store, "ns", working).ingest(story(), name="book"))
    assert done.created and store.episodes.count("ns") == len(done.episodes)


def test_search_within_one_document(store: MemoryStore) -> None:
    memory = fixed_memory(store)
    first = run(memory.ingest(story(), name="one"))
    second = run(memory.ingest(story(3), name="two"))
    hits = run(memory.search("chess champion", document_id=second.document.id))
    assert hits and {h.document_id for h in hits} == {second.document.id}
    assert first.document.id != second.document.id


def test_search_within_a_timeline_follows_its_order(store: MemoryStore) -> None:
    """A branch sees only its own episodes, and contiguity follows the branch's order."""
    memory = fixed_memory(store, max_tokens=20)
    trunk = run(memory.append("The vault code was chosen by the old archivist. ", stream="s"))
    trunk += run(memory.flush(stream="s"))
    sibling = run(memory.append("Lost branch: the code was never written down. ", stream="s"))
    sibling += run(memory.flush(stream="s"))
    branch = run(memory.append("Forty-two seventeen nine is on the brass plate. ", stream="s"))
    branch += run(memory.flush(stream="s"))
    timeline = [e.id for e in trunk + branch]
    hits = run(memory.search("vault code archivist", k_similar=1, k_contiguous=1,
                             within=timeline))  # fmt: skip
    texts = " ".join(h.text for h in hits)
    assert "Forty-two" in texts and "Lost branch" not in texts
    assert [h.reason for h in hits] == ["similarity", "contiguity"]


def test_concurrent_ingests_into_one_namespace_take_turns(store: MemoryStore) -> None:
    """Writers to one namespace never collide on episode ordinals (PostgreSQL included)."""
    memory = fixed_memory(store)
    texts = [f"Document {i}. " + " ".join(TOPICS[i % len(TOPICS)]) * 3 for i in range(6)]

    async def all_at_once() -> list[Any]:
        return list(
            await asyncio.gather(*(memory.ingest(t, name=f"d{i}") for i, t in enumerate(texts)))
        )

    done = run(all_at_once())
    ordinals = [e.ordinal for d in done for e in d.episodes]
    assert len(ordinals) == len(set(ordinals)) and len(done) == 6
    assert [e.ordinal for e in run(memory.episodes())] == sorted(ordinals)
