"""Two-stage recall (EM-LLM section 3.3): similarity, then the contiguity buffer, in a budget.

Stage one takes the ``k_similar`` episodes nearest to the query. Stage two adds up to
``k_contiguous`` of their temporal neighbours — the events just after and before each hit, in
the same document — because what follows a matching passage often holds the answer. Candidates
are packed greedily, best first, into the token budget and returned in document order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from memory.records import Episode

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


def neighbour_ordinals(ranked: Sequence[int], k_contiguous: int) -> list[tuple[int, int, int]]:
    """(ordinal, hit ordinal, distance) of up to ``k_contiguous`` neighbours of the hits.

    Nearest first; at each distance the hits go in rank order, the episode after a hit before
    the one preceding it. Hits themselves and repeats are skipped.
    """
    taken = set(ranked)
    out: list[tuple[int, int, int]] = []
    distance = 1
    while len(out) < k_contiguous and ranked and distance <= k_contiguous:
        for hit in ranked:
            for ordinal in (hit + distance, hit - distance):
                if ordinal >= 0 and ordinal not in taken and len(out) < k_contiguous:
                    taken.add(ordinal)
                    out.append((ordinal, hit, distance))
        distance += 1
    return out


def pack(
    candidates: Sequence[tuple[Episode, float, Reason]],
    budget_tokens: int,
    count_tokens: Callable[[str], int],
) -> list[Recall]:
    """Greedy by score: each candidate that still fits the budget goes in; document order out."""
    chosen: list[Recall] = []
    left = budget_tokens
    for episode, score, reason in sorted(candidates, key=lambda c: -c[1]):
        tokens = count_tokens(episode.text)
        if tokens > left:
            continue
        left -= tokens
        chosen.append(
            Recall(
                episode_id=episode.id,
                document_id=episode.document_id,
                ordinal=episode.ordinal,
                text=episode.text,
                start=episode.start_char,
                end=episode.end_char,
                tokens=tokens,
                score=score,
                reason=reason,
            )
        )
    return sorted(chosen, key=lambda r: r.ordinal)
