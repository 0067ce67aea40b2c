"""One bad line never hides the rest of a log: formats are sniffed over many lines, nesting is bounded, the bad
line is counted and reported with its number, and every good line is kept (issue: found as an attacker would)."""

from __future__ import annotations

import json
from pathlib import Path

from stormguard.features.logs.reader import detect_format
from stormguard.features.replay import replay
from stormguard.features.sniff import sniff

from stormguard.report import ReplayStats

CLF = ('203.0.113.{i} - - [17/May/2015:10:05:{s:02d} +0000] "GET /page/{i} HTTP/1.1" 200 512 "-" '
       '"Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0"\n')


def _clf(n: int) -> bytes:
    return "".join(CLF.format(i=i % 250, s=i % 60) for i in range(n)).encode()


def _lines(stats: ReplayStats) -> list[int | None]:
    return sorted(p.line for p in stats.problems)


def test_binary_first_line_does_not_hide_a_combined_log(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_bytes(b"\x00\x01\x02\xff\xfe\x00 binary junk\n" + _clf(1000))
    assert sniff(path) == "log" and detect_format(path) == "combined"
    stats = ReplayStats()
    records = replay([path], stats)
    assert len(records) == 1000
    assert _lines(stats) == [1] and dict(stats.skipped) == {"log line unparseable (skipped)": 1}


def test_deeply_nested_json_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "app.jsonl"
    rows = [json.dumps({"ts": 1_700_000_000 + i, "src_ip": "198.51.100.7", "path": f"/x/{i}"}) for i in range(1010)]
    rows.insert(10, "[" * 100_000)
    rows.insert(0, "{" * 50_000)  # and a damaged first line
    path.write_text("\n".join(rows) + "\n")
    assert sniff(path) == "jsonl" and detect_format(path) == "jsonl"
    stats = ReplayStats()
    records = replay([path], stats)
    assert len(records) == 1010
    assert _lines(stats) == [1, 12] and dict(stats.skipped) == {"jsonl line invalid (skipped)": 2}


def test_mostly_garbage_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "image.bin"
    path.write_bytes(bytes(range(256)) * 64 + b"\n" + _clf(2))  # 2 log lines behind 16 KiB of binary
    stats = ReplayStats()
    assert len(replay([path], stats)) == 0 and stats.files_refused == 1


def test_har_documents_are_still_recognised(corpus: Path) -> None:
    for har in sorted((corpus / "har").glob("*.har")):
        assert sniff(har) == "har", har.name
