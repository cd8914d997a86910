"""Two-stage recall (EM-LLM section 3.3): a first stage, then the contiguity buffer, in a budget.

Stage one ranks episodes by meaning and by words and fuses the two rankings
(:mod:`memory.fusion`); each hit's *worth* is its fused score (1 = first in both). Stage two
offers the hits' temporal neighbours — the events just after and before each hit, in the same
document, within a reach measured in tokens (more after a hit than before it) — each worth its
hit's score decayed with distance, because what follows a matching passage often holds the
answer.

Two ways to choose (issue 19):

- *budget-aware* (the default, :func:`pack_budget`): every hit and every neighbour competes for
  the budget on worth alone, best first, until the budget is full; a neighbour goes in only when
  it is worth more than the next hit would be (score-gated contiguity), and the last passage is
  cut to what is left. So the budget decides how many events, which neighbours, and how much
  of the last one — a 1024-token budget returns about 1024 tokens.
- *explicit* (a caller gives ``k_similar`` / ``k_contiguous``): the ``k_similar`` best hits and
  the ``k_contiguous`` best neighbours, packed greedily by worth (:func:`pack`).

Either way the result comes back in document order.
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

    ``score`` is the episode's worth: for a first-stage hit (``reason`` "similarity", by
    meaning or by words) its fused rank score in (0, 1], 1 for the first by both; for a
    neighbour, its hit's score decayed with the tokens between them (see :class:`Reach`).
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
    decay: float = 0.85
    """A neighbour is worth its hit's score x decay^(1 + gap / 128 tokens) (0.85 chosen on
    issue 19's tuning sets: the next event is worth a little less than the hit itself)."""


def neighbour_positions(hits: Sequence[int]) -> list[int]:
    """Positions to fetch so that :func:`neighbours` can walk each hit's reach."""
    wanted = {p + d for p in hits for d in range(-NEIGHBOUR_SCAN, NEIGHBOUR_SCAN + 1)}
    return sorted(p for p in wanted - set(hits) if p >= 0)


def offers(
    hits: Sequence[tuple[Episode, int, float]],
    found: dict[int, Episode],
    reach: Reach,
    same: Callable[[Episode, Episode], bool],
    *,
    skip_hits: bool = True,
) -> list[tuple[Episode, float]]:
    """Every neighbour within reach of a hit, once, with its best worth, best first.

    ``hits`` are (episode, position, score); ``found`` maps positions to episodes. From each
    hit the walk goes forward while the gap (tokens of the episodes in between) is under
    ``reach.after_tokens``, and backward under ``reach.before_tokens``, stopping at a missing
    position or one ``same`` rejects (another document, an expired episode). Reach in tokens,
    not episodes, so small events (surprise) and large ones (fixed windows) cover the same text.
    Ties go to the nearer, then to the one after a hit, then to the better hit. A hit that is
    also another hit's neighbour is offered only without ``skip_hits``.
    """
    taken = {position for _, position, _ in hits} if skip_hits else set()
    found_offers: list[tuple[float, int, int, int, int, Episode]] = []
    for rank, (hit, position, score) in enumerate(hits):
        for side, (step, limit) in enumerate(((1, reach.after_tokens), (-1, reach.before_tokens))):
            gap = 0
            for distance in range(1, NEIGHBOUR_SCAN + 1):
                neighbour = found.get(position + step * distance)
                if neighbour is None or gap >= limit or not same(hit, neighbour):
                    break
                worth = score * reach.decay ** (1 + gap / 128)
                where = position + step * distance
                found_offers.append((-worth, gap, side, rank, where, neighbour))
                gap += neighbour.token_count
    out: list[tuple[Episode, float]] = []
    for negative, _, _, _, position, neighbour in sorted(found_offers, key=lambda o: o[:5]):
        if position not in taken:
            taken.add(position)
            out.append((neighbour, -negative))
    return out


def neighbours(
    hits: Sequence[tuple[Episode, int, float]],
    found: dict[int, Episode],
    k_contiguous: int,
    reach: Reach,
    same: Callable[[Episode, Episode], bool],
) -> list[tuple[Episode, float]]:
    """The ``k_contiguous`` best neighbours of the hits, with their worth (:func:`offers`)."""
    return offers(hits, found, reach, same)[:k_contiguous]


MIN_CLIP_TOKENS = 32
"""A passage too long for what is left of the budget (a similarity hit; any passage when the
budget decides) is cut to fit if at least this many tokens are left (its first words; the
offsets say where the cut falls)."""


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
    *,
    clip_neighbours: bool = False,
) -> list[Recall]:
    """Greedy by score: each candidate that still fits the budget goes in; document order out.

    A similarity hit (any candidate, with ``clip_neighbours``) that does not fit is clipped to
    what is left when that is at least :data:`MIN_CLIP_TOKENS`, so a small budget still returns
    the best passage's beginning and a large one is filled to the end.
    """
    chosen: list[Recall] = []
    left = budget_tokens
    for episode, score, reason in sorted(candidates, key=lambda c: -c[1]):
        if left <= 0:
            break
        text = episode.text
        tokens = count_tokens(text)
        if tokens > left:
            if (reason != "similarity" and not clip_neighbours) or left < MIN_CLIP_TOKENS:
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


def pack_budget(
    hits: Sequence[tuple[Episode, int, float]],
    found: dict[int, Episode],
    budget_tokens: int,
    count_tokens: Callable[[str], int],
    reach: Reach,
    same: Callable[[Episode, Episode], bool],
) -> list[Recall]:
    """Budget-aware second stage: hits and their neighbours compete on worth alone.

    ``hits`` are the first stage's (episode, position, score), best first; ``found`` maps
    positions to episodes around them. An episode that is both a hit and a neighbour competes
    with the better of its two worths. Packed by :func:`pack`, every candidate clippable.
    """
    best: dict[int, tuple[Episode, float, Reason]] = {
        hit.id: (hit, score, "similarity") for hit, _, score in hits
    }
    for neighbour, worth in offers(hits, found, reach, same, skip_hits=False):
        if neighbour.id not in best or best[neighbour.id][1] < worth:
            best[neighbour.id] = (neighbour, worth, "contiguity")
    return pack(list(best.values()), budget_tokens, count_tokens, clip_neighbours=True)
