"""Token surprise of a text longer than the model's context: scored in overlapping windows.

Each window is a run of whole sentences that fits the scorer's context together with the
sentences just before it (the overlap), which are given as context and whose scores are dropped.
So every token is scored once, conditioned on at least ``overlap_tokens`` of preceding text
(except at the very start), and the windows can be scored concurrently.

Windows are measured in the *scoring model's* tokens (``TokenScorer.count_tokens``), which may
be far more than the configured counter's (a 512-piece vocabulary against cl100k: twice as
many). Asking the model for every sentence would cost a call each, so the configured counter is
scaled by the ratio the model gives on a sample, and every planned window is then counted by
the model before it is sent; windows still too long are planned again with a larger ratio.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from memory.errors import InvalidRecord
from memory.segmentation import ScoredToken, TokenScorer, sentence_spans, split_long

Progress = Callable[[int, int], None]
"""Called with (windows done, windows in all)."""

SAMPLE_CHARS = 20_000
"""Characters of the text counted by both tokenizers to find their ratio."""
PLAN_ROUNDS = 4
"""Plans tried before a text is refused as unfit for the scorer's context."""


@dataclass(frozen=True, slots=True)
class Window:
    """The scorer reads ``text[context:end]``; tokens starting before ``start`` (the overlap)
    are context only, their scores dropped."""

    context: int
    start: int
    end: int


def plan_windows(
    text: str,
    count_tokens: Callable[[str], int],
    context_tokens: int,
    overlap_tokens: int,
) -> list[Window]:
    """Windows of whole sentences covering ``text``, each ≤ ``context_tokens`` with its overlap.

    ``count_tokens`` should approximate the scorer's tokenizer (:func:`model_windows` scales
    the configured counter to it): windows are filled to 80% of ``context_tokens`` to leave
    room for the difference.
    """
    if not 0 <= overlap_tokens < context_tokens:
        raise ValueError(f"need 0 <= overlap_tokens < context_tokens, got {overlap_tokens}")
    room = max(1, int(context_tokens * 0.8) - overlap_tokens)
    units = split_long(text, sentence_spans(text), room, count_tokens)
    counts = [count_tokens(text[a:b]) for a, b in units]
    windows: list[Window] = []
    first = 0
    while first < len(units):
        last, size = first, counts[first]
        while last + 1 < len(units) and size + counts[last + 1] <= room:
            last += 1
            size += counts[last]
        context, seen = first, 0
        while context > 0 and seen + counts[context - 1] <= overlap_tokens:
            context -= 1
            seen += counts[context]
        windows.append(Window(units[context][0], units[first][0], units[last][1]))
        first = last + 1
    return windows


async def model_windows(
    text: str,
    scorer: TokenScorer,
    count_tokens: Callable[[str], int],
    context_tokens: int,
    overlap_tokens: int,
    concurrency: int = 4,
) -> list[Window]:
    """Windows of ``text`` that fit ``context_tokens`` of the scorer's own tokenizer.

    Planned with ``count_tokens`` scaled by the model/counter ratio on a sample, then each
    window counted by ``scorer.count_tokens``; when one overflows, the ratio grows by the worst
    overflow and the text is planned again (at most :data:`PLAN_ROUNDS` times). Raises
    :class:`InvalidRecord` when no plan fits (a context too small for one sentence piece).
    """
    sample = text[:SAMPLE_CHARS]
    ratio = max(await scorer.count_tokens(sample), 1) / max(count_tokens(sample), 1)
    gate = asyncio.Semaphore(concurrency)

    async def model_count(window: Window) -> int:
        async with gate:
            return await scorer.count_tokens(text[window.context : window.end])

    for _ in range(PLAN_ROUNDS):

        def scaled(piece: str, scale: float = ratio) -> int:
            return math.ceil(count_tokens(piece) * scale)

        windows = plan_windows(text, scaled, context_tokens, overlap_tokens)
        if not windows:
            return windows
        counts = await asyncio.gather(*(model_count(w) for w in windows))
        worst = max(count / context_tokens for count in counts)
        if worst <= 1.0:
            return windows
        ratio *= worst * 1.1  # a little more than the worst overflow
    raise InvalidRecord(
        f"cannot cut the text into windows of {context_tokens} tokens of the scoring model "
        f"(the longest planned window had {max(counts)}); give the scorer a larger context"
    )


async def score_text(
    text: str,
    scorer: TokenScorer,
    count_tokens: Callable[[str], int],
    *,
    context_tokens: int,
    overlap_tokens: int = 64,
    concurrency: int = 4,
    on_progress: Progress | None = None,
) -> list[ScoredToken]:
    """Tokens of the whole ``text`` with offsets into it, scored window by window.

    Windows fit ``context_tokens`` of the scorer's tokenizer (:func:`model_windows`);
    ``count_tokens`` (the configured counter) need only approximate it.
    """
    windows = await model_windows(
        text, scorer, count_tokens, context_tokens, overlap_tokens, concurrency
    )
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def one(window: Window) -> list[ScoredToken]:
        nonlocal done
        async with gate:
            tokens = await scorer.score(text[window.context : window.end])
        done += 1
        if on_progress is not None:
            on_progress(done, len(windows))
        shift = window.context
        return [
            ScoredToken(t.text, t.start + shift, t.end + shift, t.surprise)
            for t in tokens
            if t.start + shift >= window.start
        ]

    parts = await asyncio.gather(*(one(w) for w in windows))
    return [token for part in parts for token in part]


def scored_from_pieces(
    text: str, pieces: Sequence[str], surprise: Sequence[float | None]
) -> list[ScoredToken]:
    """Align a tokenizer's token strings with ``text`` to give each token its offsets.

    Tokens normally spell the text; a token that does not (a partial UTF-8 byte shown as
    U+FFFD, a normalised space) is placed where the next match resumes, so offsets stay
    ordered and inside the text whatever the tokenizer does.
    """
    out: list[ScoredToken] = []
    cursor = 0
    for piece, value in zip(pieces, surprise, strict=True):
        if piece and text.startswith(piece, cursor):
            start, cursor = cursor, cursor + len(piece)
        else:
            core = piece.strip().replace("\ufffd", "")
            found = text.find(core, cursor, cursor + len(piece) + 16) if core else -1
            if found >= 0:
                lead = len(piece) - len(piece.lstrip())
                start, cursor = max(cursor, found - lead), found + len(core)
            else:
                start = cursor
        out.append(ScoredToken(piece, start, cursor, value))
    return out
