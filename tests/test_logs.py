"""Access-log readers: combined/common/iliou/custom patterns and JSON lines; damaged lines never crash."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from stormguard.features.logs.reader import (
    LOG_FORMATS,
    detect_format,
    parse_clf_time,
    read_log,
    register_format,
)

from stormguard.report import ReplayStats
from stormguard.schema import RECORD_COLUMNS, records_frame

UA = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
COMBINED = [
    f'10.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /a?b=1 HTTP/1.1" 200 2326 "http://x/" "{UA}"',
    '10.0.0.2 - bob [10/Oct/2000:13:55:37 -0700] "POST /login HTTP/1.0" 302 - "-" "curl/8.0"',
    '10.0.0.3 - - [10/Oct/2000:13:55:38 -0700] "\\x16\\x03\\x01" 400 226 "-" "-"',
    '10.0.0.4 - - [10/Oct/2000:13:55:39 -0700] "GET /q\\"x HTTP/1.1" 200 5 "-" "say \\"hi\\""',
]


def write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_parse_clf_time_matches_strptime() -> None:
    for text in ("10/Oct/2000:13:55:36 -0700", "17/May/2015:10:05:03 +0000", "29/Feb/2024:23:59:59 +0530",
                 "01/Jan/1970:00:00:00 +0000"):
        expected = datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z").timestamp()
        assert parse_clf_time(text) == expected
    assert parse_clf_time("31/Feb/2024:00:00:00 +0000") is None
    assert parse_clf_time("10/Foo/2000:13:55:36 -0700") is None
    assert parse_clf_time("yesterday") is None


def test_combined_fields(tmp_path: Path) -> None:
    stats = ReplayStats()
    recs = list(read_log(write(tmp_path, "access.log", COMBINED), stats))
    assert len(recs) == 4 and stats.lines == 4 and stats.http_requests == 4
    first = recs[0]
    assert first["ts"] == 971211336.0 == first["ts_end"]  # 13:55:36 -0700 = 20:55:36 UTC
    assert (first["src_ip"], first["method"], first["path"], first["http_version"]) == (
        "10.0.0.1", "GET", "/a?b=1", "HTTP/1.1")
    assert (first["status"], first["bytes_out"], first["referer"], first["user_agent"]) == (200, 2326, "http://x/", UA)
    assert (first["source"], first["source_kind"], first["line"], first["transport"], first["proto"]) == (
        "access.log", "log-combined", 1, "tcp", "http")
    assert recs[1]["bytes_out"] == 0  # Apache %b: "-" means no body bytes
    assert recs[1]["referer"] is None
    assert recs[2]["method"] is None and recs[2]["status"] == 400 and "not HTTP" in recs[2]["note"]
    assert recs[3]["path"] == '/q"x' and recs[3]["user_agent"] == 'say "hi"'
    records_frame(recs)  # every key is a record column
    assert not stats.problems


def test_truncated_line_is_kept_without_the_field(tmp_path: Path) -> None:
    lines = [*COMBINED[:2], '10.0.0.9 - - [10/Oct/2000:13:56:00 -0700] "GET /x HTTP/1.1" 200 10 "-" "Mozilla/5.0 (comp',
             "complete garbage", "", COMBINED[0]]
    stats = ReplayStats()
    recs = list(read_log(write(tmp_path, "t.log", lines), stats, fmt="combined"))
    assert [r["line"] for r in recs] == [1, 2, 3, 6]
    kept = recs[2]
    assert kept["user_agent"] is None and kept["referer"] is None and kept["status"] == 200
    assert "user_agent dropped" in kept["note"]
    assert stats.skipped["log line truncated (kept, field dropped)"] == 1
    assert stats.skipped["log line unparseable (skipped)"] == 1
    where = {(p.file, p.line) for p in stats.problems}
    assert ("t.log", 3) in where and ("t.log", 4) in where
    assert stats.lines == 6


def test_common_and_autodetect(tmp_path: Path) -> None:
    common = ['1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.0" 200 12',
              '1.2.3.5 - - [10/Oct/2000:13:55:37 +0000] "GET /b HTTP/1.0" 404 -']
    path = write(tmp_path, "common.log", common)
    assert detect_format(path) == "common"
    recs = list(read_log(path, ReplayStats()))
    assert [r["source_kind"] for r in recs] == ["log-common"] * 2
    assert recs[0]["user_agent"] is None and recs[1]["status"] == 404
    assert detect_format(write(tmp_path, "c.log", COMBINED)) == "combined"


def test_iliou_format_session(tmp_path: Path) -> None:
    lines = ['- - [28/Oct/2019:09:40:31 +0000] "GET /css/main.css HTTP/1.1" 200 764 "https://h/" r0e98 "Mozilla/5.0"',
             '- - [28/Oct/2019:09:40:32 +0000] "GET / HTTP/1.0" 200 2045 "-" - "-"']
    path = write(tmp_path, "access_9.log", lines)
    assert detect_format(path) == "iliou"
    recs = list(read_log(path, ReplayStats()))
    assert recs[0]["session"] == "r0e98" and recs[0]["src_ip"] is None and recs[0]["user_agent"] == "Mozilla/5.0"
    assert recs[1]["session"] is None and recs[1]["user_agent"] is None
    assert LOG_FORMATS["combined_session"] is LOG_FORMATS["iliou"]


def test_custom_pattern_with_duration(tmp_path: Path) -> None:
    pattern = (r'^(?P<src_ip>\S+) \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d+) '
               r'(?P<duration>[\d.]+) "(?P<user_agent>[^"]*)"$')
    path = write(tmp_path, "custom.log", ['9.9.9.9 [10/Oct/2000:13:55:36 +0000] "GET /s HTTP/1.1" 200 1.5 "x/1"'])
    recs = list(read_log(path, ReplayStats(), fmt=pattern))
    assert recs[0]["ts_end"] - recs[0]["ts"] == 1.5 and recs[0]["source_kind"] == "log-custom"
    register_format("mine", pattern)
    assert list(read_log(path, ReplayStats(), fmt="mine"))[0]["source_kind"] == "log-mine"
    with pytest.raises(ValueError):
        list(read_log(path, ReplayStats(), fmt="nope"))


def test_jsonl_defaults_and_mapping(tmp_path: Path) -> None:
    rows = [
        {"time": "2024-01-02T03:04:05Z", "remote_addr": "1.1.1.1", "request": "GET /x HTTP/1.1", "status": 200,
         "body_bytes_sent": 10, "http_user_agent": "curl/8", "request_time": 0.25,
         "headers": [["Host", "h"], ["User-Agent", "curl/8"], ["Accept", "*/*"]]},
        {"@timestamp": 1704164645123, "client_ip": "1.1.1.2", "method": "GET", "path": "/y", "status": "404",
         "headers": {"Host": "h", "Accept": "*/*"}, "ja4": "t13d1516h2_a_b", "session": "s1"},
        {"ts": "17/May/2015:10:05:03 +0000", "source": {"ip": "1.1.1.3"}, "user_agent": {"original": "x"}},
        "not an object",
        {"no": "time"},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, "{broken json")
    path = write(tmp_path, "app.jsonl", lines)
    assert detect_format(path) == "jsonl"
    stats = ReplayStats()
    recs = list(read_log(path, stats))
    assert len(recs) == 3 and stats.lines == 6
    a, b, c = recs
    assert a["ts"] == datetime.fromisoformat("2024-01-02T03:04:05+00:00").timestamp()
    assert a["ts_end"] == a["ts"] + 0.25
    assert (a["src_ip"], a["method"], a["path"], a["http_version"], a["status"], a["bytes_out"]) == (
        "1.1.1.1", "GET", "/x", "HTTP/1.1", 200, 10)
    assert a["header_names"] == "Host,User-Agent,Accept" and a["header_entropy"] > 0 and a["header_order"]
    assert b["ts"] == pytest.approx(1704164645.123) and b["status"] == 404 and b["ja4"] == "t13d1516h2_a_b"
    assert b["header_names"] == "Host,Accept" and b["session"] == "s1"
    assert c["src_ip"] == "1.1.1.3" and c["user_agent"] == "x"  # ECS-style nested fields
    assert stats.skipped["jsonl line invalid (skipped)"] == 2
    assert stats.skipped["jsonl line without time (skipped)"] == 1
    records_frame(recs)
    mapped = list(read_log(path, ReplayStats(), fields={"src_ip": "client_ip"}))
    assert [r.get("src_ip") for r in mapped] == [None, "1.1.1.2", None]


def test_progress_reports_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, "p.log", COMBINED * 50)
    seen: list[int] = []
    list(read_log(path, ReplayStats(), progress=seen.append))
    assert sum(seen) == path.stat().st_size


def test_unrecognised_file_is_reported(tmp_path: Path) -> None:
    stats = ReplayStats()
    assert list(read_log(write(tmp_path, "x.txt", ["hello", "world"]), stats)) == []
    assert stats.skipped["log format not recognised"] == 1


def test_elastic_corpus_log(corpus: Path) -> None:
    path = corpus / "logs" / "elastic-examples-apache_logs.log"
    stats = ReplayStats()
    recs = list(read_log(path, stats))
    assert len(recs) == 10_000 and stats.lines == 10_000
    assert len({r["src_ip"] for r in recs}) == 1753  # the corpus README's client count
    assert recs[0]["ts"] == 1431857103.0  # 17/May/2015:10:05:03 +0000
    cut = recs[8898]
    assert cut["line"] == 8899 and cut["user_agent"] is None and "user_agent dropped" in cut["note"]
    assert [(p.file, p.line, p.field) for p in stats.problems] == [(path.name, 8899, "user_agent")]
    frame = records_frame(recs)
    assert list(frame.columns) == list(RECORD_COLUMNS)


def test_iliou_corpus_logs(corpus: Path) -> None:
    folder = corpus / "logs" / "iliou-phase1"
    labelled = set()
    for ann in (folder / "annotations").rglob("*"):
        if ann.is_file():
            labelled |= {ln.split()[0] for ln in ann.read_text(encoding="utf-8").splitlines() if ln.strip()}
    sessions = set()
    for log in sorted((folder / "data").rglob("*.log")):
        stats = ReplayStats()
        recs = list(read_log(log, stats))
        assert len(recs) == stats.lines and not stats.problems
        assert all(r["source_kind"] == "log-iliou" and r["src_ip"] is None for r in recs)
        sessions |= {r["session"] for r in recs if r["session"]}
    assert len(sessions & labelled) > 10


def test_bom_crlf_invalid_utf8_and_nginx_main_extras(tmp_path: Path) -> None:
    path = tmp_path / "nginx.log"
    path.write_bytes(b'\xef\xbb\xbf1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/\xff8"'
                     b' "5.6.7.8"\r\n1.2.3.4 - - [10/Oct/2000:13:55:37 +0000] "GET /x HTTP/1.1" 200 5 "-" "c/1"\r\n')
    assert detect_format(path) == "combined"
    stats = ReplayStats()
    recs = list(read_log(path, stats))
    assert [r["src_ip"] for r in recs] == ["1.2.3.4"] * 2
    assert recs[0]["user_agent"] == "curl/\ufffd8" and recs[1]["path"] == "/x"
    assert not stats.problems


def test_time_cache_agrees_with_parse_clf_time() -> None:
    """The split date/clock cache of the fast paths gives parse_clf_time's value, or defers to it, for every string."""
    from stormguard.features.logs.clftime import _TimeCache

    cache = _TimeCache()
    texts = ["17/May/2015:10:05:03 +0000", "10/Oct/2000:13:55:36 -0700", "29/Feb/2024:23:59:59 +0530",
             "31/Dec/1999:23:59:60 +1400", "17/May/2015:10:05:03.250 +0000", "29/Feb/2023:10:00:00 +0000",
             "17/May/2015:24:05:03 +0000", "17/May/2015:10:60:03 +0000", "17/May/2015:10:05:61 +0000",
             "17/May/2015 10:05:03 +0000", "17/May/2015:1:05:03 +0000", "17/May/2015:10:05:0\u0663 +0000",
             "17/May/2015:10:05:03 +00000", "17/May/2015:10:05:03 0000", "17/Foo/2015:10:05:03 +0000",
             "yesterday", "", "17/May/2015:10:05:03", "2015-05-17T10:05:03.123456"]
    for text in texts * 2:  # the second round is served from the caches
        assert cache(text) == parse_clf_time(text), text


def test_jsonl_non_finite_numbers_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "inf.jsonl", ['{"ts": 5, "status": Infinity, "bytes": NaN, "src_port": "inf", "dst_port": 443}'])
    stats = ReplayStats()
    (rec,) = read_log(path, stats)
    assert rec["ts"] == 5.0 and rec["dst_port"] == 443
    assert "status" not in rec and "bytes_out" not in rec and "src_port" not in rec


def test_lines_wrapped_in_quotes_are_unwrapped(tmp_path: Path) -> None:
    """A log whose every line is wrapped in an extra pair of double quotes (an export quirk, as in the published
    scanner logs of the corpus) is recognised as combined and read whole; well-formed lines beside them too."""
    from stormguard.features.logs.lines import unwrap_quoted
    from stormguard.features.sniff import sniff

    ua = "Mozilla/5.0 (Windows NT 6.1) Chrome/41.0"
    lines = [f'"10.0.0.{i} - - [22/Dec/2016:16:30:{i:02d} +0300] "GET /a{i}.php HTTP/1.1" 404 382 "-" "{ua}""'
             for i in range(1, 6)]
    lines.append(f'10.0.0.9 - - [22/Dec/2016:16:31:00 +0300] "GET / HTTP/1.1" 200 10 "-" "{ua}"')
    path = write(tmp_path, "wrapped.log", lines)
    assert sniff(path) == "log" and detect_format(path) == "combined"
    for fmt in ("auto", "combined"):
        stats = ReplayStats()
        rows = list(read_log(path, stats, fmt=fmt))
        assert not stats.skipped, fmt
        assert [r["src_ip"] for r in rows] == [f"10.0.0.{i}" for i in (1, 2, 3, 4, 5, 9)]
        assert {r["user_agent"] for r in rows} == {ua} and rows[0]["path"] == "/a1.php" and rows[0]["status"] == 404
    assert unwrap_quoted('"a""\n') == "a\"\n" and unwrap_quoted('""x""') is None and unwrap_quoted("plain") is None


@pytest.mark.corpus
def test_corpus_scanner_log_auto_detected(corpus: Path) -> None:
    stats = ReplayStats()
    rows = list(read_log(corpus / "abuse" / "seyyar-apache-http-logs" / "w3af.log", stats))
    assert len(rows) >= 3900 and not stats.skipped
    assert all(not str(r["src_ip"]).startswith('"') for r in rows)
