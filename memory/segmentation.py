"""Event segmentation of a text (EM-LLM at the text level, arXiv 2407.09450, section 3.1-3.2).

Three segmenters cut a text into events (episodes) whose spans cover it with no gaps:

- :func:`segment_by_surprise`: token surprise from a :class:`TokenScorer` (an LLM's logprobs);
- :func:`segment_by_embedding`: sentence novelty from an :class:`~memory.embedder.Embedder`;
- :func:`segment_fixed`: windows of ``max_tokens`` at sentence ends (the baseline).

All three work on *units* — sentences, with a sentence longer than ``max_tokens`` cut into
pieces — so every event boundary is a sentence end unless one sentence alone is too long.
A single left-to-right pass turns candidate boundaries into events within the size bounds, then
optional refinement moves each boundary to the best split of the sentence-similarity graph.

Boundaries also snap to *paragraph starts* (a unit after a line break: a paragraph, a speaker's
turn in a transcript) where the text has them: a boundary wanted inside a paragraph moves to the
paragraph's end if that comes within ``paragraph_wait`` tokens, and a cut forced by
``max_tokens`` goes back to the last paragraph start that leaves the event ``min_tokens``.
Issue 19: cutting a conversation between two sentences of one turn split half of LoCoMo's
evidence turns over two events.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from memory.embedder import Embedder

# A sentence ends at . ! ? … (with closing quotes) before whitespace, at a blank line, or at a
# line break not followed by a lowercase letter (a hard-wrapped sentence goes on in lowercase).
_SENTENCE_END = re.compile(
    "[.!?\u2026]+[\"')\\]\u2019\u201d]*\\s+|\n[ \t]*\n\\s*|\n(?![ \t]*[a-z])\\s*"
)
_WORD_PIECE = re.compile(r"\S+\s*")


@dataclass(frozen=True, slots=True)
class ScoredToken:
    """One token of a scored text; ``surprise`` is -log p(token | previous) in nats."""

    text: str
    start: int
    end: int
    surprise: float | None  # None where the model gives no logprob (the first token)


class TokenScorer(Protocol):
    """What memory needs from an LLM for surprise (``app`` wires it to ``LLM.token_logprobs``)."""

    async def score(self, text: str) -> list[ScoredToken]:
        """Tokens of ``text`` in order; ``start``/``end`` are character offsets into ``text``.

        Offsets must be non-decreasing and within the text; tokens must cover it in order.
        """
        ...

    async def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the scoring model's own tokenizer: what its context counts."""
        ...


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    """Settings of every segmenter; ``app`` builds one and passes it in."""

    gamma: float = 1.0
    """Threshold in standard deviations: a boundary where s > mu + gamma*sigma (unitless)."""
    window: int = 128
    """Preceding tokens whose surprise gives mu and sigma (tokens)."""
    sentence_window: int = 16
    """Preceding sentences whose novelty gives mu and sigma (embedding segmenter; sentences)."""
    novelty_context: int = 3
    """Previous sentences averaged when measuring a sentence's novelty (sentences)."""
    min_tokens: int = 8
    """Smallest event (tokens; approximate tokens, words x 1.3, for embedding and fixed)."""
    max_tokens: int = 128
    """Largest event (tokens; approximate tokens, words x 1.3, for embedding and fixed)."""
    refine: bool = True
    """Move boundaries to the best split of the sentence-similarity graph (EM-LLM refinement)."""
    refine_metric: Literal["modularity", "conductance"] = "modularity"
    """Maximise modularity or minimise conductance of the two-event split."""
    paragraph_wait: int = 64
    """A boundary wanted inside a paragraph waits this long for the paragraph to end, then is
    cut where it was wanted (tokens; 0 = never wait)."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"need 1 <= min_tokens <= max_tokens, got {self.min_tokens} and {self.max_tokens}"
            )
        if self.window < 1 or self.sentence_window < 1 or self.novelty_context < 1:
            raise ValueError("window, sentence_window and novelty_context must be at least 1")


@dataclass(frozen=True, slots=True)
class Event:
    """A span of the text: ``start``/``end`` character offsets, ``end`` exclusive.

    Surprise statistics are token surprise (nats) for the surprise segmenter, sentence novelty
    (1 - cosine) for the embedding segmenter and 0.0 for the fixed one.
    """

    start: int
    end: int
    token_count: int
    surprise_mean: float
    surprise_max: float


def approximate_tokens(text: str) -> int:
    """Approximate token count: whitespace-separated words x 1.3, rounded up."""
    return math.ceil(len(text.split()) * 1.3)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text``, covering it in order with no gaps.

    A sentence ends after ``.``, ``!``, ``?`` or ``…`` (and closing quotes) followed by
    whitespace, at a blank line, or at a line break unless the next line starts in lowercase
    (hard-wrapped prose); the trailing whitespace belongs to the sentence before it.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if match.end() > start:
            spans.append((start, match.end()))
            start = match.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def surprise_boundaries(
    surprise: npt.ArrayLike, gamma: float, window: int
) -> npt.NDArray[np.bool_]:
    """(T,) bool: token t is a boundary if s_t > mu + gamma*sigma of the ``window`` before it.

    mu and sigma (population) come from cumulative sums over the min(t, window) preceding
    tokens; the first tokens use what precedes them, and tokens t < 2 are never boundaries.
    """
    s = np.asarray(surprise, dtype=np.float64)  # (T,)
    t = np.arange(s.size)
    first = np.concatenate(([0.0], np.cumsum(s)))  # (T + 1,)
    second = np.concatenate(([0.0], np.cumsum(s * s)))
    lo = np.maximum(0, t - window)
    count = np.maximum(t - lo, 1)
    mean = (first[t] - first[lo]) / count
    variance = np.maximum((second[t] - second[lo]) / count - mean * mean, 0.0)
    out: npt.NDArray[np.bool_] = (s > mean + gamma * np.sqrt(variance)) & (t >= 2)
    return out


def split_long(
    text: str, spans: list[tuple[int, int]], limit: int, count: Callable[[str], int]
) -> list[tuple[int, int]]:
    """Cut each span longer than ``limit`` tokens at word boundaries into pieces ≤ ``limit``."""
    out: list[tuple[int, int]] = []
    for start, end in spans:
        if count(text[start:end]) <= limit:
            out.append((start, end))
            continue
        piece_start = start
        for word in _WORD_PIECE.finditer(text, start, end):
            if word.start() > piece_start and count(text[piece_start : word.end()]) > limit:
                out.append((piece_start, word.start()))
                piece_start = word.start()
        out.append((piece_start, end))
    return out


def paragraph_starts(text: str, units: Sequence[tuple[int, int]]) -> list[bool]:
    """Whether each unit starts a paragraph: the text's start, or after a line break."""
    out = []
    for start, _ in units:
        before = text[max(0, start - 32) : start]
        out.append(start == 0 or "\n" in before[len(before.rstrip()) :])
    return out


def _plan(
    counts: Sequence[int],
    wanted: Sequence[bool],
    config: SegmenterConfig,
    breaks: Sequence[bool] | None = None,
) -> list[int]:
    """Cut positions (unit indices, 0 … n) from candidate boundaries, within the size bounds.

    Left to right: a wanted cut is taken once the open event holds ``min_tokens``; a cut is
    forced before a unit that would push it past ``max_tokens``. ``breaks`` marks paragraph
    starts (see the module docstring; None: every unit starts one). Only the last event can
    end up too small: it joins the previous one, or the cut between them moves to balance them.
    Causal except for that last step, which is what lets :class:`StreamingSegmenter` agree.
    """
    breaks = [True] * len(counts) if breaks is None else breaks
    cuts = _open_plan(counts, wanted, config, breaks, final=True)
    if len(cuts) > 2 and sum(counts[cuts[-2] :]) < config.min_tokens:
        start, end = cuts[-3], cuts[-1]
        if sum(counts[start:end]) <= config.max_tokens:
            del cuts[-2]
        else:
            sizes = np.cumsum(counts[start:end])
            left = sizes[:-1]
            right = sizes[-1] - left
            ok = (left >= config.min_tokens) & (right >= config.min_tokens)
            ok &= (left <= config.max_tokens) & (right <= config.max_tokens)
            at_breaks = ok & np.asarray(breaks[start + 1 : end], dtype=bool)
            ok = at_breaks if at_breaks.any() else ok
            if ok.any():
                cuts[-2] = start + 1 + int(np.flatnonzero(ok)[-1])
    return cuts


def _open_plan(
    counts: Sequence[int],
    wanted: Sequence[bool],
    config: SegmenterConfig,
    breaks: Sequence[bool] | None = None,
    *,
    final: bool = False,
) -> list[int]:
    """Cuts of :func:`_plan` before its last step. A boundary still waiting for its paragraph
    to end when the text ends moves to the end (no cut) — unless the ``final`` text is one
    paragraph, where waiting has nothing to snap to: then it is cut where it was wanted."""
    breaks = [True] * len(counts) if breaks is None else breaks
    cuts = [0]
    size = 0
    pending: int | None = None  # a boundary wanted inside the current paragraph, waiting
    for i, units in enumerate(counts):
        if i > cuts[-1]:
            if breaks[i]:
                if (wanted[i] or pending is not None) and size >= config.min_tokens:
                    cuts.append(i)
                    size = 0
                pending = None
            elif wanted[i] and pending is None and size >= config.min_tokens:
                pending = i
            while pending is not None and sum(counts[pending:i]) >= config.paragraph_wait:
                cuts.append(pending)  # the paragraph goes on: cut where it was wanted
                size = sum(counts[pending:i])
                pending = _next_wanted(counts, wanted, pending, i, config.min_tokens)
            if size + units > config.max_tokens:
                cut = _forced_cut(counts, wanted, breaks, cuts[-1], i, config)
                cuts.append(cut)
                size = sum(counts[cut:i])
                pending = None
        size += units
    while final and pending is not None and not any(breaks[1:]):
        cuts.append(pending)
        pending = _next_wanted(counts, wanted, pending, len(counts) - 1, config.min_tokens)
    cuts.append(len(counts))
    return cuts


def _next_wanted(
    counts: Sequence[int], wanted: Sequence[bool], start: int, last: int, min_tokens: int
) -> int | None:
    """The first wanted unit in (start, last] at least ``min_tokens`` after ``start``."""
    size = 0
    for j in range(start + 1, last + 1):
        size += counts[j - 1]
        if wanted[j] and size >= min_tokens:
            return j
    return None


def _forced_cut(
    counts: Sequence[int],
    wanted: Sequence[bool],
    breaks: Sequence[bool],
    start: int,
    end: int,
    config: SegmenterConfig,
) -> int:
    """Where to cut an event [start, end) that cannot take unit ``end``: the last paragraph
    start, else the last wanted boundary, that leaves ``min_tokens`` before it and room for
    unit ``end`` after it; else ``end`` itself."""
    for marks in (breaks, wanted):
        left, right = sum(counts[start:end]), counts[end]
        for j in range(end, start, -1):
            if right > config.max_tokens:
                break
            if marks[j] and left >= config.min_tokens:
                return j
            left -= counts[j - 1]
            right += counts[j - 1]
    return end


def _best_split(affinity: npt.NDArray[np.float64], metric: str) -> npt.NDArray[np.float64]:
    """(w - 1,) score of splitting units 0 … w-1 at t = 1 … w-1 into [0, t) and [t, w).

    Higher is better: modularity Q, or -conductance. One (w, w) prefix sum, no Python loop.
    """
    w = affinity.shape[0]
    prefix = np.zeros((w + 1, w + 1))
    prefix[1:, 1:] = affinity.cumsum(0).cumsum(1)  # prefix[a, b] = Σ A[:a, :b]
    total = prefix[w, w]  # 2m
    t = np.arange(1, w)
    inside_left = prefix[t, t]
    volume_left = prefix[t, w]
    cut = volume_left - inside_left
    inside_right = total - inside_left - 2 * cut
    volume_right = total - volume_left
    if metric == "conductance":
        smaller = np.minimum(volume_left, volume_right)
        conductance: npt.NDArray[np.float64] = np.divide(
            cut, smaller, out=np.full(t.shape, np.inf), where=smaller > 0
        )
        return -conductance
    modularity: npt.NDArray[np.float64] = (inside_left + inside_right) / total - (
        volume_left**2 + volume_right**2
    ) / total**2
    return modularity


def _refine(
    cuts: list[int],
    vectors: npt.NDArray[np.float32],
    counts: Sequence[int],
    config: SegmenterConfig,
    through: int,
    breaks: Sequence[bool] | None = None,
) -> list[int]:
    """Refined cuts 0 … ``through``: cut j moves within (r[j-1], cuts[j+1]) to the best split.

    Candidates keep both events within the size bounds; the original cut is always allowed,
    so the number of events is preserved and sizes stay in bounds (by induction on j). A cut
    at a paragraph start (``breaks``) moves only to another one.
    """
    breaks = [True] * len(counts) if breaks is None else breaks
    refined = [0]
    for j in range(1, min(through, len(cuts) - 2) + 1):
        start, end, original = refined[-1], cuts[j + 1], cuts[j]
        block = vectors[start:end].astype(np.float64)  # (w, dim)
        affinity = np.clip(block @ block.T, 0.0, None)  # (w, w) negative similarity → 0
        np.fill_diagonal(affinity, 0.0)
        if affinity.sum() <= 0:
            refined.append(original)
            continue
        sizes = np.cumsum(counts[start:end])
        left = sizes[:-1]
        right = sizes[-1] - left
        ok = (left >= config.min_tokens) & (left <= config.max_tokens)
        ok &= (right >= config.min_tokens) & (right <= config.max_tokens)
        if breaks[original]:
            ok &= np.asarray(breaks[start + 1 : end], dtype=bool)
        ok[original - start - 1] = True
        score = np.where(ok, _best_split(affinity, config.refine_metric), -np.inf)
        refined.append(start + 1 + int(np.argmax(score)))
    return refined


def _events(
    units: list[tuple[int, int]],
    cuts: list[int],
    counts: Sequence[int],
    signal: Sequence[Sequence[float]],
) -> list[Event]:
    """Events for consecutive cuts; ``signal[u]`` holds unit u's surprise values."""
    out = []
    for a, b in itertools.pairwise(cuts):
        values = [v for u in range(a, b) for v in signal[u]]
        out.append(
            Event(
                start=units[a][0],
                end=units[b - 1][1],
                token_count=int(sum(counts[a:b])),
                surprise_mean=float(np.mean(values)) if values else 0.0,
                surprise_max=float(np.max(values)) if values else 0.0,
            )
        )
    return out


def segment_by_surprise(
    text: str,
    tokens: Sequence[ScoredToken],
    config: SegmenterConfig,
    embedder: Embedder | None = None,
) -> list[Event]:
    """Events where token surprise spikes, snapped to sentence ends (EM-LLM surprise step).

    ``tokens`` are ``text`` scored by a :class:`TokenScorer` (see :mod:`memory.scoring` for
    texts longer than its context). A boundary token at the start of a sentence cuts before that
    sentence; one inside a sentence cuts at its end. Refinement needs sentence vectors, so it
    runs only when ``embedder`` is given. Raises ValueError on tokens out of order or range.
    """
    if not text:
        return []
    if not tokens:
        raise ValueError("no scored tokens for a non-empty text")
    starts = np.array([token.start for token in tokens], dtype=np.int64)
    if np.any(np.diff(starts) < 0) or any(not 0 <= t.start <= t.end <= len(text) for t in tokens):
        raise ValueError("scorer returned token offsets out of order or outside the text")
    units: list[tuple[int, int]] = []
    for start, end in sentence_spans(text):
        inside = starts[(starts >= start) & (starts < end)]
        pieces = [int(p) for p in inside[config.max_tokens :: config.max_tokens]]
        bounds = list(dict.fromkeys([start, *pieces, end]))
        units.extend(itertools.pairwise(bounds))
    unit_starts = np.array([u[0] for u in units])
    owner = np.searchsorted(unit_starts, starts, side="right") - 1  # unit of each token
    counts = np.bincount(owner, minlength=len(units)).tolist()
    known = [t.surprise for t in tokens if t.surprise is not None]
    fill = float(np.mean(known)) if known else 0.0  # a missing logprob counts as average
    surprise = np.array([fill if t.surprise is None else t.surprise for t in tokens])
    wanted = [False] * len(units)
    for t in np.flatnonzero(surprise_boundaries(surprise, config.gamma, config.window)):
        cut = int(np.searchsorted(unit_starts, starts[t], side="left"))
        if cut < len(units):
            wanted[cut] = True
    breaks = paragraph_starts(text, units)
    cuts = _plan(counts, wanted, config, breaks)
    if config.refine and embedder is not None:
        vectors = embedder.embed([text[a:b] for a, b in units])
        cuts = [*_refine(cuts, vectors, counts, config, len(cuts), breaks), cuts[-1]]
    signal: list[list[float]] = [[] for _ in units]
    for unit, value in zip(owner.tolist(), surprise.tolist(), strict=True):
        signal[unit].append(value)
    return _events(units, cuts, counts, signal)


def _novelty(vectors: npt.NDArray[np.float32], context: int) -> npt.NDArray[np.float64]:
    """(n,) 1 - cosine(v_i, mean of the ``context`` previous vectors); 0 for the first."""
    v = vectors.astype(np.float64)  # (n, dim)
    prefix = np.vstack([np.zeros((1, v.shape[1])), np.cumsum(v, axis=0)])  # (n + 1, dim)
    i = np.arange(1, v.shape[0])
    mean = prefix[i] - prefix[np.maximum(0, i - context)]  # (n - 1, dim); scale cancels
    norm = np.linalg.norm(mean, axis=1) * np.linalg.norm(v[i], axis=1)
    cosine = np.divide((mean * v[i]).sum(axis=1), norm, out=np.zeros(i.shape), where=norm > 0)
    return np.concatenate(([0.0], 1.0 - cosine))


def _segment_units(
    text: str,
    embedder: Embedder | None,
    config: SegmenterConfig,
    count_tokens: Callable[[str], int],
    final: bool,
) -> tuple[list[Event], int]:
    """Events of the embedding (or, without embedder, fixed) segmenter and how many are final.

    With ``final`` false, the text may grow: its last sentence is left out, and only events
    that no later text can change are counted as final.
    """
    spans = sentence_spans(text)
    if not final:
        spans = spans[:-1]  # the last sentence may still grow (or its closing whitespace may)
    units = split_long(text, spans, config.max_tokens, count_tokens)
    if not units:
        return [], 0
    counts = [count_tokens(text[a:b]) for a, b in units]
    if embedder is None:
        wanted = [False] * len(units)
        signal: list[list[float]] = [[] for _ in units]
    else:
        vectors = embedder.embed([text[a:b] for a, b in units])
        novelty = _novelty(vectors, config.novelty_context)
        wanted = surprise_boundaries(novelty, config.gamma, config.sentence_window).tolist()
        signal = [[value] for value in novelty.tolist()]
    breaks = paragraph_starts(text, units)
    if final:
        cuts = _plan(counts, wanted, config, breaks)
        if config.refine and embedder is not None:
            cuts = [*_refine(cuts, vectors, counts, config, len(cuts), breaks), cuts[-1]]
        return _events(units, cuts, counts, signal), len(cuts) - 1
    # Open plan [0, c_1 … c_m, n]: finishing may still move c_m (see _plan), so c_1 … c_{m-1}
    # are fixed; refined cut j also needs c_{j+1} fixed, so refined cuts up to j = m - 2 are.
    cuts = _open_plan(counts, wanted, config, breaks)
    if not (config.refine and embedder is not None):
        return _events(units, cuts, counts, signal), max(0, len(cuts) - 3)
    refined = _refine(cuts, vectors, counts, config, len(cuts) - 4, breaks)
    return _events(units, refined, counts, signal), len(refined) - 1


def segment_by_embedding(
    text: str,
    embedder: Embedder,
    config: SegmenterConfig,
    count_tokens: Callable[[str], int] = approximate_tokens,
) -> list[Event]:
    """Events where sentence novelty spikes (the fallback when the LLM gives no logprobs).

    Novelty of sentence i is 1 - cosine(v_i, mean of the ``novelty_context`` previous vectors);
    a new event starts at sentence i if its novelty exceeds mu + gamma*sigma of the
    ``sentence_window`` sentences before it. Sizes are counted by ``count_tokens``.
    """
    return _segment_units(text, embedder, config, count_tokens, final=True)[0]


def segment_fixed(
    text: str, config: SegmenterConfig, count_tokens: Callable[[str], int] = approximate_tokens
) -> list[Event]:
    """Windows of at most ``max_tokens`` (by ``count_tokens``) ending at sentence ends."""
    return _segment_units(text, None, config, count_tokens, final=True)[0]


class StreamingSegmenter:
    """Segments a text fed in pieces, giving exactly the events of one pass over the whole.

    Embedding segmenter when ``embedder`` is given, else fixed windows. Surprise is not
    supported: the scorer would have to rescore the held-back tail. The whole text is kept
    (events depend on every earlier sentence through mu, sigma); unit vectors are cached by text so
    each sentence is embedded once, and each feed re-plans in numpy, linear in the text so far.
    """

    def __init__(
        self,
        config: SegmenterConfig,
        embedder: Embedder | None = None,
        count_tokens: Callable[[str], int] = approximate_tokens,
    ) -> None:
        self._config = config
        self._embedder = None if embedder is None else _CachedEmbedder(embedder)
        self._count_tokens = count_tokens
        self._text = ""
        self._emitted = 0

    def feed(self, piece: str) -> list[Event]:
        """Add ``piece``; return the events no later text can change (possibly none)."""
        self._text += piece
        events, final = _segment_units(
            self._text, self._embedder, self._config, self._count_tokens, final=False
        )
        return self._take(events[:final])

    def finish(self) -> list[Event]:
        """The text is complete: return the remaining events."""
        events, _ = _segment_units(
            self._text, self._embedder, self._config, self._count_tokens, final=True
        )
        return self._take(events)

    def _take(self, events: list[Event]) -> list[Event]:
        new = events[self._emitted :]
        self._emitted = max(self._emitted, len(events))
        return new


class _CachedEmbedder:
    """An :class:`Embedder` that embeds each distinct text once."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner
        self._cache: dict[str, npt.NDArray[np.float32]] = {}

    @property
    def model_name(self) -> str:
        return self._inner.model_name

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            self._cache.update(zip(missing, self._inner.embed(missing), strict=True))
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])
