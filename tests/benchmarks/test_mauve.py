"""The MAUVE benchmark's parts: passage choice and splitting, repetition, MAUVE itself, and (with
the tiny model) one small end-to-end run."""

from __future__ import annotations

import itertools
import os
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from benchmarks.mauve import (
    DATA,
    MAX_TOKENS,
    SKIP_SHARE,
    SLOT_WORDS,
    Passage,
    feature_texts,
    filtered_stderr,
    load_books,
    main,
    mauve_scores,
    passages,
    prose,
    repeated_ngrams,
    split,
    spread,
)


def count_words(text: str) -> int:
    """A stand-in tokenizer: one token per word."""
    return len(text.split())


def book(tag: str, paragraphs: int = 120) -> str:
    """A Gutenberg-like book: START marker, contents, chapter headings, an illustration caption,
    and paragraphs of five 10-word sentences whose words are unique (``<tag><n>``)."""
    lines = [f"*** START OF THE PROJECT GUTENBERG EBOOK {tag} ***", "", "CONTENTS", ""]
    n = 0
    for p in range(paragraphs):
        if p % 40 == 0:
            lines += [f"CHAPTER {p // 40 + 1}.", "", "[Illustration: a picture]", ""]
        sentences = []
        for _ in range(5):
            words = [f"{tag}{n + i}" for i in range(10)]
            n += 10
            sentences.append(" ".join(words).capitalize() + ".")
        lines += [textwrap.fill(" ".join(sentences), 70), ""]
    return "\n".join([*lines, f"*** END OF THE PROJECT GUTENBERG EBOOK {tag} ***", "licence"])


BOOKS = {"alpha": book("a"), "beta": book("b"), "gamma": book("c", 200)}


def flat(name: str) -> list[str]:
    return [w for run in prose(BOOKS[name]) for w in run]


def test_prose_drops_markers_headings_and_captions_and_breaks_runs_there() -> None:
    runs = prose(BOOKS["alpha"])
    assert [len(r) for r in runs] == [2000, 2000, 2000]  # 40 paragraphs of 50 words per chapter
    text = " ".join(w for r in runs for w in r)
    assert not re.search(r"CHAPTER|CONTENTS|Illustration|START|END|licence", text)
    assert runs[0][0] == "A0" and runs[1][0] == "A2000"


def test_split_cuts_prefix_at_a_sentence_end_and_continuation_at_the_token_budget() -> None:
    words = flat("alpha")[:SLOT_WORDS]
    wide = split("alpha", 0, words, count_words, budget=10_000)
    prefix = wide.prefix.split()
    assert 150 <= len(prefix) <= 200 and prefix[-1].endswith(".")
    assert prefix[0][0].isupper()  # starts a sentence too
    cont = wide.continuation.split()
    assert len(cont) == MAX_TOKENS  # the word-count tokenizer: 115 tokens = 115 words
    at = words.index(prefix[0])
    assert words[at : at + len(prefix) + len(cont)] == prefix + cont  # the text that follows
    assert wide.start == at

    narrow = split("alpha", 0, words, count_words, budget=120)
    assert len(narrow.prefix.split()) == 120  # the front is dropped to fit the context
    assert narrow.prefix.split() == prefix[-120:] and narrow.continuation == wide.continuation


def test_split_rejects_a_short_window_and_a_context_too_small() -> None:
    words = flat("alpha")
    with pytest.raises(ValueError, match="needs 400"):
        split("alpha", 0, words[:100], count_words, budget=500)
    with pytest.raises(ValueError, match="longer context"):
        split("alpha", 0, words[:SLOT_WORDS], count_words, budget=10)


def test_passages_are_deterministic_disjoint_held_out_and_spread_over_books() -> None:
    first = passages(BOOKS, 12, 3, count_words, 10_000)
    assert first == passages(BOOKS, 12, 3, count_words, 10_000)
    assert first != passages(BOOKS, 12, 4, count_words, 10_000)
    assert {p.book for p in first} == set(BOOKS)
    assert [sum(p.book == b for p in first) for b in sorted(BOOKS)] == [4, 4, 4]
    for name in BOOKS:
        words = flat(name)
        spans = sorted(
            (p.start, p.start + len((p.prefix + " " + p.continuation).split()))
            for p in first
            if p.book == name
        )
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start  # no two passages share a word
        for p in first:
            if p.book == name:
                assert p.start >= SKIP_SHARE * len(words)  # the book's opening is never used
                assert words[p.start : p.start + 3] == p.prefix.split()[:3]


def test_passages_fail_clearly_when_the_books_are_too_short() -> None:
    with pytest.raises(ValueError, match="lower --k"):
        passages({"alpha": BOOKS["alpha"]}, 100, 0, count_words, 10_000)


def test_repeated_ngrams_counts_repeats_of_earlier_4_grams() -> None:
    assert repeated_ngrams("a b c d a b c d") == pytest.approx(1 / 5)
    assert repeated_ngrams("The cat sat on the mat today") == 0.0
    assert repeated_ngrams("the the the the the the") == pytest.approx(2 / 3)
    assert repeated_ngrams("too short") == 0.0


def test_feature_texts_prepend_the_prefix_tail_on_request() -> None:
    item = Passage("b", 0, "one two three four", "human")
    assert feature_texts([item], ["gen  text"], 0) == ["gen text"]
    assert feature_texts([item], ["gen text"], 2) == ["three four gen text"]


def test_mauve_scores_same_distribution_above_a_shifted_one(
    capfd: pytest.CaptureFixture[str],
) -> None:
    rng = np.random.default_rng(0)
    human = rng.normal(size=(100, 16)).astype(np.float32)
    same = rng.normal(size=(100, 16)).astype(np.float32)
    shifted = rng.normal(loc=1.5, size=(100, 16)).astype(np.float32)
    close, close_star = mauve_scores(human, same, [0, 1])
    far, far_star = mauve_scores(human, shifted, [0, 1])
    assert min(close) > 70 and max(far) < 20
    assert min(close_star) > max(far_star)
    assert "WARNING clustering" not in capfd.readouterr().err  # faiss's small-K notice is dropped
    assert spread([1.0, 3.0]) == "2.0 ± 1.4"


def test_filtered_stderr_drops_only_the_noise(capfd: pytest.CaptureFixture[str]) -> None:
    with filtered_stderr("WARNING clustering", "GGUF"):
        os.write(2, b"WARNING clustering 200 points to 20 centroids\nreal problem\n")
        os.write(2, b"GGUF 10%\rGGUF 100%\n")
    assert capfd.readouterr().err == "real problem\n"


@pytest.mark.skipif(not DATA.is_dir(), reason="no ../shared/eval-data/gutenberg-novels")
def test_real_novels_give_clean_passages() -> None:
    items = passages(load_books(DATA), 60, 0, count_words, 10_000)
    assert len({p.book for p in items}) == 6
    for p in items:
        assert p.prefix.split()[-1][-1] in ".!?\"')]", p.prefix[-80:]
        assert "CHAPTER" not in p.prefix + p.continuation
        assert "\u201c" not in p.prefix and "_" not in p.prefix  # typography made plain


@pytest.mark.model
@pytest.mark.slow
def test_small_run_prints_every_row(test_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--k", "4", "--mauve-seeds", "1", "--featurizers", "minilm", "--model", str(test_model)])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0] for r in rows] == [
        "| continuations",
        "| human, half vs half (2 each)",
        "| nucleus p=0.9, 1 sample",
        "| over-generate n=10, rerank",
        "| RankGen beam N=10 B=2 L=20",
    ]
    for line in rows[1:]:
        cells = line.strip("| ").split(" | ")
        mauve, star = (float(c.split(" ± ")[0]) for c in cells[1:3])
        assert 0 <= mauve <= 100 and 0 <= star <= 100
        assert 0 <= float(cells[3]) <= 1 and float(cells[4]) > 0  # rep-4, words
