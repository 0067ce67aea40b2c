"""A capture cut into byte spans at record/block boundaries, each span's packets routed to flow shares, one reader
per share (features/capture/routed.py, what ``replay --engine dask`` does with a large capture): the same packets,
records and counts as one whole read — on every corpus capture, and on hand-built captures where a span boundary
falls inside a fragmented datagram, a tunnel, a damaged record, or where a connection is released idle while
other shares' packets flow."""

from __future__ import annotations

import collections
import struct
from pathlib import Path
from typing import Any

from stormguard.features.capture.files import Span, iter_packets, plan_spans
from stormguard.features.capture.reader import IDLE_TIMEOUT, SWEEP_EVERY, read_capture
from stormguard.features.capture.routed import merge_unused, read_routed, route_span, unused_count
from stormguard.features.sniff import sniff
from test_tls_builders import (
    ACK,
    PSH,
    chrome_like_hello,
    eth,
    fragmented_flow,
    ipv4,
    records,
    tcp,
    tcp_session,
    udp,
    write_pcap,
)

from stormguard.report import ReplayStats

HELLO = records(22, chrome_like_hello())


def corpus_captures(corpus: Path) -> list[Path]:
    found = sorted(p for p in (corpus / "pcap").rglob("*") if p.is_file() and sniff(p) in ("pcap", "pcapng"))
    assert len(found) > 50
    return found


def _rows(rows: list[dict[str, Any]]) -> collections.Counter[tuple]:
    return collections.Counter(tuple(sorted((k, repr(v)) for k, v in r.items())) for r in rows)


def _figures(stats: ReplayStats) -> tuple:
    return stats.summary(), [str(p) for p in stats.problems]


def routed_read(path: Path, split_bytes: int, shares: int, folder: Path) -> tuple[list[dict], ReplayStats, int]:
    """What the Dask engine does with a large capture, in this process: plan, route every span, read every share."""
    kind = sniff(path)
    spans = plan_spans(path, kind, split_bytes)
    folder.mkdir(parents=True, exist_ok=True)
    stats = ReplayStats()
    routed = [route_span(str(path), kind, span, i, shares, str(folder)) for i, span in enumerate(spans)]
    rows: list[dict] = []
    share_stats = [ReplayStats() for _ in range(shares)]
    first = ReplayStats()
    for share in range(shares):
        rows += read_routed(str(path), kind, str(folder), len(spans), share, shares, share_stats[share],
                            packet_stats=first if share == 0 else None)
    for r in routed:
        stats.merge(r.stats)
    merge_unused(routed, path.name, stats, unused_count(first))
    for own in share_stats:
        stats.merge(own)
    return rows, stats, len(spans)


def assert_like_a_whole_read(path: Path, split_bytes: int, shares: int, folder: Path) -> int:
    whole_stats = ReplayStats()
    whole = list(read_capture(path, whole_stats))
    rows, stats, n_spans = routed_read(path, split_bytes, shares, folder)
    assert _rows(rows) == _rows(whole), (path.name, split_bytes, shares)
    assert _figures(stats) == _figures(whole_stats), (path.name, split_bytes, shares)
    return n_spans


def _packets(path: Path, span: Span | None = None) -> tuple[list[tuple], list[str]]:
    stats = ReplayStats()
    got = [(f, ts, lt, bytes(buf[off:off + n])) for f, ts, lt, buf, off, n in
           iter_packets(path, path.name, sniff(path), stats, span=span)]
    return got, [str(p) for p in stats.problems]


def test_spans_hold_every_packet_once_on_every_corpus_capture(corpus: Path) -> None:
    cut = 0
    for path in corpus_captures(corpus):
        whole, problems = _packets(path)
        spans = plan_spans(path, sniff(path), 2048)
        assert spans[0].start in (0, 24) and spans[-1].stop is None
        assert all(a.stop == b.start for a, b in zip(spans, spans[1:], strict=False))
        got: list[tuple] = []
        got_problems: list[str] = []
        for span in spans:
            packets, found = _packets(path, span)
            got += packets
            got_problems += found
        assert got == whole, path.name
        assert got_problems == problems, path.name
        cut += len(spans) > 1
    assert cut > 20  # many captures really were cut


def test_routed_spans_equal_a_whole_read_on_every_corpus_capture(corpus: Path, tmp_path: Path) -> None:
    """Spans of 700 bytes (most captures cut many times) routed to three shares (the built captures below use two
    and three)."""
    cut = 0
    for i, path in enumerate(corpus_captures(corpus)):
        cut += assert_like_a_whole_read(path, 700, 3, tmp_path / str(i)) > 1
    assert cut > 20


def test_a_fragmented_datagram_across_spans(tmp_path: Path) -> None:
    """Fragments of one datagram in different spans (every packet its own span), arriving last-first: routed to
    every share, reassembled by each, kept by the one that owns the flow."""
    frames = fragmented_flow("10.9.9.1", "10.9.9.2", HELLO)
    frames += tcp_session([HELLO], c="10.1.1.1", cport=5000)  # another flow, for the other share
    path = write_pcap(tmp_path / "frag.pcap", frames)
    for shares in (2, 3):
        assert assert_like_a_whole_read(path, 1, shares, tmp_path / f"s{shares}") == len(frames)


def test_tunnelled_flows_and_a_damaged_record_across_spans(tmp_path: Path) -> None:
    def gre(inner: bytes) -> bytes:
        return ipv4("172.16.0.1", "172.16.0.2", 47, b"\x00\x00\x65\x58" + inner)

    frames = [eth(gre(f)) for f in tcp_session([HELLO], c="10.0.0.7", cport=41000)]
    frames += tcp_session([HELLO], c="10.0.0.8", cport=42000)
    path = write_pcap(tmp_path / "t.pcap", frames)
    assert assert_like_a_whole_read(path, 200, 2, tmp_path / "a") > 3
    data = bytearray(path.read_bytes())
    third = 24
    for _ in range(len(frames) * 2 // 3):  # the record header of a packet two thirds in: an absurd length
        third += 16 + struct.unpack_from("<I", data, third + 8)[0]
    struct.pack_into("<I", data, third + 8, 1 << 30)
    damaged = tmp_path / "damaged.pcap"
    damaged.write_bytes(bytes(data))
    assert assert_like_a_whole_read(damaged, 200, 2, tmp_path / "b") > 1
    stats = ReplayStats()
    list(read_capture(damaged, stats))
    assert stats.skipped["damaged capture"] == 1


def _pcap(path: Path, frames: list[tuple[float, bytes]]) -> Path:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for ts, f in frames:
        out.append(struct.pack("<IIII", int(ts), int(round((ts % 1) * 1e6)), len(f), len(f)) + f)
    path.write_bytes(b"".join(out))
    return path


def test_a_connection_released_idle_while_other_shares_packets_flow(tmp_path: Path) -> None:
    """A connection idle for longer than the timeout, while more than a sweep's worth of other flows' packets go
    by, is released at the same packet as in a whole read (its reader sees the others' packets as ticks), so
    its next hello starts a new connection in both."""
    t0 = 1_700_000_000.0
    a = [(t0 + i * 0.001, f) for i, f in enumerate(tcp_session([HELLO], c="10.0.0.1", cport=40000, close=False))]
    n_other = SWEEP_EVERY + 4096
    step = (IDLE_TIMEOUT + 200) / n_other
    other = [(t0 + 1 + i * step, eth(ipv4(f"10.{2 + i % 50}.0.{1 + i % 200}", "10.0.0.2", 17,
                                           udp(30000 + i % 1000, 9999, b"x"))))
             for i in range(n_other)]
    late = t0 + 2 + IDLE_TIMEOUT + 200
    again = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(40000, 443, 5000, PSH | ACK, HELLO)))
    path = _pcap(tmp_path / "idle.pcap", [*a, *other, (late, again)])
    whole = list(read_capture(path, ReplayStats()))
    a_rows = [r for r in whole if r["src_ip"] == "10.0.0.1"]
    assert sorted(r["outcome"] for r in a_rows) == ["open", "timeout"]  # released idle, then a new connection
    for shares in (2, 3):
        assert assert_like_a_whole_read(path, 64 << 10, shares, tmp_path / f"s{shares}") > 3
