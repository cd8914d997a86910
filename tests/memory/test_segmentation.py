"""Event segmentation: coverage, sentence ends, planted shifts, bounds, refinement, streaming."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace

import numpy as np
import pytest

from memory.segmentation import (
    Event,
    ScoredToken,
    SegmenterConfig,
    StreamingSegmenter,
    approximate_tokens,
    segment_by_embedding,
    segment_by_surprise,
    segment_fixed,
    sentence_spans,
    surprise_boundaries,
)
from tests.fakes import HashEmbedder

SAILING = ["sailor", "boat", "sail", "mast", "wind", "harbour", "keel", "rudder", "deck", "anchor"]
BAKING = ["baker", "oven", "flour", "dough", "yeast", "bread", "butter", "sugar", "crust", "loaf"]


def topic(words: list[str], count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=6)).capitalize() + "." for _ in range(count)]


def join(sentences: list[str]) -> str:
    return " ".join(sentences)


def scripted(text: str, spikes: set[int]) -> list[ScoredToken]:
    """Scored tokens: whitespace words are tokens; surprise 10 at chosen tokens, else 1."""
    words = list(re.finditer(r"\S+\s*", text))
    return [
        ScoredToken(
            text=m.group(),
            start=m.start(),
            end=m.end(),
            surprise=None if i == 0 else (10.0 if i in spikes else 1.0),
        )
        for i, m in enumerate(words)
    ]


def assert_covers(events: list[Event], text: str) -> None:
    assert events[0].start == 0
    assert events[-1].end == len(text)
    for before, after in itertools.pairwise(events):
        assert before.end == after.start
        assert before.start < before.end


def sentence_ends(text: str) -> set[int]:
    return {end for _, end in sentence_spans(text)}


def test_sentence_spans_cover_text_without_gaps() -> None:
    text = 'One. Two!  Three?\n\nFour… "Five." six\nseven\nEight and\nnine\n\nten\n2024 log'
    spans = sentence_spans(text)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert [text[a:b].strip() for a, b in spans] == [
        "One.", "Two!", "Three?", "Four…", '"Five."', "six\nseven", "Eight and\nnine", "ten",
        "2024 log",
    ]  # fmt: skip


def test_empty_text_gives_no_events() -> None:
    config = SegmenterConfig()
    assert segment_by_embedding("", HashEmbedder(), config) == []
    assert segment_fixed("", config) == []
    assert segment_by_surprise("", [], config) == []
    stream = StreamingSegmenter(config, HashEmbedder())
    assert stream.feed("") == [] and stream.finish() == []


@pytest.mark.parametrize("seed", range(5))
def test_threshold_rule_matches_direct_computation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    surprise = rng.gamma(2.0, size=300)
    gamma, window = 1.0 + seed * 0.3, 7 + seed * 11
    expected = np.zeros(surprise.size, dtype=bool)
    for t in range(2, surprise.size):
        past = surprise[max(0, t - window) : t]
        expected[t] = surprise[t] > past.mean() + gamma * past.std()
    np.testing.assert_array_equal(surprise_boundaries(surprise, gamma, window), expected)


def test_embedding_segmenter_finds_planted_topic_shift() -> None:
    sailing, baking = topic(SAILING, 10, 1), topic(BAKING, 10, 2)
    text = join(sailing + baking)
    shift = len(join(sailing)) + 1
    config = SegmenterConfig(min_tokens=8, max_tokens=400, refine=False)
    events = segment_by_embedding(text, HashEmbedder(), config)
    assert_covers(events, text)
    assert shift in {e.start for e in events}
    assert {e.end for e in events} <= sentence_ends(text)


def test_scorer_spikes_become_boundaries_at_sentence_ends() -> None:
    sentences = topic(SAILING, 12, 3)
    text = join(sentences)
    # Sentences have 6 words: a spike on word 12 starts sentence 2; one on word 39 (mid
    # sentence 6) snaps forward to the end of sentence 6.
    events = segment_by_surprise(text, scripted(text, {12, 39}), SegmenterConfig(refine=False))
    assert_covers(events, text)
    assert [e.start for e in events] == [
        0,
        len(join(sentences[:2])) + 1,
        len(join(sentences[:7])) + 1,
    ]
    assert events[1].surprise_max == 10.0 and events[0].surprise_max < 2.0  # None -> mean
    assert sum(e.token_count for e in events) == 72


def test_size_bounds_hold() -> None:
    rng = np.random.default_rng(4)
    sentences = [
        f"{' '.join(rng.choice(SAILING + BAKING, size=rng.integers(3, 9)))}." for _ in range(80)
    ]
    sentences.insert(40, " ".join(["wind"] * 200))  # one sentence longer than max_tokens
    text = join(sentences)
    config = SegmenterConfig(min_tokens=10, max_tokens=40, gamma=0.5)
    spikes = set(rng.choice(600, size=60).tolist())
    for events in (
        segment_by_embedding(text, HashEmbedder(), config),
        segment_fixed(text, config),
        segment_by_surprise(text, scripted(text, spikes), config, HashEmbedder()),
    ):
        assert_covers(events, text)
        assert all(config.min_tokens <= e.token_count <= config.max_tokens for e in events)
    fixed = segment_fixed(text, config)
    assert len(fixed) >= sum(approximate_tokens(s) for s in sentences) // config.max_tokens


@pytest.mark.parametrize("metric", ["modularity", "conductance"])
def test_refinement_moves_misplaced_boundary_to_topic_shift(metric: str) -> None:
    sailing, baking = topic(SAILING, 10, 5), topic(BAKING, 10, 6)
    text = join(sailing + baking)
    shift = len(join(sailing)) + 1
    spike = 6 * 13 + 2  # inside the fourth baking sentence: the cut snaps after it
    base = SegmenterConfig(min_tokens=8, max_tokens=400, refine_metric=metric)  # type: ignore[arg-type]
    unrefined = segment_by_surprise(
        text, scripted(text, {spike}), SegmenterConfig(min_tokens=8, max_tokens=400, refine=False)
    )
    assert [e.start for e in unrefined] == [0, len(join(sailing + baking[:4])) + 1]
    refined = segment_by_surprise(text, scripted(text, {spike}), base, HashEmbedder())
    assert [e.start for e in refined] == [0, shift]
    assert_covers(refined, text)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["embedding", "embedding-refined", "fixed"])
def test_streaming_equals_one_pass(seed: int, mode: str) -> None:
    rng = np.random.default_rng(seed)
    sentences: list[str] = []
    for block in range(6):
        sentences += topic(SAILING if block % 2 else BAKING, int(rng.integers(2, 8)), seed + block)
    sentences[5] += "\n\n"
    text = join(sentences)
    config = SegmenterConfig(min_tokens=8, max_tokens=30, refine=mode == "embedding-refined")
    embedder = None if mode == "fixed" else HashEmbedder()
    one_pass = (
        segment_fixed(text, config)
        if embedder is None
        else segment_by_embedding(text, HashEmbedder(), config)
    )
    cuts = sorted(rng.choice(np.arange(1, len(text)), size=25, replace=False).tolist())
    stream = StreamingSegmenter(config, embedder)
    streamed: list[Event] = []
    for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True):
        streamed += stream.feed(text[a:b])
    early = len(streamed)
    streamed += stream.finish()
    assert streamed == one_pass
    assert early > 0  # events were released before the end, not all held back


def transcript(turns: int, seed: int) -> str:
    """A conversation: one line per turn, each of one to four sentences on either topic."""
    rng = np.random.default_rng(seed)
    lines = []
    for turn in range(turns):
        words = SAILING if rng.random() < 0.5 else BAKING
        said = join(topic(words, int(rng.integers(1, 5)), seed * 1000 + turn))
        lines.append(f"{'Ann' if turn % 2 else 'Bob'}: {said}")
    return "\n".join(lines) + "\n"


def line_starts(text: str) -> set[int]:
    return {0} | {m.end() for m in re.finditer("\n", text)}


@pytest.mark.parametrize("seed", range(4))
def test_boundaries_snap_to_paragraph_starts(seed: int) -> None:
    """Issue 19: events of a transcript hold whole turns (turns here are 6-30 words)."""
    text = transcript(60, seed)
    config = SegmenterConfig(min_tokens=8, max_tokens=96, gamma=0.3)
    for events in (
        segment_by_embedding(text, HashEmbedder(), config),
        segment_fixed(text, config),
        segment_by_embedding(text, HashEmbedder(), replace(config, refine=False)),
    ):
        assert_covers(events, text)
        assert {e.start for e in events} <= line_starts(text)
        assert len(events) > 5
        assert all(e.token_count <= config.max_tokens for e in events)
    # Without waiting for the turn to end, novelty cuts turns in two: the test can fail.
    eager = segment_by_embedding(text, HashEmbedder(), replace(config, paragraph_wait=0))
    assert not {e.start for e in eager} <= line_starts(text)


@pytest.mark.parametrize("seed", range(3))
def test_streaming_a_transcript_equals_one_pass(seed: int) -> None:
    text = transcript(40, seed)
    config = SegmenterConfig(min_tokens=8, max_tokens=64, gamma=0.3)
    one_pass = segment_by_embedding(text, HashEmbedder(), config)
    rng = np.random.default_rng(seed)
    cuts = sorted(rng.choice(np.arange(1, len(text)), size=30, replace=False).tolist())
    stream = StreamingSegmenter(config, HashEmbedder())
    streamed: list[Event] = []
    for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True):
        streamed += stream.feed(text[a:b])
    streamed += stream.finish()
    assert streamed == one_pass
