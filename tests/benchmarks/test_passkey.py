"""The passkey benchmark's prompts, windows and tables, and its methods on a tiny random Llama."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from benchmarks.passkey import (
    ANSWER_TOKENS,
    INSTRUCTION,
    NEEDLE,
    QUESTION,
    Method,
    accuracy_table,
    haystack,
    methods_of,
    passkey_trial,
    passkey_trials,
    perplexity_table,
    run_passkey,
    run_perplexity,
    windows,
)
from tests.models import build_tiny_llama

PLACES = ("river", "mill", "garden", "tower")
TEXT = " ".join(
    f"Sentence {n} is about the {PLACES[n % 4]} and its {n % 7} doors." for n in range(400)
)


class CharTokenizer:
    """One token per character: lengths and positions are easy to check."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)


def test_a_trial_plants_the_key_at_a_sentence_start_near_its_depth() -> None:
    tokenizer = CharTokenizer()
    stack = haystack(tokenizer, TEXT)
    assert stack.starts and all(TEXT[i - 1] == "." and TEXT[i] == " " for i in stack.starts)
    for depth in (0.1, 0.5, 0.9):
        trial = passkey_trial(tokenizer, stack, 3000, depth, random.Random(7))
        text = tokenizer.decode(trial.prompt)
        assert len(trial.prompt) == 3000 - ANSWER_TOKENS
        assert text.startswith(INSTRUCTION) and text.endswith(QUESTION)
        needle = NEEDLE.format(key=trial.key)
        filler = text[len(INSTRUCTION) : -len(QUESTION)].replace(needle, "")
        assert text.count(needle) == 1 and str(trial.key) not in filler
        at = text.index(needle) - len(INSTRUCTION)
        assert filler[at - 1] == "." and filler[at] == " "  # between two sentences
        assert abs(at - depth * len(filler)) < 90  # the nearest start (sentences are < 90)
        assert filler in TEXT  # one contiguous stretch of the haystack


def test_trials_are_seeded_and_cover_every_length_and_depth() -> None:
    tokenizer = CharTokenizer()
    stack = haystack(tokenizer, TEXT)
    trials = passkey_trials(tokenizer, stack, [2000, 4000], [0.1, 0.9], keys=2, seed=3)
    assert [(t.length, t.depth) for t in trials] == [
        (length, depth) for length in (2000, 4000) for depth in (0.1, 0.9) for _ in range(2)
    ]
    again = passkey_trials(tokenizer, stack, [2000, 4000], [0.1, 0.9], keys=2, seed=3)
    assert again == trials
    other = passkey_trials(tokenizer, stack, [2000, 4000], [0.1, 0.9], keys=2, seed=4)
    assert [t.key for t in other] != [t.key for t in trials]
    with pytest.raises(ValueError, match="too short"):
        passkey_trial(tokenizer, stack, 100_000, 0.5, random.Random(0))


def test_windows_take_each_book_in_turn() -> None:
    books = ["a" * 500, "b" * 300]
    got = windows(CharTokenizer(), books, 3, 100, seed=0)
    assert [len(w) for w in got] == [100] * 3
    assert [chr(w[0]) for w in got] == ["a", "b", "a"]


def test_methods_set_the_budget_as_a_share_of_the_context() -> None:
    from serving.engine.config import EngineConfig
    from serving.kernels.config import AttentionConfig

    methods = methods_of(["full", "blocks", "retrieval"], [0.25, 0.125])
    assert [m.label for m in methods] == [
        "full",
        "blocks 25.0%",
        "blocks 12.5%",
        "retrieval 25.0%",
        "retrieval 12.5%",
    ]
    config = methods[2].config(EngineConfig(), 8192)
    assert (config.attention.mode, config.attention.budget) == ("blocks", 1024)
    assert config.attention.prefill == "exact"
    sparse = Method("blocks-sparse", 0.25).config(EngineConfig(), 8192).attention
    assert (sparse.mode, sparse.budget, sparse.prefill) == ("blocks", 2048, "sparse")
    blocks = EngineConfig(attention=AttentionConfig(mode="blocks"))
    assert methods[0].config(blocks, 8192).attention.mode == "full"


def test_tables_count_per_length_and_depth_and_divide_by_full() -> None:
    rows = [
        {"method": m, "length": n, "depth": d, "correct": ok}
        for m, n, d, ok in [
            ("full", 4096, 0.1, True),
            ("full", 4096, 0.9, True),
            ("full", 8192, 0.1, False),
            ("blocks 25.0%", 4096, 0.1, False),
            ("blocks 25.0%", 4096, 0.9, True),
        ]
    ]
    table = accuracy_table(rows).splitlines()
    assert table[0] == "| method | 4k | 8k | 4k @10% | 4k @90% | 8k @10% | 8k @90% |"
    assert table[2] == "| full | 2/2 | 0/1 | 1/1 | 1/1 | 0/1 | - |"
    assert table[3] == "| blocks 25.0% | 1/2 | - | 0/1 | 1/1 | - | - |"
    scored = [
        {"method": "full", "budget": 8192, "perplexity": 20.0, "tokens": 1024, "seconds": 3.0},
        {
            "method": "blocks 25.0%",
            "budget": 2048,
            "perplexity": 20.5,
            "tokens": 1024,
            "seconds": 2,
        },
    ]
    lines = perplexity_table(scored).splitlines()
    assert lines[3] == "| blocks 25.0% | 2048 | 20.500 | 1.0250 | 1024 | 2 |"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from serving.engine.config import EngineConfig
    from serving.engine.loading import load_model
    from serving.kernels.config import AttentionConfig

    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    small = AttentionConfig(sinks=2, window=8, block_size=4, retrieval_segment=8)
    base = EngineConfig(model=str(folder), max_context=1024, attention=small)
    yield base, load_model(base)


@pytest.mark.slow
def test_every_method_at_a_whole_context_budget_scores_as_full_attention(tiny: Any) -> None:
    """The benchmark compares like with like: with a budget of the whole context every mode
    equals dense attention, so replies and perplexities match full attention's; at a tenth of
    it blocks with a sparse prefill scores differently, and blocks with an exact prefill (the
    default) scores as full attention by construction."""
    base, loaded = tiny
    tokenizer = loaded.tokenizer
    stack = haystack(tokenizer, TEXT)
    trials = passkey_trials(tokenizer, stack, [600], [0.2, 0.8], keys=1, seed=0)
    methods = [Method("full"), Method("blocks", 1.0), Method("retrieval", 1.0)]
    rows = run_passkey(loaded, base, methods, trials)
    assert len(rows) == 6 and {r["length"] for r in rows} == {600}
    replies = {m.label: [r["reply"] for r in rows if r["method"] == m.label] for m in methods}
    assert replies["blocks 100.0%"] == replies["full"] == replies["retrieval 100.0%"]
    assert [r["budget"] for r in rows if r["method"] == "blocks 100.0%"] == [600, 600]
    texts = windows(tokenizer, [TEXT], 2, 599, seed=0)
    sparse = [Method("blocks-sparse", 1.0), Method("blocks-sparse", 0.1), Method("blocks", 0.1)]
    scored = run_perplexity(loaded, base, [methods[0], *sparse], texts, 200)
    assert [r["tokens"] for r in scored] == [400] * 4
    full, whole, part, exact = (r["perplexity"] for r in scored)
    assert whole == pytest.approx(full, rel=1e-6)
    assert part != pytest.approx(full, rel=1e-5)
    assert exact == pytest.approx(full, rel=1e-6)


def test_a_budget_the_mode_cannot_fit_is_skipped_with_the_reason(
    tiny: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    base, loaded = tiny
    trial = passkey_trial(
        loaded.tokenizer, haystack(loaded.tokenizer, TEXT), 600, 0.5, random.Random(0)
    )
    assert run_passkey(loaded, base, [Method("retrieval", 0.05)], [trial]) == []
    assert "retrieval 5.0% at 600 tokens: budget=30 is below" in capsys.readouterr().err
