"""Service tiers: what a client's reputation buys it (concurrent streams, idle timeout, session length).

Ordered by ``min_score``; a blocked client is in the implicit ``blocked`` tier with no streams. The tier name is
what the server announces as ``X-IP-Rating``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stormguard.config import ReputationConfig, TierConfig


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    min_score: float
    streams: int
    idle_seconds: float
    session_seconds: float = 0.0


BLOCKED = Tier("blocked", float("-inf"), 0, 0.0)


class TierTable:
    """Maps a score to its tier: the highest ``min_score`` not above the score (boundaries are inclusive)."""

    def __init__(self, tiers: Sequence[TierConfig | Tier]) -> None:
        if not tiers:
            raise ValueError("at least one tier is needed")
        self.tiers = sorted((Tier(t.name, t.min_score, t.streams, t.idle_seconds, t.session_seconds)
                             for t in tiers), key=lambda t: t.min_score, reverse=True)
        self.by_name = {t.name: t for t in self.tiers} | {BLOCKED.name: BLOCKED}

    @classmethod
    def from_config(cls, cfg: ReputationConfig) -> TierTable:
        return cls(cfg.tiers)

    def for_score(self, score: float) -> Tier:
        for t in self.tiers:
            if score >= t.min_score:
                return t
        return self.tiers[-1]
