"""Captures read by several processes, one share of the flows each: the same records and the same counts as one
process reading the whole file, on every capture of the corpus (pcap and pcapng, IPv4/IPv6, tunnels, fragments,
QUIC, DTLS, damaged files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from stormguard.features.capture.reader import CaptureReader, read_capture
from stormguard.features.capture.split import read_capture_split
from stormguard.features.logs import split as logsplit
from stormguard.features.replay import replay_to_file

from stormguard.report import ReplayStats
from stormguard.schema import read_records


def captures(corpus: Path) -> list[Path]:
    found = sorted(p for p in (corpus / "pcap").rglob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))
    assert len(found) > 50
    return found


def key(row: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in row.items()))


def figures(stats: ReplayStats) -> tuple:
    return (stats.packets, stats.connections, stats.client_hellos, stats.http_requests, dict(stats.skipped),
            sorted((p.file, p.offset, p.line, p.message) for p in stats.problems))


def test_shares_add_up_to_a_whole_read_on_every_corpus_capture(corpus: Path) -> None:
    hellos = 0
    for path in captures(corpus):
        whole_stats = ReplayStats()
        whole = sorted(key(r) for r in read_capture(path, whole_stats))
        for jobs in (2, 3):
            stats = ReplayStats()
            rows = list(read_capture_split(path, stats, jobs=jobs))
            assert sorted(key(r) for r in rows) == whole, (path.name, jobs)
            assert figures(stats) == figures(whole_stats), (path.name, jobs)
        hellos += whole_stats.client_hellos
    assert hellos > 300


def test_one_share_holds_whole_flows(corpus: Path) -> None:
    """Each share's rows are exactly the whole read's rows of its flows (both directions in one share)."""
    path = corpus / "pcap" / "foxio-ja4" / "tls-handshake.pcapng"
    whole = [r for r in read_capture(path, ReplayStats())]
    shares = []
    for k in range(2):
        rows = [r for r in CaptureReader(path, ReplayStats(), shard=(k, 2)) if r is not None]
        shares.append({(r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"]) for r in rows})
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == {(r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"]) for r in whole}


def test_split_order_is_deterministic(corpus: Path) -> None:
    path = max(captures(corpus), key=lambda p: p.stat().st_size)
    runs = [[key(r) for r in read_capture_split(path, ReplayStats(), jobs=2)] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]


def test_replay_to_file_with_reader_processes(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logsplit, "MIN_BYTES", 1)  # split every capture, however small
    inputs = [corpus / "pcap" / "foxio-ja4", corpus / "pcap" / "salesforce-ja3"]
    frames, summaries = [], []
    for jobs in (1, 3):
        stats = ReplayStats()
        out = tmp_path / f"out{jobs}.parquet"
        replay_to_file(inputs, out, stats, jobs=jobs, show_progress=False)
        frame = read_records(out)
        cols = list(frame.columns)
        frames.append(frame.sort_values(cols, na_position="last", kind="stable").reset_index(drop=True))
        summaries.append(stats.summary())
    assert len(frames[0]) > 100
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert summaries[0] == summaries[1]


def test_two_jobs_read_a_capture_in_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On two CPUs a second reader costs as much as it saves: the capture stays in one process."""
    import stormguard.features.capture.split as capsplit

    monkeypatch.setattr(logsplit, "MIN_BYTES", 1)
    used: list[int] = []
    real = capsplit.read_capture_split

    def spy(*args: Any, **kwargs: Any) -> Any:
        used.append(kwargs["jobs"])
        return real(*args, **kwargs)

    monkeypatch.setattr(capsplit, "read_capture_split", spy)
    sample = Path(__file__).resolve().parent.parent / "data" / "sample.pcap"
    for jobs in (2, 3):
        replay_to_file([sample], tmp_path / f"s{jobs}.parquet", ReplayStats(), jobs=jobs, show_progress=False)
    assert used == [3]


def test_damaged_capture_split_keeps_everything_before_the_damage(corpus: Path, tmp_path: Path) -> None:
    src = corpus / "pcap" / "foxio-ja4" / "tls-handshake.pcapng"
    data = src.read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[: len(data) * 2 // 3])
    whole_stats, stats = ReplayStats(), ReplayStats()
    whole = sorted(key(r) for r in read_capture(cut, whole_stats))
    assert sorted(key(r) for r in read_capture_split(cut, stats, jobs=2)) == whole
    assert figures(stats) == figures(whole_stats) and stats.problems  # the damage is reported once
