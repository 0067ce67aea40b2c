"""GeoIP/ASN lookups (MaxMind test databases from the corpus and databases written here) and the dynamic threshold."""

from __future__ import annotations

from pathlib import Path

import pytest
from stormguard.scoring.engine import ReputationEngine
from stormguard.scoring.geo import GeoLookup
from stormguard.scoring.stores import MemoryStore
from stormguard.scoring.threshold import DynamicThreshold, FailureWindow, HeatMap

from stormguard.config import Config, GeoipConfig, ThresholdConfig


def _write_dbs(tmp_path: Path) -> tuple[Path, Path]:
    mmdb_writer = pytest.importorskip("mmdb_writer")
    from netaddr import IPSet

    country = mmdb_writer.MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    country.insert_network(IPSet(["198.51.100.0/24"]), {"country": {"iso_code": "ZZ", "names": {"en": "Test"}}})
    country.insert_network(IPSet(["203.0.113.0/24"]), {"country": {"iso_code": "YY", "names": {"en": "Other"}}})
    asn = mmdb_writer.MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    asn.insert_network(IPSet(["198.51.100.0/25"]), {"autonomous_system_number": 64500,
                                                    "autonomous_system_organization": "Example AS"})
    paths = tmp_path / "country.mmdb", tmp_path / "asn.mmdb"
    country.to_db_file(str(paths[0]))
    asn.to_db_file(str(paths[1]))
    return paths


def test_corpus_databases(corpus: Path) -> None:
    geo = corpus / "geoip"
    for db in ("GeoIP2-Country-Test.mmdb", "GeoLite2-Country-Test.mmdb", "GeoIP2-City-Test.mmdb"):
        look = GeoLookup(geo / db, geo / "GeoLite2-ASN-Test.mmdb")
        assert look.lookup("2.125.160.217").country == "GB"
        assert look.lookup("81.2.69.161").country == "GB"
        assert look.lookup("216.160.83.57").country == "US"
        info = look.lookup("1.128.0.1")
        assert info.asn == 1221 and info.asn_org
        assert look.lookup("10.0.0.1").country is None and look.lookup("not an ip").asn is None
        look.close()


def test_written_databases(tmp_path: Path) -> None:
    country, asn = _write_dbs(tmp_path)
    look = GeoLookup.from_config(GeoipConfig(country_db=str(country), asn_db=str(asn)))
    assert look is not None
    assert look.lookup("198.51.100.7").country == "ZZ" and look.lookup("198.51.100.7").asn == 64500
    assert look.lookup("198.51.100.200").asn is None and look.lookup("203.0.113.1").country == "YY"


def test_without_databases_geoip_is_absent() -> None:
    assert GeoLookup.from_config(GeoipConfig()) is None
    dyn = DynamicThreshold(base=-50.0)
    dyn.record("198.51.100.7", bad=True, now=0.0)  # no GeoIP: nothing to heat, nothing breaks
    assert dyn.value() == -50.0


def test_failure_window_slides() -> None:
    w = FailureWindow(300)
    for t in range(100):
        w.record(failed=t % 4 == 0, now=1000.0 + t)
    assert w.rate(1099.0) == 0.25
    assert w.rate(1399.5) == 0.0 and w.total == 0  # everything older than 5 min is gone


def test_heat_needs_enough_events_and_cools() -> None:
    h = HeatMap(half_life=60, min_events=5)
    for _ in range(4):
        h.record("ZZ", True, 0.0)
    assert h.heat("ZZ", 0.0) == 0.0  # too few events to call it an attack
    for _ in range(4):
        h.record("ZZ", False, 0.0)
    assert h.heat("ZZ", 0.0) == 0.5
    assert h.heat("ZZ", 600.0) == 0.0  # decayed below min_events


def test_threshold_formula_clamp_override_and_interval() -> None:
    cfg = ThresholdConfig(min_threshold=-80, max_threshold=-20)
    dyn = DynamicThreshold(cfg, base=-50.0)
    assert dyn.compute(0.0, 0.0) == -50.0
    assert dyn.compute(0.4, 0.0) == pytest.approx(-40.0)  # 1 - 0.5*0.4 = 0.8
    assert dyn.compute(0.0, 0.5) == pytest.approx(-70.0)  # 1 + 0.8*0.5 = 1.4
    assert dyn.compute(1.0, 1.0) == -65.0 and dyn.compute(0.0, 1.0) == -80.0  # clamped
    for i in range(10):
        dyn.record("x", failed=True, now=100.0 + i)
    assert dyn.fail_rate == 1.0 and dyn.value() == -25.0  # ticked at the first record
    for i in range(30):
        dyn.record("x", failed=False, now=110.0 + i * 0.1)
    assert dyn.value() == -25.0  # not yet 30 s since the last tick
    dyn.record("x", failed=False, now=131.0)
    assert dyn.value() == pytest.approx(-50 * (1 - 0.5 * 10 / 41))
    assert DynamicThreshold(ThresholdConfig(override=-33.0)).value("ZZ", 1) == -33.0


def test_engine_uses_geo_heat(tmp_path: Path) -> None:
    country, asn = _write_dbs(tmp_path)
    geo = GeoLookup(country, asn)
    dyn = DynamicThreshold(ThresholdConfig(heat_weight=-0.6, min_threshold=-80, max_threshold=-10), base=-50.0,
                           geo=geo)
    for i in range(20):
        dyn.record(f"198.51.100.{i}", bad=True, now=float(i))
        dyn.record(f"203.0.113.{i}", bad=False, now=float(i))
    dyn.tick(40.0)
    engine = ReputationEngine(MemoryStore(), Config(), threshold=dyn)
    assert engine.block_score(ip="198.51.100.99") == pytest.approx(-20.0)  # hot origin, heat 1
    assert engine.block_score(ip="203.0.113.99") == -50.0
    engine.store.update_now("198.51.100.99", "set", -30.0, now=50.0)
    engine.store.update_now("203.0.113.99", "set", -30.0, now=50.0)
    import asyncio

    hot = asyncio.run(engine.decide("198.51.100.99", now=50.0))
    cold = asyncio.run(engine.decide("203.0.113.99", now=50.0))
    assert hot.blocked and not hot.allow and hot.retry_ms == 300_000
    assert not cold.blocked and cold.tier.name == "low"
