"""The reputation engine: evidence → rules → store update, and store entry → admission decision.

This is the one object the server's reputation gate and the batch scorer talk to. It owns no state besides the
store; rules, tiers, allow-lists and the (optional, dynamic) block threshold are plain values it consults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stormguard.scoring.evidence import EvidenceBuilder
from stormguard.scoring.reputation import BLOCK_TOLERANCE, Reputation
from stormguard.scoring.rules import Rule, Verdict, evaluate, rules_from_config
from stormguard.scoring.stores.base import ReputationStore
from stormguard.scoring.tiers import BLOCKED, Tier, TierTable

from stormguard.config import Config


@dataclass(frozen=True, slots=True)
class Decision:
    """Admission verdict for one new connection: its tier (``blocked`` = refuse) and when to retry."""

    tier: Tier
    reputation: Reputation
    retry_after: float = 0.0
    allowed_by: str | None = None

    @property
    def blocked(self) -> bool:
        return self.tier is BLOCKED

    # The shape the server's gate seam (GateDecision) wants, without scoring importing the server.
    @property
    def allow(self) -> bool:
        return self.tier is not BLOCKED

    @property
    def retry_ms(self) -> int | None:
        return int(self.retry_after * 1000) if self.retry_after else None

    @property
    def reason(self) -> str:
        return self.reputation.reasons[-1] if self.blocked and self.reputation.reasons else "reputation"


class ReputationEngine:
    """Scores observations into a store and classifies clients into tiers."""

    def __init__(self, store: ReputationStore, config: Config | None = None,
                 evidence: EvidenceBuilder | None = None, threshold: Any = None) -> None:
        self.config = config or Config()
        rep = self.config.reputation
        self.store = store
        self.rules: list[Rule] = rules_from_config(rep)
        self.tiers = TierTable.from_config(rep)
        self.evidence = evidence if evidence is not None else EvidenceBuilder.from_config(rep)
        self.threshold = threshold  # a DynamicThreshold, or None for the fixed block_score
        self.block_seconds = rep.block_seconds

    def block_score(self, country: str | None = None, asn: int | None = None, ip: str | None = None) -> float:
        """The fixed ``block_score``, or the dynamic threshold for this client's origin (GeoIP when known)."""
        if self.threshold is None:
            return self.config.reputation.block_score
        geo = getattr(self.threshold, "geo", None)
        if ip and geo is not None and country is None and asn is None:
            info = geo.lookup(ip)
            country, asn = info.country, info.asn
        return float(self.threshold.value(country, asn))

    async def observe(self, key: str, features: Mapping[str, Any] | None = None, *, ip: str | None = None,
                      ua: str | None = None, ja3: str | None = None, now: float | None = None,
                      country: str | None = None, asn: int | None = None) -> tuple[Verdict, Reputation | None]:
        """Apply every matching rule in one atomic store update; allow-listed clients are scored, never blocked.

        Returns the verdict and the updated entry (None when no rule matched: nothing is written).
        """
        ev = self.evidence.build(features, ua=ua, ja3=ja3)
        verdict = evaluate(self.rules, ev)
        if not verdict.reasons:
            return verdict, None
        allowed = self.evidence.allowed(ip or key, ua)
        block_score = None if allowed else self.block_score(country, asn, ip or key)
        rep = await self.store.add(key, verdict.delta, verdict.reason, now=now, block_score=block_score,
                                   block_seconds=self.block_seconds)
        return verdict, rep

    def classify(self, rep: Reputation, now: float, block_score: float, allowed_by: str | None = None) -> Decision:
        """Blocked while a block runs, or while the score is at/below the block threshold and no block for it
        has been served yet; else the score's tier.

        DESIGN.md: a score ≤ −50 refuses new connections *for 5 minutes*. Decay is slow (hours), so once a block
        has run out (or an operator lifted it) a low score alone does not refuse again: the client comes back in
        the low tier, and its next bad event (``last_bad`` after the block) blocks it anew.
        """
        if allowed_by is None:
            if rep.blocked(now):
                return Decision(BLOCKED, rep, math.ceil(rep.block_until - now))
            served = 0 < rep.block_until <= now and rep.last_bad <= rep.block_until
            if rep.score <= block_score + BLOCK_TOLERANCE and not served:
                return Decision(BLOCKED, rep, self.block_seconds)
        return Decision(self.tiers.for_score(rep.score), rep, 0.0, allowed_by)

    async def decide(self, key: str, *, ip: str | None = None, ua: str | None = None, now: float | None = None,
                     country: str | None = None, asn: int | None = None) -> Decision:
        now = self.store.now() if now is None else now
        rep = await self.store.get(key, now)
        return self.classify(rep, now, self.block_score(country, asn, ip or key), self.evidence.allowed(ip or key, ua))
