"""Token counting offline: tiktoken encodings rebuilt from bundled vocabularies."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from serving.errors import TokenizerUnavailable
from serving.tokens import (
    HuggingFaceTokenCounter,
    TiktokenCounter,
    bundled_bpe,
    offline_encoding,
    token_counter,
)

SAMPLES = [
    "Hello, world!",
    "Mneme (the Muse of memory) remembers 128k tokens — and more. Ünïcödé, 日本語, emoji 🎉.",
    "def f(x):\n    return x ** 2  # comment\n\n\n   trailing   spaces   ",
    "<|endoftext|> appears in user text and must be counted as text",
    "",
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize(
    ("encoding", "quicktok_name"), [("cl100k_base", "cl100k_base"), ("o200k_base", "o200k_base")]
)
def test_offline_encoding_matches_an_independent_tokenizer(
    encoding: str, quicktok_name: str
) -> None:
    import quicktok

    ours = offline_encoding(encoding)
    reference = quicktok.get_encoding(quicktok_name)
    for text in SAMPLES:
        assert ours.encode(text, disallowed_special=()) == reference.encode_ordinary(text)
    assert ours.decode(ours.encode(SAMPLES[1])) == SAMPLES[1]


def test_models_map_to_their_encodings() -> None:
    assert TiktokenCounter("gpt-4o").name == "tiktoken:o200k_base"
    assert TiktokenCounter("gpt-4").name == "tiktoken:cl100k_base"
    assert TiktokenCounter("gpt-4").count("Hello, world!") == 4


def test_unbundled_or_unknown_models_fall_back_to_cl100k(caplog: pytest.LogCaptureFixture) -> None:
    assert TiktokenCounter("text-davinci-003").name == "tiktoken:cl100k_base"  # p50k
    assert TiktokenCounter("my-local-llama").name == "tiktoken:cl100k_base"
    assert "counting with cl100k_base" in caplog.text
    assert token_counter(None).count("one two three") == 3


def test_unknown_bundle_is_a_clear_error() -> None:
    with pytest.raises(TokenizerUnavailable, match="no bundled vocabulary"):
        bundled_bpe("r50k_base")


@pytest.mark.model
def test_model_folder_counts_with_its_own_tokenizer(test_model: Path) -> None:
    counter = token_counter(str(test_model))
    assert isinstance(counter, HuggingFaceTokenCounter)
    tiktoken_count = TiktokenCounter("gpt-4").count(SAMPLES[1])
    assert counter.count(SAMPLES[1]) != tiktoken_count  # a 512-token vocabulary splits finer
    assert counter.count("Once upon a time") > 0


def test_missing_folder_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerUnavailable, match="MNEME_LLM_MODEL"):
        HuggingFaceTokenCounter(str(tmp_path))
