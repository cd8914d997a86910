"""Which episodes to forget: expired ones (TTL), and those whose retention has decayed.

Retention = importance x 2^(-age / half_life), age counted from the last recall (search touches
what it returns), so an episode that keeps being useful stays. Pinned episodes are never
forgotten, whatever their TTL or retention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from memory.records import Retention


@dataclass(frozen=True, slots=True)
class ForgetPolicy:
    """Forget an unpinned episode once importance x 2^(-age/half_life) < threshold."""

    half_life: timedelta = timedelta(days=30)
    threshold: float = 0.05

    def __post_init__(self) -> None:
        if self.half_life <= timedelta(0):
            raise ValueError(f"half_life must be positive, got {self.half_life}")
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")


def retention(item: Retention, policy: ForgetPolicy, now: datetime) -> float:
    age = max((now - item.accessed_at).total_seconds(), 0.0)
    return float(item.importance * 0.5 ** (age / policy.half_life.total_seconds()))


def to_forget(
    items: Sequence[Retention], now: datetime, policy: ForgetPolicy | None = None
) -> list[int]:
    """Ids of unpinned episodes that are expired, or (with a policy) below its threshold."""
    out = []
    for item in items:
        if item.pinned:
            continue
        expired = item.expires_at is not None and item.expires_at <= now
        faded = policy is not None and retention(item, policy, now) < policy.threshold
        if expired or faded:
            out.append(item.episode_id)
    return out
