"""Two-stage recall (EM-LLM section 3.3): similarity, then the contiguity buffer, in a budget.

Stage one takes the ``k_similar`` episodes nearest to the query. Stage two adds up to
``k_contiguous`` of their temporal neighbours — the events just after and before each hit, in
the same document, within a reach measured in tokens (more after a hit than before it), ranked
by the hit's similarity decayed with distance — because what follows a matching passage often
holds the answer. Candidates
are packed greedily, best first, into the token budget and returned in document order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from memory.records import Episode

_WORD = re.compile(r"\S+\s*")

Reason = Literal["similarity", "contiguity"]


@dataclass(frozen=True, slots=True)
class Recall:
    """One recalled episode: a citation (document, character offsets) with why it was chosen.

    ``score`` is cosine similarity for a similarity hit; for a neighbour, its hit's similarity
    decayed with the tokens between them (see :class:`Reach`).
    """

    episode_id: int
    document_id: int | None
    ordinal: int
    text: str
    start: int
    end: int
    tokens: int
    score: float
    reason: Reason


NEIGHBOUR_SCAN = 8
"""Episodes looked at on each side of a hit when filling its contiguity reach."""


@dataclass(frozen=True, slots=True)
class Reach:
    """How far the contiguity buffer follows a hit, in tokens of text between them."""

    after_tokens: int = 128
    """Neighbours starting within this many tokens after the hit's end are offered."""
    before_tokens: int = 32
    """Neighbours ending within this many tokens before the hit's start are offered."""
    decay: float = 0.9
    """A neighbour is worth the hit's similarity x decay^(1 + gap / 128 tokens)."""


def neighbour_positions(hits: Sequence[int]) -> list[int]:
    """Positions to fetch so that :func:`neighbours` can walk each hit's reach."""
    wanted = {p + d for p in hits for d in range(-NEIGHBOUR_SCAN, NEIGHBOUR_SCAN + 1)}
    return sorted(p for p in wanted - set(hits) if p >= 0)


def neighbours(
    hits: Sequence[tuple[Episode, int, float]],
    found: dict[int, Episode],
    k_contiguous: int,
    reach: Reach,
    same: Callable[[Episode, Episode], bool],
) -> list[tuple[Episode, float]]:
    """The ``k_contiguous`` best neighbours of the hits, each with its worth.

    ``hits`` are (episode, position, similarity); ``found`` maps positions to episodes. From
    each hit the walk goes forward while the gap (tokens of the episodes in between) is under
    ``reach.after_tokens``, and backward under ``reach.before_tokens``, stopping at a missing
    position or one ``same`` rejects (another document, an expired episode). Reach in tokens,
    not episodes, so small events (surprise) and large ones (fixed windows) cover the same text.
    The best offers by worth are taken, ties to the nearer, then to the one after a hit; hits
    and repeats are skipped.
    """
    taken = {position for _, position, _ in hits}
    offers: list[tuple[float, int, int, int, int, Episode]] = []
    for rank, (hit, position, score) in enumerate(hits):
        for side, (step, limit) in enumerate(((1, reach.after_tokens), (-1, reach.before_tokens))):
            gap = 0
            for distance in range(1, NEIGHBOUR_SCAN + 1):
                neighbour = found.get(position + step * distance)
                if neighbour is None or gap >= limit or not same(hit, neighbour):
                    break
                worth = score * reach.decay ** (1 + gap / 128)
                offers.append((-worth, gap, side, rank, position + step * distance, neighbour))
                gap += neighbour.token_count
    out: list[tuple[Episode, float]] = []
    for negative, _, _, _, position, neighbour in sorted(offers, key=lambda o: o[:5]):
        if len(out) == k_contiguous:
            break
        if position not in taken:
            taken.add(position)
            out.append((neighbour, -negative))
    return out


MIN_CLIP_TOKENS = 32
"""A similarity hit too long for what is left of the budget is cut to fit if at least this
many tokens are left (its first words; the offsets say where the cut falls)."""


def clip(text: str, limit: int, count_tokens: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` ending at a word boundary within ``limit`` tokens."""
    ends = [m.end() for m in _WORD.finditer(text)]
    low, high = 0, len(ends)  # ends[:low] fit; find the largest count that fits
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(text[: ends[middle - 1]]) <= limit:
            low = middle
        else:
            high = middle - 1
    return text[: ends[low - 1]] if low else ""


def pack(
    candidates: Sequence[tuple[Episode, float, Reason]],
    budget_tokens: int,
    count_tokens: Callable[[str], int],
) -> list[Recall]:
    """Greedy by score: each candidate that still fits the budget goes in; document order out.

    A similarity hit that does not fit is clipped to what is left when that is at least
    :data:`MIN_CLIP_TOKENS`, so a small budget still returns the best passage's beginning.
    """
    chosen: list[Recall] = []
    left = budget_tokens
    for episode, score, reason in sorted(candidates, key=lambda c: -c[1]):
        text = episode.text
        tokens = count_tokens(text)
        if tokens > left:
            if reason != "similarity" or left < MIN_CLIP_TOKENS:
                continue
            text = clip(text, left, count_tokens)
            if not text.strip():
                continue
            tokens = count_tokens(text)
        left -= tokens
        chosen.append(
            Recall(
                episode_id=episode.id,
                document_id=episode.document_id,
                ordinal=episode.ordinal,
                text=text,
                start=episode.start_char,
                end=episode.start_char + len(text),
                tokens=tokens,
                score=score,
                reason=reason,
            )
        )
    return sorted(chosen, key=lambda r: r.ordinal)
