"""Two-stage recall (EM-LLM section 3.3): similarity, then the contiguity buffer, in a budget.

Stage one takes the ``k_similar`` episodes nearest to the query. Stage two adds up to
``k_contiguous`` of their temporal neighbours — the events just after and before each hit, in
the same document, ranked by the hit's similarity decayed with distance — because what follows
a matching passage often holds the answer. Candidates
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
    times ``contiguity_decay`` per step of distance.
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


def neighbour_ordinals(
    hits: Sequence[tuple[int, float]], k_contiguous: int, decay: float, reach: int = 3
) -> list[tuple[int, int, int]]:
    """(position, hit position, distance) of the ``k_contiguous`` best neighbours of the hits.

    ``hits`` are (position, similarity). Each hit offers the episodes up to ``reach`` steps
    after and before it, worth similarity x ``decay`` ^ distance; the best are taken, so a
    strong hit brings a longer stretch of what follows it than a weak one. Ties go to the
    episode after a hit, then to the nearer, then to the better-ranked hit. Hits themselves and
    repeats are skipped.
    """
    taken = {position for position, _ in hits}
    offers = []
    for rank, (hit, score) in enumerate(hits):
        for distance in range(1, reach + 1):
            for side, position in enumerate((hit + distance, hit - distance)):
                if position >= 0 and position not in taken:
                    worth = score * decay**distance
                    offers.append((-worth, side, distance, rank, position, hit))
    out: list[tuple[int, int, int]] = []
    for _, _, distance, _, position, hit in sorted(offers):
        if len(out) == k_contiguous:
            break
        if position not in taken:
            taken.add(position)
            out.append((position, hit, distance))
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
