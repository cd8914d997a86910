"""Incremental detokenization equals decoding everything at once, and stops cleanly."""

from __future__ import annotations

from pathlib import Path

from serving.engine.detokenizer import Detokenizer

TEXT = "Héllo, wörld! 日本語のテキスト 🎉 and  double  spaces\nnew line. Ünïcödé ends here."


def tokenizer(folder: Path) -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_streamed_text_equals_one_decode(tiny_llama: Path) -> None:
    tok = tokenizer(tiny_llama)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    detok = Detokenizer(tok, ())
    pieces = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == tok.decode(ids)  # type: ignore[attr-defined]
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_is_cut_and_held_back(tiny_llama: Path) -> None:
    tok = tokenizer(tiny_llama)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    detok = Detokenizer(tok, ("wörld",))
    released = ""
    for token in ids:
        released += detok.add(token)
        if detok.stopped:
            break
    assert detok.stopped and released == "Héllo, "
