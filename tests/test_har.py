"""HAR reader: one record per entry, header names in the HAR's order, pseudo-headers kept out of them."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from stormguard.features.http.headers import header_entropy, header_order_fingerprint
from stormguard.features.logs.har import normalise_http_version, read_har

from stormguard.report import ReplayStats
from stormguard.schema import records_frame


def entry(**over: object) -> dict:
    base = {
        "startedDateTime": "2016-01-24T15:52:57.513+01:00", "time": 569,
        "request": {"method": "GET", "url": "https://www.example.com:8443/a/b?x=1", "httpVersion": "h2",
                    "headers": [{"name": ":method", "value": "GET"}, {"name": ":authority", "value": "e"},
                                {"name": "accept", "value": "*/*"}, {"name": "user-agent", "value": "UA/1"},
                                {"name": "referer", "value": "https://r/"}]},
        "response": {"status": 200, "bodySize": 123, "content": {"size": 456}},
        "serverIPAddress": "[2001:db8::1]", "connection": "42",
    }
    base.update(over)
    return base


def write_har(tmp_path: Path, entries: list) -> Path:
    path = tmp_path / "x.har"
    path.write_text(json.dumps({"log": {"version": "1.2", "entries": entries}}), encoding="utf-8")
    return path


@pytest.mark.parametrize(("raw", "expected"), [
    ("HTTP/1.1", "HTTP/1.1"), ("http/1.1", "HTTP/1.1"), ("1.1", "HTTP/1.1"), ("HTTP/1.0", "HTTP/1.0"),
    ("h2", "HTTP/2"), ("HTTP/2.0", "HTTP/2"), ("h3", "HTTP/3"), ("spdy/3.1", "SPDY/3.1"),
    ("", None), ("ori", None), ("me:", None), (None, None),
])
def test_normalise_http_version(raw: str | None, expected: str | None) -> None:
    assert normalise_http_version(raw) == expected


def test_synthetic_entry(tmp_path: Path) -> None:
    stats = ReplayStats()
    (rec,) = list(read_har(write_har(tmp_path, [entry()]), stats))
    ts = datetime.fromisoformat("2016-01-24T15:52:57.513+01:00").timestamp()
    assert rec["ts"] == ts and rec["ts_end"] == pytest.approx(ts + 0.569)
    assert (rec["method"], rec["path"], rec["http_version"], rec["status"]) == ("GET", "/a/b?x=1", "HTTP/2", 200)
    assert rec["header_names"] == "accept,user-agent,referer"
    assert rec["header_entropy"] == header_entropy(["accept", "user-agent", "referer"])
    assert rec["header_order"] == header_order_fingerprint(["accept", "user-agent", "referer"])
    assert rec["user_agent"] == "UA/1" and rec["referer"] == "https://r/"
    assert rec["dst_ip"] == "2001:db8::1" and rec["dst_port"] == 8443 and rec["bytes_out"] == 123
    assert "pseudo=:method,:authority" in rec["note"] and "conn=42" in rec["note"]
    assert rec["source_kind"] == "har" and rec["line"] == 1
    assert stats.http_requests == 1 and not stats.problems
    records_frame([rec])


def test_bad_entries_are_reported_not_raised(tmp_path: Path) -> None:
    entries = [entry(), "nonsense", entry(startedDateTime="yesterday"), entry(time=-1),
               entry(request={"method": "GET", "url": "http://h/", "httpVersion": "ori"}, response={"status": 0})]
    stats = ReplayStats()
    recs = list(read_har(write_har(tmp_path, entries), stats))
    assert [r["line"] for r in recs] == [1, 4, 5]
    assert recs[1]["ts_end"] == recs[1]["ts"] and "no usable time" in recs[1]["note"]
    last = recs[2]
    assert last["http_version"] is None and "unknown httpVersion" in last["note"]
    assert last["status"] is None and last["outcome"] == "no-response" and last["header_names"] is None
    assert last["dst_port"] == 80
    assert stats.skipped["har entry invalid (skipped)"] == 2
    assert {p.line for p in stats.problems} == {2, 3}


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.har"
    path.write_text('{"log": {"entries": [', encoding="utf-8")
    stats = ReplayStats()
    assert list(read_har(path, stats)) == []
    assert stats.skipped["har file unreadable"] == 1
    path.write_text('{"nothing": 1}', encoding="utf-8")
    assert list(read_har(path, stats)) == []
    assert stats.skipped["har file unreadable"] == 2


def test_progress_reports_file_size(tmp_path: Path) -> None:
    path = write_har(tmp_path, [entry(), entry()])
    seen: list[int] = []
    assert len(list(read_har(path, ReplayStats(), progress=seen.append))) == 2
    assert sum(seen) == path.stat().st_size


def test_corpus_hars(corpus: Path) -> None:
    files = sorted((corpus / "har").glob("*.har"))
    assert len(files) == 10
    total = 0
    for path in files:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = doc["log"]["entries"]
        stats = ReplayStats()
        recs = list(read_har(path, stats))
        assert len(recs) == len(entries), path.name
        total += len(recs)
        frame = records_frame(recs)
        assert frame["ts"].notna().all() and (frame["ts_end"] >= frame["ts"]).all()
        for rec, ent in zip(recs, entries, strict=True):
            listed = [h["name"] for h in ent["request"]["headers"] if not h["name"].startswith(":")]
            assert rec["header_names"] == ",".join(listed)
            assert rec["ts_end"] == pytest.approx(rec["ts"] + ent["time"] / 1000)
    assert total == 1143


def test_corpus_h2_chrome_pseudo_headers(corpus: Path) -> None:
    recs = list(read_har(corpus / "har" / "pagexray-http2-chrome.har", ReplayStats()))
    assert all(r["http_version"] == "HTTP/2" for r in recs)
    assert all(":" not in (r["header_names"] or "") for r in recs)
    assert all("pseudo=:authority,:method,:path,:scheme" in r["note"] for r in recs)
    assert recs[0]["header_order"].startswith("l")
