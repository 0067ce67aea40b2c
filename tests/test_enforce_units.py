"""The enforcement parts without external services: ranges, durations, the decision importer on a real memory
store, the on-disk queue, the nftables plan and script, blocklist files, and what counts as blocked."""

from __future__ import annotations

import asyncio
import json

import pytest
from stormguard.scoring.enforce.blocklist import render, write_atomic
from stormguard.scoring.enforce.blocks import Block, current_blocks, source_of
from stormguard.scoring.enforce.crowdsec_export import alert_for
from stormguard.scoring.enforce.crowdsec_import import DecisionImporter
from stormguard.scoring.enforce.lapi import LapiError, MachineCredentials, go_duration, parse_duration
from stormguard.scoring.enforce.nftables import NftSets, parse_set
from stormguard.scoring.enforce.ranges import RangeTable
from stormguard.scoring.enforce.spool import Spool
from stormguard.scoring.engine import ReputationEngine
from stormguard.scoring.stores import MemoryStore

NOW = 1_000_000.0


def run(coro):
    return asyncio.run(coro)


def test_go_durations_parse_as_the_local_api_writes_them():
    assert parse_duration("3h59m58.5s") == pytest.approx(4 * 3600 - 1.5)
    assert parse_duration("-9.412339ms") == pytest.approx(-0.009412339)
    assert parse_duration("90s") == 90.0
    assert parse_duration("1m0.5s") == 60.5
    for bad in ("", "5", "h", "5x", "1h 2m", None):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert go_duration(299.6) == "300s" and go_duration(0.2) == "1s"


def test_ranges_match_most_specific_without_expanding():
    t = RangeTable(clock=lambda: NOW)
    t.add("10.0.0.0/8", "captcha", "1", NOW + 200, "crowdsec:a")
    t.add("10.1.0.0/16", "ban", "2", NOW + 100, "crowdsec:b")
    t.add("2001:db8::/32", "ban", "3", NOW + 100, "crowdsec:c")
    assert len(t) == 3
    assert t.match("10.1.2.3").kind == "ban"
    assert t.match("10.2.2.3").kind == "captcha"
    assert t.match("::ffff:10.1.0.9").kind == "ban"            # IPv4-mapped IPv6 is the IPv4 address
    assert t.match("2001:db8:1::5").reason == "crowdsec:c"
    assert t.match("11.0.0.1") is None and t.match("not-an-ip") is None
    assert t.match("10.1.2.3", now=NOW + 100) is not None and t.match("10.1.2.3", now=NOW + 100).kind == "captcha"
    assert len(t) == 2                                          # the ban ran out and went on lookup


def test_a_range_ends_with_its_last_decision():
    t = RangeTable(clock=lambda: NOW)
    t.add("192.0.2.0/24", "ban", "1", NOW + 50, "crowdsec:a")
    t.add("192.0.2.0/24", "ban", "2", NOW + 500, "crowdsec:b")
    assert t.match("192.0.2.7").until == NOW + 500
    assert t.remove("192.0.2.0/24", "ban", "2")
    assert t.match("192.0.2.7").until == NOW + 50
    assert t.remove("192.0.2.0/24", "ban", "1") and not t and t.match("192.0.2.7") is None
    assert not t.remove("192.0.2.0/24", "ban", "1")


def decision(did, value, *, scope="Ip", kind="ban", duration="1h", scenario="crowdsecurity/ssh-bf"):
    return {"id": did, "origin": "crowdsec", "scenario": scenario, "scope": scope, "type": kind, "value": value,
            "duration": duration}


def importer():
    store = MemoryStore()
    return store, DecisionImporter(store, RangeTable(clock=lambda: NOW), clock=lambda: NOW)


def test_bans_block_in_the_store_and_deletions_lift_them():
    store, imp = importer()
    n = run(imp.apply([decision(1, "198.51.100.7"), decision(2, "198.51.100.7", duration="2h",
                                                               scenario="crowdsecurity/http-probing")], [], NOW))
    assert n == 2
    rep = store.get_now("198.51.100.7", NOW)
    assert rep.block_until == NOW + 7200 and rep.reasons[-1] == "crowdsec:crowdsecurity/http-probing"
    run(imp.apply([], [decision(2, "198.51.100.7", duration="-1ms")], NOW + 1))
    assert store.get_now("198.51.100.7", NOW + 1).block_until == NOW + 3600     # the other ban holds
    run(imp.apply([], [decision(1, "198.51.100.7", duration="-1ms")], NOW + 2))
    rep = store.get_now("198.51.100.7", NOW + 2)
    assert not rep.blocked(NOW + 2) and rep.reasons[-1] == "crowdsec:deleted"
    assert imp.stats.lifted == 1


def test_a_deletion_does_not_lift_a_block_stormguard_set_since():
    store, imp = importer()
    run(imp.apply([decision(1, "198.51.100.8")], [], NOW))
    run(store.block("198.51.100.8", NOW + 9000, "reconnect_storm", now=NOW + 1))
    run(imp.apply([], [decision(1, "198.51.100.8")], NOW + 2))
    assert store.get_now("198.51.100.8", NOW + 2).block_until == NOW + 9000


def test_ranges_captchas_and_what_is_skipped():
    store, imp = importer()
    run(imp.apply([decision(1, "203.0.113.0/24", scope="Range"),
                   decision(2, "192.0.2.44", kind="captcha"),
                   decision(3, "FR", scope="Country"),
                   decision(4, "198.51.100.9", kind="throttle"),
                   decision(5, "not-an-ip"),
                   decision(6, "192.0.2.99", scenario="stormguard/model"),
                   {"id": 7, "scope": "Ip"},
                   "garbage",
                   decision(8, "192.0.2.50", duration="-5s")], [], NOW))
    assert run(store.count()) == 0                              # no per-address key for the range
    assert imp.ranges.match("203.0.113.200").kind == "ban"
    assert imp.ranges.match("192.0.2.44").kind == "captcha"
    assert imp.stats.skipped == {"scope:country": 1, "type:throttle": 1, "bad_value": 1, "own": 1, "malformed": 2,
                                 "expired": 1}


def test_a_startup_pull_lifts_what_was_deleted_while_away():
    store, imp = importer()
    run(imp.apply([decision(1, "198.51.100.10"), decision(2, "203.0.113.0/24", scope="Range"),
                   decision(3, "198.51.100.11")], [], NOW, startup=True))
    run(imp.apply([decision(3, "198.51.100.11")], [], NOW + 5, startup=True))
    assert not store.get_now("198.51.100.10", NOW + 5).blocked(NOW + 5)
    assert store.get_now("198.51.100.11", NOW + 5).blocked(NOW + 5)
    assert imp.ranges.match("203.0.113.1", NOW + 5) is None


def test_current_blocks_name_their_source_and_include_score_blocks():
    store = MemoryStore()
    engine = ReputationEngine(store)
    run(store.block("192.0.2.1", NOW + 100, "manual-block", now=NOW))
    run(store.add("192.0.2.2", -60, "reconnect_storm", now=NOW, block_score=-50, block_seconds=300))
    run(store.block("192.0.2.3", NOW + 50, "crowdsec:crowdsecurity/ssh-bf", now=NOW))
    run(store.set("2001:db8::9", -80, "model", now=NOW))         # the model's verdict: refused by score
    run(store.set("192.0.2.4", -10, "model", now=NOW))          # low, not blocked
    got = {b.key: b for b in run(current_blocks(engine, NOW + 1))}
    assert set(got) == {"192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::9"}
    assert [got[k].source for k in ("192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::9")] == \
        ["operator", "rules", "crowdsec", "model"]
    assert got["2001:db8::9"].until == NOW + 1 + engine.block_seconds
    assert source_of("reconnect_storm+short_disconnects", frozenset({"reconnect_storm", "short_disconnects"})) \
        == "rules"


def test_the_alert_carries_one_ban_for_the_remaining_time():
    a = alert_for(Block("192.0.2.1", NOW + 299.7, "reconnect_storm", "rules"), NOW, "host1")
    assert a["scenario"] == "stormguard/rules" and a["source"]["value"] == "192.0.2.1"
    assert a["decisions"] == [{"origin": "stormguard", "type": "ban", "scope": "Ip", "value": "192.0.2.1",
                               "duration": "300s", "scenario": "stormguard/rules"}]
    json.dumps(a)


def test_the_spool_coalesces_bounds_and_survives_reopening(tmp_path):
    path = tmp_path / "q" / "queue.sqlite"
    q = Spool(path, max_rows=3)
    q.put([("a", NOW + 10, "r", "rules"), ("b", NOW + 20, "r", "rules")], NOW)
    q.put([("a", NOW + 30, "r2", "operator")], NOW + 1)              # replaces a's row
    assert len(q) == 2
    q.put([("c", NOW + 40, "r", "model"), ("d", NOW + 50, "r", "model")], NOW + 2)
    assert len(q) == 3 and q.dropped == 1                           # b ended soonest: dropped, counted
    rows = q.peek(10)
    assert [r[0] for r in rows] == ["a", "c", "d"]
    q.put([("a", NOW + 60, "r3", "operator")], NOW + 3)             # queued again while "in flight"
    q.done(rows)
    assert [r[0] for r in q.peek(10)] == ["a"]                      # the newer row stays
    q.close()
    q = Spool(path, max_rows=3)
    assert q.peek(10)[0][1] == NOW + 60
    assert q.expire(NOW + 61) == 1 and len(q) == 0
    q.close()
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(OSError, match="bad.sqlite"):
        Spool(bad)


def test_nftables_plan_adds_extends_and_deletes():
    nft = NftSets("sg")
    blocks = [Block("192.0.2.1", NOW + 300, "r", "rules"), Block("192.0.2.2", NOW + 600, "r", "rules"),
              Block("2001:db8::1", NOW + 60.2, "r", "operator"), Block("::ffff:192.0.2.5", NOW + 30, "r", "model"),
              Block("session-abc", NOW + 30, "r", "rules"), Block("192.0.2.9", NOW - 1, "r", "rules")]
    current = {"blocked4": {"192.0.2.1": 299.0, "192.0.2.2": 100.0, "192.0.2.77": 50.0}, "blocked6": {}}
    p = nft.plan(blocks, current, NOW)
    assert p.add["blocked4"] == [("192.0.2.2", 600), ("192.0.2.5", 30)]
    assert p.delete["blocked4"] == ["192.0.2.2", "192.0.2.77"]
    assert p.add["blocked6"] == [("2001:db8::1", 61)]
    text = nft.elements(p)
    assert "delete element inet sg blocked4 { 192.0.2.2, 192.0.2.77 }" in text
    assert "add element inet sg blocked4 { 192.0.2.2 timeout 600s, 192.0.2.5 timeout 30s }" in text
    full = nft.script(blocks, NOW)
    assert full.startswith("add table inet sg\n") and "ip saddr @blocked4 drop" in full
    assert "chain" not in NftSets("sg", chain=False).declare()
    with pytest.raises(ValueError):
        NftSets("bad name;")


def test_nft_json_listing_parses():
    text = json.dumps({"nftables": [{"metainfo": {}}, {"set": {"name": "blocked4", "elem": [
        {"elem": {"val": "192.0.2.1", "timeout": 300, "expires": 120}}, "192.0.2.3"]}}]})
    assert parse_set(text) == {"192.0.2.1": 120.0, "192.0.2.3": 0.0}


def test_blocklists_in_three_formats(tmp_path):
    blocks = [Block("192.0.2.1", NOW + 10, "r", "rules"), Block("2001:db8::1", NOW + 10, "r", "rules"),
              Block("session-x", NOW + 10, "r", "rules"), Block("192.0.2.2", NOW - 1, "r", "rules")]
    plain = render(blocks, "plain", NOW)
    assert plain.splitlines()[1:] == ["192.0.2.1", "2001:db8::1"]
    assert render(blocks, "nginx-geo", NOW).splitlines()[1:] == ["192.0.2.1 1;", "2001:db8::1 1;"]
    assert render(blocks, "haproxy-map", NOW).splitlines()[1:] == ["192.0.2.1 blocked", "2001:db8::1 blocked"]
    with pytest.raises(ValueError):
        render(blocks, "csv", NOW)
    out = tmp_path / "list.txt"
    write_atomic(out, plain)
    assert out.read_text() == plain and [p.name for p in tmp_path.iterdir()] == ["list.txt"]


def test_machine_credentials_file_errors_name_the_file(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("url: http://127.0.0.1:8080\nlogin: m1\npassword: p\n")
    assert MachineCredentials.from_file(good) == MachineCredentials("http://127.0.0.1:8080", "m1", "p")
    bad = tmp_path / "bad.yaml"
    bad.write_text("url: http://x\nlogin: m1\n")
    with pytest.raises(LapiError, match=r"bad.yaml: missing password"):
        MachineCredentials.from_file(bad)


def test_full_pulls_repeat_the_active_set_without_rewriting_the_store():
    store, imp = importer()
    imp.full_pulls = True
    active = [decision(1, "198.51.100.40"), decision(2, "203.0.113.0/24", scope="Range")]
    assert run(imp.apply(active, [], NOW, startup=True)) == 2
    active[0]["duration"] = "59m58s"                          # the same decisions, two seconds later
    assert run(imp.apply(active, [], NOW + 2, startup=True)) == 1   # the range entry is refreshed, no store write
    assert run(imp.apply(active[1:], [], NOW + 4, startup=True)) == 2  # gone from the set: lifted
    assert not store.get_now("198.51.100.40", NOW + 4).blocked(NOW + 4)
