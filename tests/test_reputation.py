"""The engine end to end on the memory store: evidence → deductions → blocks → tiers, allow-lists respected."""

from __future__ import annotations

import asyncio
from pathlib import Path

from stormguard.scoring.engine import ReputationEngine
from stormguard.scoring.stores import MemoryStore
from stormguard.scoring.stores.base import StoreOptions

from stormguard.config import Config, ReputationConfig

STORM = {"reconnects_10s": 6, "short_lived_2s": 0}
FLAP = {"reconnects_10s": 0, "short_lived_2s": 4}


def _engine(cfg: Config | None = None) -> ReputationEngine:
    cfg = cfg or Config()
    return ReputationEngine(MemoryStore(StoreOptions(lam=cfg.reputation.lam)), cfg)


def test_storm_then_flap_blocks_for_five_minutes() -> None:
    e = _engine()
    v, rep = asyncio.run(e.observe("198.51.100.1", STORM, now=1000.0))
    assert v.delta == -20 and rep is not None and rep.score == -20 and not rep.blocked(1000.0)
    assert asyncio.run(e.decide("198.51.100.1", now=1000.0)).tier.name == "neutral"
    # -20 then -30 a second later: decay has moved the sum to -49.9998, which still meets the -50 threshold
    # (BLOCK_TOLERANCE): the client is blocked for five minutes.
    _, rep = asyncio.run(e.observe("198.51.100.1", FLAP, now=1001.0))
    assert rep is not None and -50 < rep.score < -49.99 and rep.block_until == 1301.0
    d = asyncio.run(e.decide("198.51.100.1", now=1100.0))
    assert d.blocked and d.retry_after == 201 and d.reason == "short_disconnects"
    # The five minutes are over: the low score alone does not refuse again (the block was served) ...
    d = asyncio.run(e.decide("198.51.100.1", now=1302.0))
    assert not d.blocked and d.tier.name == "low"
    # ... but the next bad event blocks anew, for another five minutes.
    _, rep = asyncio.run(e.observe("198.51.100.1", STORM, now=1310.0))
    assert rep is not None and rep.score < -69.8 and rep.block_until == 1610.0
    assert asyncio.run(e.decide("198.51.100.1", now=1311.0)).blocked
    # An operator's unblock readmits at once, score unchanged; a reward never blocks.
    rep = e.store.update_now("198.51.100.1", "unblock", 0.0, now=1320.0)
    assert not asyncio.run(e.decide("198.51.100.1", now=1320.0)).blocked
    rep = e.store.update_now("198.51.100.1", "add", 5.0, now=1330.0)
    assert rep.score < -60 and rep.block_until == 1320.0
    assert not asyncio.run(e.decide("198.51.100.1", now=1331.0)).blocked
    # A score set at or below the threshold (an operator, a model) with no block served yet refuses.
    e.store.update_now("203.0.113.9", "set", -80.0, now=1400.0)
    assert asyncio.run(e.decide("203.0.113.9", now=1400.0)).blocked
    e.store.update_now("198.51.100.1", "set", -45.0, now=1400.0)
    d = asyncio.run(e.decide("198.51.100.1", now=1400.0))
    assert not d.blocked and d.tier.name == "low" and d.tier.streams == 1 and d.tier.session_seconds == 30


def test_nothing_matched_writes_nothing() -> None:
    e = _engine()
    v, rep = asyncio.run(e.observe("198.51.100.2", {"reconnects_10s": 1}, now=1.0))
    assert v.delta == 0 and rep is None and len(e.store) == 0


def test_allow_listed_networks_are_scored_but_never_blocked() -> None:
    e = _engine(Config(reputation=ReputationConfig(allow_networks=["10.0.0.0/8"])))
    for i in range(5):
        asyncio.run(e.observe("10.1.1.1", FLAP, now=float(i)))
    d = asyncio.run(e.decide("10.1.1.1", now=5.0))
    assert d.reputation.score < -99.9 and not d.blocked and d.allowed_by == "network"
    assert d.reputation.block_until == 0
    crawler = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    for i in range(5):
        asyncio.run(e.observe("66.249.66.1", FLAP, ua=crawler, now=float(i)))
    assert not asyncio.run(e.decide("66.249.66.1", ua=crawler, now=5.0)).blocked
    for i in range(5):  # same UA from an address Google does not use: blocked like anyone
        asyncio.run(e.observe("192.0.2.66", FLAP, ua=crawler, now=float(i)))
    assert asyncio.run(e.decide("192.0.2.66", ua=crawler, now=5.0)).blocked


def test_known_bad_ja3_is_penalised(corpus: Path) -> None:
    cfg = Config(reputation=ReputationConfig(bad_ja3_path=str(corpus / "tls" / "sslbl-ja3_fingerprints.csv")))
    e = _engine(cfg)
    v, rep = asyncio.run(e.observe("203.0.113.5", {}, ja3="b386946a5a44d1ddcc843bc75336dfce", now=1.0))
    assert v.reasons == ("bad_ja3",) and rep is not None and rep.score == -40
    v, rep = asyncio.run(e.observe("203.0.113.5", STORM, ja3="b386946a5a44d1ddcc843bc75336dfce", now=2.0))
    assert rep is not None and rep.blocked(2.0) and rep.reasons[-1] == "reconnect_storm+bad_ja3"


def test_trusted_tier_from_good_score() -> None:
    e = _engine()
    e.store.update_now("192.0.2.1", "set", 75.0, "model", now=0.0)
    d = asyncio.run(e.decide("192.0.2.1", now=0.0))
    assert d.tier.name == "trusted" and d.tier.streams == 8 and d.tier.idle_seconds == 900 and d.allow
