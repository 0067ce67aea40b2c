"""Rules as data, tiers and list-based evidence (JA3 lists from the corpus, UA/TLS mismatch, allow-lists)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stormguard.scoring.evidence import EvidenceBuilder, claims_browser, library_ja3s, load_ja3_list
from stormguard.scoring.rules import Rule, evaluate, rules_from_config
from stormguard.scoring.tiers import TierTable

from stormguard.config import Config, CrawlerConfig, ReputationConfig, RuleConfig

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")


def test_default_rules_match_design() -> None:
    rules = rules_from_config(ReputationConfig())
    assert evaluate(rules, {"reconnects_10s": 4, "short_lived_2s": 2}).delta == 0
    v = evaluate(rules, {"reconnects_10s": 5, "short_lived_2s": 3})
    assert v.delta == -50 and v.reasons == ("reconnect_storm", "short_disconnects")
    assert v.reason == "reconnect_storm+short_disconnects"


@given(st.integers(0, 50), st.integers(0, 50))
def test_deductions_follow_the_thresholds(reconnects: int, short: int) -> None:
    rules = rules_from_config(ReputationConfig())
    expected = (-20 if reconnects >= 5 else 0) + (-30 if short >= 3 else 0)
    assert evaluate(rules, {"reconnects_10s": reconnects, "short_lived_2s": short}).delta == expected


def test_missing_or_incomparable_evidence_never_matches() -> None:
    rule = Rule("r", "x", ">=", 3, -1)
    assert not rule.matches({}) and not rule.matches({"x": None}) and not rule.matches({"x": "abc"})
    assert Rule.from_config(RuleConfig("m", "asn", "in", [1, 2], -3)).matches({"asn": 2})
    with pytest.raises(ValueError, match="unknown operator"):
        Rule("bad", "x", "=~", 1, 0)


@pytest.mark.parametrize("score, tier", [
    (100, "trusted"), (60, "trusted"), (59.999, "neutral"), (0, "neutral"), (-20, "neutral"),
    (-20.001, "low"), (-49.9, "low"), (-100, "low"),
])
def test_tier_boundaries(score: float, tier: str) -> None:
    table = TierTable.from_config(ReputationConfig())
    assert table.for_score(score).name == tier
    assert table.by_name["trusted"].streams == 8 and table.by_name["blocked"].streams == 0


def test_sslbl_ja3_list_from_corpus(corpus: Path) -> None:
    bad = load_ja3_list(corpus / "tls" / "sslbl-ja3_fingerprints.csv")
    assert len(bad) == 97
    assert bad["b386946a5a44d1ddcc843bc75336dfce"] == "Dridex"
    cfg = ReputationConfig(bad_ja3_path=str(corpus / "tls" / "sslbl-ja3_fingerprints.csv"))
    ev = EvidenceBuilder.from_config(cfg).build({"reconnects_10s": 0}, ja3="B386946A5A44D1DDCC843BC75336DFCE")
    assert ev["ja3_bad"] is True
    v = evaluate(rules_from_config(cfg), ev)
    assert v.reasons == ("bad_ja3",) and v.delta == -40


def test_browser_ua_over_library_tls(corpus: Path) -> None:
    apps = load_ja3_list(corpus / "tls" / "salesforce-osx-nix-ja3.csv")
    assert len(apps) > 100
    lib = library_ja3s(apps)
    curl = next(h for h, a in apps.items() if a.startswith("curl"))
    chrome = next(h for h, a in apps.items() if a == "Google Chrome")
    assert curl in lib and chrome not in lib
    trisul = load_ja3_list(corpus / "tls" / "trisulnsm-ja3fingerprint.json")
    assert len(trisul) > 500
    builder = EvidenceBuilder(library_ja3=lib)
    assert builder.build(ua=CHROME, ja3=curl)["ua_tls_mismatch"] is True
    assert builder.build(ua="curl/8.0", ja3=curl)["ua_tls_mismatch"] is False
    assert builder.build(ua=CHROME, ja3=chrome)["ua_tls_mismatch"] is False
    assert claims_browser(CHROME) and not claims_browser("Googlebot/2.1") and not claims_browser(None)


def test_allow_lists_need_address_and_agent() -> None:
    cfg = ReputationConfig(allow_networks=["10.0.0.0/8", "2001:db8::/32"],
                           verified_crawlers=[CrawlerConfig("googlebot", "Googlebot", ["66.249.64.0/19"])])
    b = EvidenceBuilder.from_config(cfg)
    assert b.allowed("10.1.2.3") == "network" and b.allowed("2001:db8::1") == "network"
    assert b.allowed("66.249.66.1", "Mozilla/5.0 (compatible; Googlebot/2.1)") == "crawler:googlebot"
    assert b.allowed("1.2.3.4", "Mozilla/5.0 (compatible; Googlebot/2.1)") is None  # forged UA
    assert b.allowed("66.249.66.1", CHROME) is None
    assert b.allowed("not-an-ip") is None and b.allowed(None) is None


def test_config_defaults_load_without_lists() -> None:
    b = EvidenceBuilder.from_config(Config().reputation)
    assert b.build({"x": 1}, ja3="abc") == {"x": 1, "ja3_bad": False}
