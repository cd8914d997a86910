"""MAUVE of nucleus sampling, over-generate-and-rerank and RankGen beam search; prints Markdown.

Run ``python -m benchmarks.mauve`` (``--quick``: smoke run; ``--smollm``: add SmolLM2-135M as a
generator, slow). K held-out passages of ../shared/eval-data/gutenberg-novels give a prefix and
the human continuation after it; the generator (stories260K at MNEME_TEST_MODEL) continues each
prefix three ways, all nucleus p=0.9, temperature 1, at most 115 new tokens, seeded: one sample;
10 samples reranked (keep the best); RankGen beam search (N=10, B=2, L=20). MAUVE (``mauve-text``)
compares each method's K continuations with the K human ones, as in RankGen's Table 3: mean ± sd
over k-means seeds, beside MAUVE* (Pillutla et al. 2023's smoothed variant, less biased at small
K), repeated 4-grams, length and wall time. A human-half-vs-half row calibrates the scale.

Passages (held out: nothing is tuned on them; stories260K saw only TinyStories): K disjoint
400-word windows, drawn with ``--seed`` round-robin over the six books, none from a book's first
5%. A prefix is 100-200 words (mostly 150-200) ending a sentence, its front cut to fit the
generator's context with 115 new tokens (stories260K's 512 leave ~120 words); the human
continuation is the text after it, cut at the last word boundary within 115 generator tokens.

Deviations from the paper, and why:
- Features: MAUVE's GPT-2-large featurizer cannot be downloaded here. The first columns use the
  bundled all-MiniLM-L6-v2 (mean-pooled embedding of the continuation alone; MiniLM reads 256 word
  pieces, so a prefix would crowd the continuation out). MiniLM is also the reranking scorer, so
  reranked outputs are picked in the space they are judged in; hence the second featurizer,
  SmolLM2-135M's final hidden state at the last token (MAUVE's recipe with GPT-2), a model the
  scorer never saw. ``--context-words N`` prepends the prefix's last N words (RankGen featurizes
  prefix + continuation). Any function texts → (n, d) array is a :data:`Featurizer`.
- Scorer: the RankGen checkpoints cannot be downloaded and a random-weight RankGen says nothing
  about quality, so rerank and beam use the bundled MiniLM (``EmbedderReranker``).
- Size: K=100, not thousands: MAUVE is noisy at this size (k-means with K/10 clusters).
- ``mauve-text`` is GPLv3: a benchmark-only dev dependency, never imported by Mneme itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.engine.config import EngineConfig
from serving.llm import SamplingParams
from serving.local import LocalLLM
from serving.rerank import EmbedderReranker, RerankConfig, Reranker, generate

DATA = Path(__file__).resolve().parents[2] / "shared" / "eval-data" / "gutenberg-novels"
TEST_MODEL = DATA.parent / "tinystories-260k" / "hf"
MAX_TOKENS = 115
SLOT_WORDS = 400  # words per candidate window: a prefix of at most 200 words and what follows
SKIP_SHARE = 0.05  # leading share of each book's prose never used (front matter, prefaces)
_TYPOGRAPHY = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": " -- ", "_": ""}
)
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")
_HEADING = re.compile(r"^(\[|CHAPTER|Chapter|LETTER|Letter|STAVE|BOOK|PART)\b")

FEATURIZERS = ("minilm", "smollm2")
LOADING_BARS = ("GGUF tensors", "Loading weights")  # transformers' tqdm bars, kept out of tables
Vectors = npt.NDArray[np.float32]
Featurizer = Callable[[Sequence[str]], Vectors]
"""Texts → (n, d) features for MAUVE."""
TokenCounter = Callable[[str], int]
"""Generator tokens of a text, special tokens excluded."""


@dataclass(frozen=True, slots=True)
class Passage:
    """A prefix from a book and the human continuation that follows it there."""

    book: str
    start: int
    """Word offset of the prefix within the book's prose."""
    prefix: str
    continuation: str


def prose(text: str) -> list[list[str]]:
    """A book's prose as runs of words: consecutive paragraphs, broken at headings, contents
    lines and illustration captions; Gutenberg's START/END markers and italics marks dropped,
    curly quotes and dashes made ASCII."""
    if "*** START OF" in text:
        text = text.split("*** START OF", 1)[1].split("\n", 1)[-1]
    text = text.split("*** END OF", 1)[0]
    runs: list[list[str]] = [[]]
    for block in re.split(r"\n[ \t]*\n", text):
        words = block.translate(_TYPOGRAPHY).split()
        body = " ".join(words)
        lower = any(c.islower() for c in body)
        if lower and not _HEADING.match(body) and (len(words) >= 8 or _SENTENCE_END.search(body)):
            runs[-1].extend(words)
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def slots(runs: Sequence[Sequence[str]]) -> list[tuple[int, list[str]]]:
    """Disjoint windows of ``SLOT_WORDS`` words inside runs, after the book's first 5%."""
    total = sum(len(r) for r in runs)
    out, offset = [], 0
    for run in runs:
        for i in range(0, len(run) - SLOT_WORDS + 1, SLOT_WORDS):
            if offset + i >= SKIP_SHARE * total:
                out.append((offset + i, list(run[i : i + SLOT_WORDS])))
        offset += len(run)
    return out


def longest_fit(
    words: Sequence[str], count: TokenCounter, budget: int, *, tail: bool = False
) -> int:
    """Most leading (``tail``: trailing) words whose text has at most ``budget`` tokens."""
    low, high = 0, len(words)
    while low < high:
        mid = (low + high + 1) // 2
        if count(" ".join(words[len(words) - mid :] if tail else words[:mid])) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def split(book: str, start: int, words: Sequence[str], count: TokenCounter, budget: int) -> Passage:
    """Cut a window into a prefix (from a sentence start, up to 200 words and at least 100,
    ending at the last sentence end; its front dropped until it fits ``budget`` tokens) and the
    continuation after it, cut at the last word boundary within 115 tokens."""
    if len(words) < SLOT_WORDS:
        raise ValueError(f"a window has {len(words)} words; it needs {SLOT_WORDS}")
    first = next((i for i in range(1, 40) if _SENTENCE_END.search(words[i - 1])), 0)
    ends = [e for e in range(first + 100, first + 201) if _SENTENCE_END.search(words[e - 1])]
    end = ends[-1] if ends else first + 200
    keep = longest_fit(words[first:end], count, budget, tail=True)
    if keep < 20:
        raise ValueError(f"only {keep} prefix words fit in {budget} tokens; use a longer context")
    rest = words[end:]
    prefix, continuation = words[end - keep : end], rest[: longest_fit(rest, count, MAX_TOKENS)]
    return Passage(book, start + end - keep, " ".join(prefix), " ".join(continuation))


def passages(
    books: dict[str, str], k: int, seed: int, count: TokenCounter, budget: int
) -> list[Passage]:
    """``k`` passages from disjoint windows, round-robin over the books, shuffled by ``seed``."""
    rng, pools = random.Random(seed), [(name, slots(prose(books[name]))) for name in sorted(books)]
    for _, pool in pools:
        rng.shuffle(pool)
    available = sum(len(p) for _, p in pools)
    if k > available:
        raise ValueError(f"asked for {k} passages but the books hold {available}; lower --k")
    picked: list[Passage] = []
    while len(picked) < k:
        for name, pool in pools:
            if pool and len(picked) < k:
                start, words = pool.pop()
                picked.append(split(name, start, words, count, budget))
    return picked


def load_books(folder: Path) -> dict[str, str]:
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no *.txt books in {folder}; pass --data with the novels folder")
    return {f.stem: f.read_text(encoding="utf-8") for f in files}


def repeated_ngrams(text: str, n: int = 4) -> float:
    """Share of a text's word n-grams that repeat an earlier one (rep-n; 0 below n words)."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


@contextlib.contextmanager
def filtered_stderr(*noise: str) -> Iterator[None]:
    """Drop the lines of stderr (file descriptor 2, so C++ output too) that contain any of
    ``noise``: faiss's 'please provide at least N training points' at small K (the table says
    so) and progress bars; the rest is passed on when the block ends."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines = sink.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(x for x in lines if not any(n in x for n in noise)))


def mauve_scores(p: Vectors, q: Vectors, seeds: Sequence[int]) -> tuple[list[float], list[float]]:
    """(MAUVE, MAUVE*) on a 0-100 scale, of features ``p`` vs ``q`` for each k-means seed."""
    import mauve  # type: ignore[import-untyped]

    plain, star = [], []
    with filtered_stderr("WARNING clustering"):
        for seed in seeds:
            out = mauve.compute_mauve(p_features=p, q_features=q, seed=seed, verbose=False)
            plain.append(100 * float(out.mauve))
            star.append(100 * float(out.mauve_star))
    return plain, star


def spread(values: Sequence[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def causal_lm_featurizer(model: str | None = None, batch: int = 16) -> Featurizer:
    """Final hidden state at the last token of a causal LM (MAUVE's recipe with GPT-2), here
    SmolLM2-135M by default (the bundled GGUF, dequantised to float32)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from serving.catalog import locate_model

    path = locate_model(model).path or Path(model or "")
    source, extra = str(path), {}
    if path.suffix == ".gguf":
        source, extra = str(path.parent), {"gguf_file": path.name}
    with filtered_stderr(*LOADING_BARS):
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        lm: Any = AutoModel.from_pretrained(source, dtype=torch.float32, **extra).eval()
    tokenizer.padding_side = "right"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token

    def featurize(texts: Sequence[str]) -> Vectors:
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch):
                chunk = [t or tokenizer.eos_token for t in texts[i : i + batch]]  # "" = EOS at once
                enc = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True)
                hidden = lm(**enc).last_hidden_state
                last = enc["attention_mask"].sum(dim=1) - 1
                out.append(hidden[torch.arange(len(chunk)), last].float().numpy())
        return np.concatenate(out).astype(np.float32)

    return featurize


def feature_texts(items: Sequence[Passage], texts: Sequence[str], context: int) -> list[str]:
    """What is featurized: the continuation, after the prefix's last ``context`` words."""
    lead = [p.prefix.split()[-context:] if context else [] for p in items]
    return [" ".join([*w, *t.split()]) for w, t in zip(lead, texts, strict=True)]


METHODS: dict[str, RerankConfig | None] = {
    "nucleus p=0.9, 1 sample": None,
    "over-generate n=10, rerank": RerankConfig(method="sample", samples=10),
    "RankGen beam N=10 B=2 L=20": RerankConfig(method="beam"),
}
"""Decoding methods by table label; None = one plain nucleus sample."""


async def continue_all(
    llm: LocalLLM, items: Sequence[Passage], how: RerankConfig | None, scorer: Reranker, seed: int
) -> tuple[list[str], float]:
    """Each passage's continuation (whitespace normalised) and the mean wall seconds each."""
    texts, start = [], time.perf_counter()
    for i, passage in enumerate(items):
        if how is None:
            params = SamplingParams(MAX_TOKENS, temperature=1.0, top_p=0.9, seed=seed + i)
            texts.append((await llm.complete(passage.prefix, params)).choices[0].text)
        else:
            reply = await generate(llm, passage.prefix, rerank=how, reranker=scorer, seed=seed + i)
            texts.append(reply.text)
    return [" ".join(t.split()) for t in texts], (time.perf_counter() - start) / len(items)


def row(label: str, cells: Sequence[str], texts: Sequence[str], seconds: str) -> str:
    rep = statistics.mean(repeated_ngrams(t) for t in texts)
    words = statistics.mean(len(t.split()) for t in texts)
    return f"| {label} | {' | '.join(cells)} | {rep:.3f} | {words:.1f} | {seconds} |"


async def generator_table(
    label: str, llm: LocalLLM, books: dict[str, str], scorer: Reranker,
    featurizers: dict[str, Featurizer], args: argparse.Namespace,
) -> None:  # fmt: skip
    def count(text: str) -> int:
        return len(llm.encode(text, special=False))

    budget = llm.engine.max_context - MAX_TOKENS - len(llm.encode(""))
    items = passages(books, args.k, args.seed, count, budget)
    human = [p.continuation for p in items]
    outputs = {m: await continue_all(llm, items, c, scorer, args.seed) for m, c in METHODS.items()}
    if args.save:
        with args.save.open("a", encoding="utf-8") as out:
            for i, p in enumerate(items):
                gen = {m: texts[i] for m, (texts, _) in outputs.items()}
                out.write(json.dumps({"generator": label, **asdict(p), **gen}) + "\n")
    seeds, k = list(range(args.mauve_seeds)), len(items)
    seed_range = f"s {seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else f" {seeds[0]}"
    per_book = ", ".join(f"{b}: {sum(p.book == b for p in items)}" for b in sorted(books))
    words, tokens = (
        statistics.mean(f(p.prefix) for p in items) for f in (lambda t: len(t.split()), count)
    )
    print(
        f"## {label}: K={k} Gutenberg passages\n\nSeed {args.seed}; passages per book {per_book}."
        f" Prefixes: mean {words:.0f} words, {tokens:.0f} tokens; human continuations: mean "
        f"{statistics.mean(count(h) for h in human):.0f} tokens. MAUVE of each method's K={k} "
        f"continuations against the K human ones, 0-100, mean ± sd over k-means "
        f"seed{seed_range} (K/10 clusters: noisy at this K; higher is closer to the human "
        "text). rep-4: share of repeated word 4-grams.\n"
    )
    names = list(featurizers)
    columns = " | ".join(f"MAUVE ({n}) | MAUVE* ({n})" for n in names)
    print(f"| continuations | {columns} | rep-4 | words | s / passage |")
    print("| --- |" + " --- | --- |" * len(names) + " --- | --- | --- |")

    def features(texts: Sequence[str]) -> dict[str, Vectors]:
        return {
            n: f(feature_texts(items, texts, args.context_words)) for n, f in featurizers.items()
        }

    def cells(p: dict[str, Vectors], q: dict[str, Vectors]) -> list[str]:
        return [spread(s) for n in names for s in mauve_scores(p[n], q[n], seeds)]

    gold = features(human)  # the sanity row: even vs odd passages of the human set
    halves = cells({n: f[0::2] for n, f in gold.items()}, {n: f[1::2] for n, f in gold.items()})
    print(row(f"human, half vs half ({k // 2} each)", halves, human, "—"))
    for method, (texts, seconds) in outputs.items():
        print(row(method, cells(gold, features(texts)), texts, f"{seconds:.2f}"))
    print()


async def run(args: argparse.Namespace) -> None:
    import torch
    from transformers.utils import logging as transformers_logging

    from serving.embeddings import EmbedderConfig, SentenceTransformerEmbedder

    torch.set_num_threads(max(1, args.threads))
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # long prefixes
    context = f"the prefix's last {args.context_words} words + " if args.context_words else ""
    print(
        f"# MAUVE of RankGen decoding: nucleus vs rerank vs beam\n\n"
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, load average before {os.getloadavg()[0]:.1f}. "
        f"Scorer of rerank and beam: MiniLM-L6 (`EmbedderReranker`). Featurizers: "
        f"{', '.join(args.featurizers)}, over {context}the continuation.\n"
    )
    embedder = SentenceTransformerEmbedder(EmbedderConfig(device="cpu"))
    featurizers: dict[str, Featurizer] = {
        n: embedder.embed if n == "minilm" else causal_lm_featurizer() for n in args.featurizers
    }
    books = load_books(args.data)
    generators = [("stories260K", EngineConfig(model=str(args.model)))]
    if args.smollm:
        generators.append(("SmolLM2-135M (Q4_1 GGUF → fp32)", EngineConfig()))
    for label, config in generators:
        with filtered_stderr(*LOADING_BARS):
            llm = LocalLLM.load(config)
        try:
            await generator_table(label, llm, books, EmbedderReranker(embedder), featurizers, args)
        finally:
            llm.close()
    print(f"load average after {os.getloadavg()[0]:.1f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--quick", action="store_true", help="smoke run: K=8, MiniLM features, 3 k-means seeds")
    add("--k", type=int, default=100, help="passages (default 100)")
    add("--seed", type=int, default=0, help="seed of the passage choice and of sampling")
    add("--mauve-seeds", type=int, default=5, help="k-means seeds per MAUVE score")
    add("--featurizers", nargs="+", choices=FEATURIZERS, default=list(FEATURIZERS))
    add("--context-words", type=int, default=0, help="prefix words featurized before the text")
    add("--model", type=Path, default=Path(os.environ.get("MNEME_TEST_MODEL") or TEST_MODEL))
    add("--smollm", action="store_true", help="add SmolLM2-135M as generator (~80 s a passage)")
    add("--data", type=Path, default=DATA, help="the gutenberg-novels folder")
    add("--save", type=Path, help="append passages and continuations here as JSON lines")
    add("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.quick:
        args.k, args.featurizers, args.mauve_seeds = 8, ["minilm"], 3
    if args.k < 4 or args.mauve_seeds < 1 or args.context_words < 0:
        parser.error("--k must be at least 4, --mauve-seeds at least 1, --context-words >= 0")
    if not (args.model / "config.json").is_file():
        parser.error(f"no stories260K at {args.model}: set MNEME_TEST_MODEL or pass --model")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
