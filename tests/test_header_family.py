"""Header set and order vs the browser family the User-Agent claims (features/http/families.py).

The rules are learned from the corpus' real browser HARs (models/header_families.py, data/make_header_families.py);
they are checked here on held-out HAR files, on real non-browser header lists (the project's own loopback sample:
curl, Python urllib, python-requests, openssl s_client, curl with a Chrome UA) and on a modern headless Chromium page
load from the same sample, and the per-client feature is checked to be the same in batch and on the live path.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from stormguard.features.clients.online import OnlineClientFeatures
from stormguard.features.clients.windows import client_features
from stormguard.features.http.families import check_names, claimed_family, header_family_verdict
from stormguard.features.replay import read_file
from stormguard.models.header_families import learn, learn_from_files, read_requests, table_source

from stormguard.report import ReplayStats

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample-access.jsonl"
TABLE = ROOT / "features" / "http" / "header_family_table.py"

CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
SAFARI = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
          "Safari/605.1.15")
# real wire orders: Firefox 43 (corpus HAR), Chromium 156 (data/sample-access.jsonl, 127.0.0.1)
FIREFOX_ORDER = ["Host", "User-Agent", "Accept", "Accept-Language", "Accept-Encoding", "Referer", "Connection"]
CHROMIUM_ORDER = ["Host", "Connection", "sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform",
                  "Upgrade-Insecure-Requests", "User-Agent", "Accept", "Sec-Fetch-Site", "Sec-Fetch-Mode",
                  "Sec-Fetch-User", "Sec-Fetch-Dest", "Accept-Encoding", "Accept-Language"]


def _hars(corpus: Path) -> list[Path]:
    hars = sorted((corpus / "har").glob("*.har"))
    assert hars, f"no HAR files in {corpus / 'har'}"
    return hars


@pytest.mark.corpus
def test_committed_table_is_what_the_corpus_teaches(corpus: Path) -> None:
    """The rules are data derived by the script, not hand-edited: relearning gives the committed module."""
    hars = _hars(corpus)
    table, summary = learn_from_files(hars)
    assert set(table) == {"chromium", "firefox"}  # the corpus holds no Safari HAR: Safari claims stay unknown
    assert TABLE.read_text(encoding="utf-8") == table_source(table, summary, [f"har/{p.name}" for p in hars]), \
        "features/http/header_family_table.py is stale: rerun python data/make_header_families.py CORPUS"
    for rules in table.values():  # small and general: a handful of names and pairs, from two or more sources
        assert len(rules["sources"]) >= 2 and len(rules["required"]) <= 8 and len(rules["before"]) <= 30
    assert ("accept-encoding", "accept-language") in table["chromium"]["before"]
    assert ("accept-language", "accept-encoding") in table["firefox"]["before"]
    # Chrome 44 and 63 disagree on Accept vs User-Agent: no rule either way
    assert not {("accept", "user-agent"), ("user-agent", "accept")} & set(table["chromium"]["before"])


@pytest.mark.corpus
def test_held_out_browser_har_is_consistent_and_a_swapped_ua_is_flagged(corpus: Path) -> None:
    """Leave-one-HAR-source-out: rules learned without a file judge its requests consistent, and the same requests
    under the other family's UA inconsistent."""
    requests, skipped = read_requests(_hars(corpus))
    assert not skipped, skipped
    other = {"chromium": "firefox", "firefox": "chromium"}
    held_sources = sorted({r.source for r in requests if r.usable})
    assert len(held_sources) >= 4
    for source in held_sources:
        rules = learn([r for r in requests if r.source != source])
        held = [r for r in requests if r.source == source and r.usable]
        own = [check_names(r.names, str(r.family), False, rules)[0] for r in held]
        swapped = [check_names(r.names, other[str(r.family)], False, rules)[0] for r in held]
        assert own.count("consistent") >= 0.99 * len(held), (source, own.count("inconsistent"), len(held))
        assert swapped.count("inconsistent") == len(held), source


def test_modern_chromium_is_consistent_and_reordered_lists_are_flagged() -> None:
    # Chromium 156 (a browser 90+ versions newer than the HARs; sec-ch-ua/sec-fetch-* are ignored, not required)
    assert header_family_verdict(CHROMIUM_ORDER, CHROME) == ("consistent", "")
    assert header_family_verdict(FIREFOX_ORDER, FIREFOX) == ("consistent", "")
    # cross-family: a Firefox UA over Chromium's order, and the reverse
    assert header_family_verdict(CHROMIUM_ORDER, FIREFOX)[0] == "inconsistent"
    assert header_family_verdict(FIREFOX_ORDER, CHROME)[0] == "inconsistent"
    # one pair swapped in an otherwise real order is enough
    swapped = list(CHROMIUM_ORDER)
    i, j = swapped.index("Accept-Encoding"), swapped.index("Accept-Language")
    swapped[i], swapped[j] = swapped[j], swapped[i]
    verdict, reason = header_family_verdict(swapped, CHROME)
    assert verdict == "inconsistent" and reason == "chromium sends accept-encoding before accept-language"
    # a required header dropped
    assert header_family_verdict([n for n in CHROMIUM_ORDER if n != "Accept-Language"], CHROME) == (
        "inconsistent", "chromium always sends accept-language")
    # HTTP/2 carries no Host/Connection; lower case as ASGI and h2 deliver it
    h2 = [n.lower() for n in CHROMIUM_ORDER if n not in ("Host", "Connection")]
    assert header_family_verdict(h2, CHROME, "HTTP/2") == ("consistent", "")
    assert header_family_verdict(h2, CHROME, "HTTP/1.1")[0] == "inconsistent"


def test_script_header_lists_under_browser_uas_are_flagged() -> None:
    """Real non-browser header lists (the loopback sample) under Chrome and Firefox UAs are inconsistent; the real
    curl-with-a-Chrome-UA client of the sample is flagged; the real headless Chromium order passes as Chrome."""
    requests, _ = read_requests([SAMPLE])
    scripts = {r.names for r in requests if r.family is None and "Chrome/" not in (r.ua or "")}
    assert {("host", "user-agent", "accept"), ("host", "user-agent", "accept-encoding", "accept", "connection"),
            ("host", "accept-encoding", "user-agent", "accept")} <= scripts
    for names in scripts:
        for ua in (CHROME, FIREFOX):
            assert header_family_verdict(list(names), ua)[0] == "inconsistent", (names, ua)
    liars = [r for r in requests if r.family is not None]
    assert liars and all(r.ua and "Chrome/124" in r.ua for r in liars)  # 127.0.0.6: curl with a Chrome UA
    assert all(header_family_verdict(list(r.names), r.ua)[0] == "inconsistent" for r in liars)
    headless = [r for r in requests if r.ua and "HeadlessChrome" in r.ua]
    assert headless and all(claimed_family(r.ua) is None for r in headless)  # it declares itself: no claim
    assert all(check_names(r.names, "chromium")[0] == "consistent" for r in headless)


def test_absent_headers_are_unknown_never_inconsistent() -> None:
    assert header_family_verdict(None, CHROME) == ("unknown", "header names not recorded")
    assert header_family_verdict(["Host", "User-Agent", "Accept"], "curl/8.4.0")[0] == "unknown"
    assert header_family_verdict(["Host", "User-Agent", "Accept"], None)[0] == "unknown"
    assert header_family_verdict(["Host", "User-Agent", "Accept"], SAFARI)[0] == "unknown"  # no Safari rules
    ios_chrome = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                  "CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1")
    assert claimed_family(ios_chrome) == "safari"  # WebKit's network stack on iOS, whatever the brand
    # legacy Edge (EdgeHTML) sends Internet Explorer's order (a corpus capture shows it): no Chromium rules apply
    legacy_edge = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "Chrome/42.0.2311.135 Safari/537.36 Edge/12.10240")
    ie_order = ["Accept", "Referer", "Accept-Language", "User-Agent", "Accept-Encoding", "Host", "Connection"]
    assert header_family_verdict(ie_order, legacy_edge) == ("unknown", "no header rules for edgehtml")
    assert header_family_verdict(ie_order, legacy_edge.replace("Edge/12.10240", "Edg/124.0.0.0"))[0] == "inconsistent"
    # an access log records no header names: every client of the combined-format sample is unknown
    stats = ReplayStats()
    records = pd.DataFrame(list(read_file(ROOT / "data" / "sample-access.log", stats)))
    assert len(records) > 40 and records["user_agent"].notna().any()
    feats = client_features(records, window=None)
    lying = feats.set_index("key").loc["127.0.0.6"]
    assert lying["ua_browser_share"] == 1.0  # the UA claims Chrome, but no headers: unknown, not inconsistent
    assert (feats["header_family_checked"] == 0).all() and feats["header_family_mismatch_share"].isna().all()


def _jsonl_line(ts: float, ip: str, ua: str, names: list[str], version: str) -> str:
    headers = [[n, ua if n.lower() == "user-agent" else "x"] for n in names]
    protocol = "HTTP/2.0" if version == "2" else "HTTP/1.1"
    return json.dumps({"msec": ts, "remote_addr": ip, "remote_port": 40000, "server_addr": "127.0.0.1",
                       "server_port": 8000, "scheme": "http", "request": f"GET /events {protocol}",
                       "request_method": "GET", "request_uri": "/events", "server_protocol": protocol,
                       "status": 200, "body_bytes_sent": 10, "request_time": 0.001, "http_referer": None,
                       "http_user_agent": ua, "headers": headers})


def test_batch_and_live_give_the_same_feature(tmp_path: Path) -> None:
    """The same requests, once as a JSON-lines log read by the batch pipeline and once as the live server's
    connection events (ASGI headers: lower-case byte pairs) through the live rules, give equal features."""
    from stormguard.scoring.engine import ReputationEngine
    from stormguard.scoring.stores.memory import MemoryStore
    from stormguard.server.context import ClientIdentity, RequestContext
    from stormguard.server.live.rules import LiveReputation

    t0 = 1_700_000_100.0
    curl_order = ["Host", "User-Agent", "Accept"]
    h2 = [n.lower() for n in CHROMIUM_ORDER if n not in ("Host", "Connection")]
    plan = []  # (ts, ip, ua, header names, ASGI http_version)
    for i in range(4):
        plan.append((t0 + i, "10.9.0.1", CHROME, CHROMIUM_ORDER, "1.1"))    # a browser: consistent
        plan.append((t0 + i, "10.9.0.2", CHROME, curl_order, "1.1"))        # curl with a Chrome UA
        plan.append((t0 + i, "10.9.0.3", FIREFOX, FIREFOX_ORDER if i % 2 else CHROMIUM_ORDER, "1.1"))  # half wrong
        plan.append((t0 + i, "10.9.0.4", "curl/8.4.0", curl_order, "1.1"))  # honest curl: unknown
        plan.append((t0 + i, "10.9.0.5", CHROME, h2, "2"))                  # HTTP/2: no Host/Connection to send
    log = tmp_path / "access.jsonl"
    log.write_text("".join(_jsonl_line(*p) + "\n" for p in plan), encoding="utf-8")
    stats = ReplayStats()
    batch = client_features(pd.DataFrame(list(read_file(log, stats))), window=300.0).set_index("key")
    assert len(batch) == 5 and int(batch["n_conn"].sum()) == len(plan) and not stats.skipped

    times = iter([p[0] for p in plan])
    live = LiveReputation(ReputationEngine(MemoryStore()), features=OnlineClientFeatures("src_ip", 300.0),
                          clock=lambda: next(times, t0 + 10))
    for _ts, ip, ua, names, version in plan:  # as the gate layer annotates the context from the ASGI scope
        ctx = RequestContext(ClientIdentity(ip=ip))
        ctx.extra["headers"] = [(n.lower().encode("latin-1"), (ua if n.lower() == "user-agent" else "x").encode())
                                for n in names]
        ctx.extra["http_version"] = version
        live.observer("open", ctx, {})
    asyncio.run(live.flush())

    expected = {"10.9.0.1": (4, 0.0), "10.9.0.2": (4, 1.0), "10.9.0.3": (4, 0.5), "10.9.0.4": (0, math.nan),
                "10.9.0.5": (4, 0.0)}
    for ip, (checked, share) in expected.items():
        vec = live.features.vector(ip)
        row = batch.loc[ip]
        assert vec["header_family_checked"] == row["header_family_checked"] == checked, ip
        for value in (vec["header_family_mismatch_share"], row["header_family_mismatch_share"]):
            assert (math.isnan(value) and math.isnan(share)) or value == share, (ip, value)
        # the live side hands over a list of names: entropy and order fingerprint as in batch (case aside: the log
        # keeps the client's case, ASGI lower-cases, and the fingerprint's hash is case-independent)
        assert vec["header_entropy_mean"] == pytest.approx(row["header_entropy_mean"]), ip
        if ip != "10.9.0.3":  # (two orders, two requests each: the mode is a tie broken by the case prefix)
            assert vec["header_order_mode"].split("_")[1] == row["header_order_mode"].split("_")[1], ip


def test_named_rule_and_explanation() -> None:
    """The per-client share feeds a named rule with a reason string and the explanation of a score."""
    from stormguard.models.content import RULES, explain_signals, rule_evidence

    frame = pd.DataFrame({"key": ["a", "b", "c"], "n_conn": [4, 4, 4], "header_family_checked": [4, 4, 0],
                          "header_family_mismatch_share": [1.0, 0.25, math.nan]})
    nats, words = rule_evidence(frame)
    assert "header_family_lie" in RULES
    assert nats[0] == RULES["header_family_lie"][1] and "contradict the browser" in words[0]
    assert nats[1] == 0 and nats[2] == 0 and words[2] == ""
    explained = explain_signals(frame)
    assert "header_family_mismatch 1.00" in explained[0] and explained[1] == "" and explained[2] == ""


def test_a_browser_ua_no_longer_lifts_a_client_whose_headers_contradict_it() -> None:
    """The sample's curl with a Chrome UA (127.0.0.6) was the best-scored client of the sample under the default
    bundle (the browser UA lifted it); with the named rule its score drops below the honest curl's (127.0.0.2)."""
    from stormguard.models.train import load_model

    model = load_model(ROOT / "data" / "default-model.skops")
    model = model[0] if isinstance(model, tuple) else model
    records = pd.DataFrame(list(read_file(SAMPLE, ReplayStats())))
    scores = model.score_frame(client_features(records, window=300.0)).set_index("key")
    assert "headers contradict the browser its UA claims" in scores.loc["127.0.0.6", "reasons"]
    assert scores.loc["127.0.0.6", "score"] < scores.loc["127.0.0.2", "score"]
    assert "headers contradict" not in scores.loc["127.0.0.1", "reasons"]  # the real (headless) Chromium


def test_feature_files_written_before_the_columns_read_as_not_checked(tmp_path: Path) -> None:
    from stormguard.features.clients.windows import read_features, write_features

    records = pd.DataFrame(list(read_file(SAMPLE, ReplayStats())))
    old = client_features(records, window=None).drop(columns=["header_family_checked",
                                                              "header_family_mismatch_share"])
    for name in ("old.parquet", "old.csv"):
        write_features(old, tmp_path / name)
        back = read_features(tmp_path / name)
        assert (back["header_family_checked"] == 0).all() and back["header_family_mismatch_share"].isna().all()
    with pytest.raises(ValueError, match="missing column"):
        write_features(old.drop(columns=["n_conn"]), tmp_path / "broken.csv")
        read_features(tmp_path / "broken.csv")
