"""Reciprocal-rank fusion of rankings (Cormack, Clarke and Büttcher, SIGIR 2009).

Episodic recall's first stage ranks episodes twice — by meaning (vectors) and by words (the
lexical index) — and fuses the two by rank alone, so neither score scale has to be calibrated
against the other: an item at rank r (1-based) of ranking i earns ``weight_i / (k + r)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True, slots=True)
class FusionConfig:
    """How the first stage fuses its rankings."""

    rank_constant: int = 10
    """RRF's k: larger flattens the difference between ranks (60 in the paper; 10 chosen on
    issue 19's tuning sets, where the first few ranks matter most)."""
    dense_weight: float = 1.0
    """Weight of the ranking by embedding similarity (0 leaves it out)."""
    lexical_weight: float = 3.0
    """Weight of the ranking by the lexical index (0 leaves it out: dense recall only). Three
    times the dense weight on issue 19's tuning sets, with all-MiniLM-L6-v2 vectors: names,
    dates and rare words decide most questions there."""

    def __post_init__(self) -> None:
        if self.rank_constant < 0:
            raise ValueError(f"rank_constant={self.rank_constant}: need >= 0")
        if self.dense_weight < 0 or self.lexical_weight < 0:
            raise ValueError(
                f"weights {self.dense_weight}, {self.lexical_weight}: need >= 0, one above 0"
            )
        if self.dense_weight + self.lexical_weight <= 0:
            raise ValueError("both fusion weights are 0: give one a positive weight")


def fuse(
    rankings: Sequence[Sequence[Key]], weights: Sequence[float], rank_constant: int = 60
) -> list[tuple[Key, float]]:
    """Items of all ``rankings`` (each best first) by fused score, best first.

    Scores are normalised so that an item first in every ranking scores 1.0; ties keep the
    order in which items were first seen (earlier rankings first).
    """
    if len(rankings) != len(weights):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    scores: dict[Key, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        if weight <= 0:
            continue
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (rank_constant + rank)
    best = sum(w for w in weights if w > 0) / (rank_constant + 1)
    order = sorted(scores.items(), key=lambda pair: -pair[1])  # stable: first seen wins ties
    return [(item, score / best) for item, score in order]
