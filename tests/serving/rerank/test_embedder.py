"""The bi-encoder scorer over a deterministic embedder (and the bundled MiniLM, slow tier)."""

from __future__ import annotations

import numpy as np
import pytest

from serving.rerank import EmbedderReranker
from tests.fakes import HashEmbedder


def test_scores_are_cosines_with_the_prefix_tail() -> None:
    embedder = HashEmbedder()
    scorer = EmbedderReranker(embedder, prefix_words=3)
    prefix = "ignored words here then the red fox"
    candidates = ["the red fox ran", "a blue whale", "ignored words"]
    scores = scorer.score(prefix, candidates)
    tail = embedder.embed(["then the red fox"[5:]])[0]  # the last three words
    expected = embedder.embed(candidates) @ tail
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert scores[2] == pytest.approx(0.0)  # only the dropped words overlap
    assert [r.text for r in scorer.top(prefix, candidates, 2)] == candidates[:2]


def test_the_prefix_is_embedded_once() -> None:
    embedder = HashEmbedder()
    scorer = EmbedderReranker(embedder)
    scorer.score("a prefix", ["one", "two"])
    scorer.score("a prefix", ["three"])
    assert embedder.calls == 1 + 2 + 1 and scorer.prefixes.hits == 1
    assert scorer.name == "embedder:test/hash-embedder"


@pytest.mark.slow
def test_bundled_minilm_prefers_the_on_topic_continuation() -> None:
    scorer = EmbedderReranker.load()
    prefix = "The ship's captain studied the storm clouds gathering over the grey sea."
    good = "Waves crashed against the hull as the sailors lowered the sails."
    bad = "The recipe calls for two cups of flour and a pinch of salt."
    assert scorer.top(prefix, [bad, good], 1)[0].text == good
