"""Passkey retrieval and long-window perplexity on the bundled model: full attention against the
engine's long-context modes at fixed shares of the context (issue 16).

``python -m benchmarks.passkey`` (``--quick`` for a smoke run of about 3 minutes). The default
run takes about 15 minutes on 2 CPU cores: SmolLM2-135M prefills 8k tokens in 30-60 s there, and
every method and budget prefills every prompt again.

Passkey (the classic test of landmark attention, Mohtashami & Jaggi 2023): "The pass key is
71432. Remember it. 71432 is the pass key." is planted at a sentence boundary at a depth of
10/50/90% of filler text -- Paul Graham essays (../shared/eval-data/pg-essays-haystack),
starting at a random sentence -- after a one-line instruction, and the prompt ends with "What is
the pass key? The pass key is " (a plain prompt, no chat template; the trailing space is the
token the key's digits follow in the needle). With SmolLM2's chat template full attention found
no key at 4k tokens; with this prompt it found 6 of 6. Greedy decoding of 8 tokens; a trial is
correct when the key's digits are in the reply. Context lengths count the reply: an 8192-token
trial has an 8184-token prompt.

Perplexity: windows of ``--window`` tokens of Gutenberg novels (../shared/eval-data/
gutenberg-novels; one book per window, a random start), the last ``--scored`` tokens scored given
all before (prompt logprobs). ``blocks`` (by default, as Quest) and ``retrieval`` (always, as
RetrievalAttention) attend exactly during prefill and sparsify decoding only, so their prompt
perplexity equals full attention's by construction and is not run; their decoding is what the
passkey test checks. ``blocks-sparse`` (``prefill="sparse"``, as InfLLM) selects blocks in prompt
passes too, and is what the perplexity test checks.

Methods: ``full`` (exact attention) and ``blocks`` / ``retrieval`` / ``blocks-sparse`` at each
``--budgets`` share of the context (attention budget = share x length), every other setting the
engine's default.
Tables: passkey accuracy per method, budget and length (correct / trials), and perplexity with
its ratio to full attention in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import math
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from benchmarks.needles import EVAL_DATA, essays, read_book

INSTRUCTION = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it.\n\n"
)
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "\n\nWhat is the pass key? The pass key is "
ANSWER_TOKENS = 8  # greedy tokens generated; the 5 digits and what follows
_ENDS = (".", "!", "?", '."', ".\u201d", "?\u201d", "!\u201d")


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True, slots=True)
class Method:
    name: str  # "full", "blocks", "retrieval" or "blocks-sparse" (blocks, prefill="sparse")
    share: float | None = None  # attention budget as a share of the context; None = full

    @property
    def label(self) -> str:
        return self.name if self.share is None else f"{self.name} {self.share:.1%}"

    @property
    def sparse_prefill(self) -> bool:
        """Whether prompt passes select too (else they attend in full, as ``full`` does)."""
        return self.name.endswith("-sparse")

    def config(self, base: Any, length: int) -> Any:
        """The engine config for a context of ``length`` tokens."""
        if self.share is None:
            return replace(base, attention=replace(base.attention, mode="full"))
        attention = replace(
            base.attention,
            mode=self.name.removesuffix("-sparse"),
            budget=int(self.share * length),
            prefill="sparse" if self.sparse_prefill else "exact",
        )
        return replace(base, attention=attention)


@dataclass(frozen=True, slots=True)
class Trial:
    length: int  # context tokens, the reply included
    depth: float  # where the needle sits, as a share of the filler
    key: int
    prompt: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Haystack:
    """Filler tokens and the indices where a sentence starts (a needle may go there)."""

    ids: list[int]
    starts: list[int]


def haystack(tokenizer: Tokenizer, text: str) -> Haystack:
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = {token: tokenizer.decode([token]) for token in set(ids)}
    starts = [
        i
        for i in range(1, len(ids))
        if pieces[ids[i - 1]].rstrip().endswith(_ENDS) and pieces[ids[i]][:1].isspace()
    ]
    return Haystack(ids, starts)


def passkey_trial(
    tokenizer: Tokenizer, stack: Haystack, length: int, depth: float, rng: random.Random
) -> Trial:
    """A prompt of ``length - ANSWER_TOKENS`` tokens with a fresh key planted at ``depth``."""
    head = tokenizer.encode(INSTRUCTION, add_special_tokens=False)
    tail = tokenizer.encode(QUESTION, add_special_tokens=False)
    while True:
        key = rng.randint(10_000, 99_999)
        needle = tokenizer.encode(NEEDLE.format(key=key), add_special_tokens=False)
        room = length - ANSWER_TOKENS - len(head) - len(needle) - len(tail)
        usable = bisect.bisect_right(stack.starts, len(stack.ids) - room)
        if room < 1 or usable == 0:
            raise ValueError(f"the haystack is too short for {length}-token trials")
        first = stack.starts[rng.randrange(usable)]
        filler = stack.ids[first : first + room]
        if str(key) in tokenizer.decode(filler):
            continue
        wanted = first + round(depth * room)
        inside = stack.starts[
            bisect.bisect_left(stack.starts, first) : bisect.bisect_right(
                stack.starts, first + room
            )
        ]
        at = min(inside, key=lambda s: abs(s - wanted), default=wanted) - first
        prompt = head + filler[:at] + needle + filler[at:] + tail
        return Trial(length, depth, key, tuple(prompt))


def passkey_trials(
    tokenizer: Tokenizer,
    stack: Haystack,
    lengths: Sequence[int],
    depths: Sequence[float],
    keys: int,
    seed: int,
) -> list[Trial]:
    rng = random.Random(seed)
    return [
        passkey_trial(tokenizer, stack, length, depth, rng)
        for length in lengths
        for depth in depths
        for _ in range(keys)
    ]


def windows(
    tokenizer: Tokenizer, books: Sequence[str], count: int, length: int, seed: int
) -> list[tuple[int, ...]]:
    """``count`` windows of ``length`` tokens, book i % len(books), each at a random start."""
    rng = random.Random(seed)
    cache: dict[int, list[int]] = {}
    out = []
    for index in range(count):
        book = index % len(books)
        if book not in cache:
            cache[book] = tokenizer.encode(books[book], add_special_tokens=False)
        ids = cache[book]
        start = rng.randrange(len(ids) - length)
        out.append(tuple(ids[start : start + length]))
    return out


# ---------------------------------------------------------------------------- running


def run_passkey(
    loaded: Any, base: Any, methods: Sequence[Method], trials: Sequence[Trial]
) -> list[dict[str, Any]]:
    """One row per method and trial: the greedy reply and whether it holds the key."""
    rows = []
    for method in methods:
        for length in sorted({t.length for t in trials}):
            engine = _engine(method, base, length, loaded)
            if engine is None:
                continue
            try:
                for trial in (t for t in trials if t.length == length):
                    started = time.perf_counter()
                    tokens = asyncio.run(_reply(engine, trial.prompt))
                    reply = loaded.tokenizer.decode(tokens, skip_special_tokens=True)
                    row = {
                        "method": method.label,
                        "budget": engine.config.attention.budget if method.share else length,
                        "length": length,
                        "depth": trial.depth,
                        "key": trial.key,
                        "reply": reply,
                        "correct": str(trial.key) in reply,
                        "seconds": time.perf_counter() - started,
                    }
                    _progress(row)
                    rows.append(row)
            finally:
                engine.shutdown()
    return rows


def run_perplexity(
    loaded: Any, base: Any, methods: Sequence[Method], texts: Sequence[tuple[int, ...]], scored: int
) -> list[dict[str, Any]]:
    """One row per method: perplexity of the last ``scored`` tokens of every window."""
    rows = []
    for method in methods:
        length = len(texts[0]) + 1  # the window and the one token asked for
        engine = _engine(method, base, length, loaded)
        if engine is None:
            continue
        started = time.perf_counter()
        try:
            values = [
                value
                for window in texts
                for value in asyncio.run(_prompt_logprobs(engine, window))[-scored:]
            ]
        finally:
            engine.shutdown()
        row = {
            "method": method.label,
            "budget": engine.config.attention.budget if method.share else length,
            "length": length,
            "perplexity": math.exp(-sum(values) / len(values)),
            "tokens": len(values),
            "seconds": time.perf_counter() - started,
        }
        _progress(row)
        rows.append(row)
    return rows


def _engine(method: Method, base: Any, length: int, loaded: Any) -> Any:
    """A fresh engine over the loaded weights; None (and why, on stderr) when the method's
    settings do not fit this budget."""
    from serving.engine.engine import TorchEngine
    from serving.kernels.errors import AttentionSettingsError

    try:
        return TorchEngine(method.config(base, length), loaded=loaded)
    except AttentionSettingsError as err:
        print(f"{method.label} at {length} tokens: {err}", file=sys.stderr, flush=True)
        return None


async def _reply(engine: Any, prompt: tuple[int, ...]) -> list[int]:
    from serving.engine.engine import EngineOutput, EngineRequest
    from serving.llm import SamplingParams

    tokens: list[int] = []
    params = SamplingParams(temperature=0.0, max_tokens=ANSWER_TOKENS)
    async for item in engine.generate(EngineRequest(prompt, params)):
        if isinstance(item, EngineOutput):
            tokens += item.token_ids
    return tokens


async def _prompt_logprobs(engine: Any, prompt: tuple[int, ...]) -> list[float]:
    """Log-probabilities of the prompt's tokens but the first."""
    from serving.engine.engine import EngineRequest, PromptResult
    from serving.llm import SamplingParams

    spec = EngineRequest(prompt, SamplingParams(temperature=0.0, max_tokens=1), prompt_logprobs=0)
    async for item in engine.generate(spec):
        if isinstance(item, PromptResult) and item.prompt_logprobs:
            return [t.logprob for t in item.prompt_logprobs[1:] if t.logprob is not None]
    return []


def _progress(row: dict[str, Any]) -> None:
    shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in row.items()}
    print(" ".join(f"{k}={v!r}" for k, v in shown.items()), file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- tables


def accuracy_table(rows: Sequence[dict[str, Any]]) -> str:
    """Correct / trials per method and length, and per depth."""
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    head = ["method", *(f"{n // 1024}k" for n in lengths)]
    head += [f"{n // 1024}k @{d:.0%}" for n in lengths for d in depths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in _ordered(rows):
        mine = [r for r in rows if r["method"] == method]
        cells = [_score([r for r in mine if r["length"] == n]) for n in lengths]
        cells += [
            _score([r for r in mine if r["length"] == n and r["depth"] == d])
            for n in lengths
            for d in depths
        ]
        lines.append("| " + " | ".join([method, *cells]) + " |")
    return "\n".join(lines)


def perplexity_table(rows: Sequence[dict[str, Any]]) -> str:
    """Perplexity per method and its ratio to full attention's in the same run."""
    full = next((r["perplexity"] for r in rows if r["method"] == "full"), None)
    lines = [
        "| method | budget | perplexity | ratio vs full | tokens scored | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['perplexity'] / full:.4f}" if full else "-"
        lines.append(
            f"| {r['method']} | {r['budget']} | {r['perplexity']:.3f} | {ratio} | "
            f"{r['tokens']} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def _ordered(rows: Sequence[dict[str, Any]]) -> Iterator[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.setdefault(row["method"], None)
    return iter(seen)


def _score(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "-"
    return f"{sum(bool(r['correct']) for r in rows)}/{len(rows)}"


# ---------------------------------------------------------------------------- main


def methods_of(names: Sequence[str], shares: Sequence[float]) -> list[Method]:
    out = [Method("full")] if "full" in names else []
    return out + [Method(n, s) for n in names if n != "full" for s in shares]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one 4k trial and window per method")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    parser.add_argument("--keys", type=int, default=1, help="passkey trials per length and depth")
    parser.add_argument("--windows", type=int, default=1, help="perplexity windows")
    parser.add_argument("--window", type=int, default=8192, help="tokens per window")
    parser.add_argument("--scored", type=int, default=1024, help="last tokens scored per window")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.125])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["full", "blocks", "retrieval", "blocks-sparse"],
        choices=["full", "blocks", "retrieval", "blocks-sparse"],
        help="methods to run (blocks-sparse: block selection in prompt passes too, InfLLM)",
    )
    parser.add_argument("--skip-passkey", action="store_true")
    parser.add_argument("--skip-perplexity", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--haystack", type=Path, default=EVAL_DATA / "pg-essays-haystack/essays")
    parser.add_argument("--books", type=Path, default=EVAL_DATA / "gutenberg-novels")
    options = parser.parse_args(argv)
    if options.quick:
        options.lengths, options.depths, options.keys = [4096], [0.5], 1
        options.windows, options.window, options.scored = 1, 4096, 256
    import torch

    from serving.engine.config import EngineConfig
    from serving.engine.loading import load_model

    if options.threads:
        torch.set_num_threads(options.threads)
    base = EngineConfig(max_context=max([*options.lengths, options.window]))
    loaded = load_model(base)
    methods = methods_of(options.modes, options.budgets)
    print(f"model {loaded.name}, torch threads {torch.get_num_threads()}, plain prompt\n")
    if not options.skip_passkey:
        stack = haystack(loaded.tokenizer, essays(options.haystack))
        trials = passkey_trials(
            loaded.tokenizer, stack, options.lengths, options.depths, options.keys, options.seed
        )
        rows = run_passkey(loaded, base, methods, trials)
        print("Passkey retrieval (correct / trials), greedy\n")
        print(accuracy_table(rows), "\n", flush=True)
    if not options.skip_perplexity:
        books = [read_book(p) for p in sorted(options.books.glob("*.txt"))]
        if not books:
            sys.exit(f"no .txt books in {options.books}; pass --books")
        texts = windows(loaded.tokenizer, books, options.windows, options.window - 1, options.seed)
        # prompt perplexity of a mode that prefills in full is full attention's by construction
        scored = [m for m in methods if m.share is None or m.sparse_prefill]
        rows = run_perplexity(loaded, base, scored, texts, options.scored)
        print(
            f"Perplexity of the last {options.scored} tokens of {options.windows} "
            f"{options.window}-token window(s)\n"
        )
        print(perplexity_table(rows), flush=True)


if __name__ == "__main__":
    main()
