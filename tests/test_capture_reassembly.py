"""TCP reassembly of real ClientHellos: segment boundaries, ordering, retransmissions, overlaps, junk before the record.

Two checks on the same generator (segments cut at random points, delivered in a random order, some sent twice, some
overlapping their neighbours with the same bytes, optionally after a segment of junk bytes):

* hypothesis varies the cuts and the order; read_capture must find the hello once, with the JA3 tshark and the
  JA4 FoxIO's reference computed for the original capture;
* a fixed-seed batch of such sessions goes into one capture that the real tshark reads (with its out-of-order
  reassembly switched on): every hello tshark finds, read_capture finds with the same JA3 and frame.

Junk before the record is handled as tshark (and so FoxIO's reference, which reads tshark's dissection) handles it:
a ClientHello that starts a segment after junk segments is found; junk in the same segment before the record
hides it from both (checked below).
"""

from __future__ import annotations

import csv
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stormguard.features.capture.reader import read_capture
from test_capture_encapsulations import _hello_at
from test_tls_builders import ACK, FIN, PSH, SYN, eth, ipv4, tcp, write_pcap

from stormguard.report import ReplayStats

pytestmark = pytest.mark.corpus

SOURCE = ("salesforce-ja3/ssl-chrome.pcap", 4)


@pytest.fixture(scope="module")
def hello(corpus: Path) -> tuple[bytes, dict]:
    rel, frame = SOURCE
    found = _hello_at(corpus / "pcap" / rel, frame)
    assert found
    with open(corpus / "expected" / "tshark" / (rel + ".csv"), newline="") as fh:
        (exp,) = [r for r in csv.DictReader(fh) if int(r["frame"]) == frame]
    return found[1], exp


def _segments(data: bytes, cuts: list[int], order: list[int], dups: list[int], overlaps: list[int]
              ) -> list[tuple[int, bytes]]:
    """(offset, bytes) pieces of ``data`` in delivery order: cut, overlapped, permuted, with duplicates."""
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]
    pieces = []
    for i in range(len(bounds) - 1):
        start = bounds[i]
        if i < len(overlaps) and overlaps[i]:  # reach back into the previous piece (same bytes)
            start = max(0, start - overlaps[i])
        pieces.append((start, data[start:bounds[i + 1]]))
    perm = sorted(range(len(pieces)), key=lambda i: order[i] if i < len(order) else i)
    out = [pieces[i] for i in perm]
    for d in dups:
        if out:
            out.insert(d % (len(out) + 1), out[d % len(out)])
    return out


def _session(pieces: list[tuple[int, bytes]], cport: int, junk: bytes = b"") -> list[bytes]:
    isn = 1000

    def c2s(seq: int, flags: int, data: bytes = b"") -> bytes:
        return eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(cport, 443, seq, flags, data)))

    def s2c(seq: int, flags: int) -> bytes:
        return eth(ipv4("10.0.0.2", "10.0.0.1", 6, tcp(443, cport, seq, flags)))

    pkts = [c2s(isn, SYN), s2c(5000, SYN | ACK), c2s(isn + 1, ACK)]
    base = isn + 1
    if junk:
        pkts.append(c2s(base, PSH | ACK, junk))
        base += len(junk)
    pkts += [c2s(base + off, PSH | ACK, d) for off, d in pieces]
    end = base + max(off + len(d) for off, d in pieces)
    return pkts + [c2s(end, FIN | ACK), s2c(5001, FIN | ACK), c2s(end + 1, ACK)]


cut_lists = st.lists(st.integers(min_value=1, max_value=600), max_size=12)
small = st.lists(st.integers(min_value=0, max_value=40), max_size=12)


@settings(max_examples=60, deadline=None, derandomize=True,  # deterministic in CI
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=cut_lists, order=small, dups=st.lists(st.integers(0, 50), max_size=3), overlaps=small,
       junk=st.sampled_from([b"", b"JUNK!", b"\x00" * 7, b"\r\n"]))
def test_hello_found_whatever_the_segmentation(hello: tuple, tmp_path: Path, cuts: list[int], order: list[int],
                                               dups: list[int], overlaps: list[int], junk: bytes) -> None:
    data, exp = hello
    pieces = _segments(data, cuts, order, dups, overlaps)
    path = write_pcap(tmp_path / "r.pcap", _session(pieces, 40000, junk))
    stats = ReplayStats()
    rows = [r for r in read_capture(path, stats) if r["proto"] == "tls"]
    assert [(r["ja3"], r["ja4"], r["ja4_r"], r["sni"]) for r in rows] == [
        (exp["ja3"], exp["ja4"], exp["ja4_r"], exp["sni"])], pieces
    assert not stats.problems


def test_junk_in_the_hello_segment_hides_it_from_tshark_and_from_us(hello: tuple, tmp_path: Path) -> None:
    data, _ = hello
    path = write_pcap(tmp_path / "j.pcap", _session([(0, b"JUNK!" + data)], 40000))
    assert [r for r in read_capture(path, ReplayStats()) if r["proto"] == "tls"] == []
    assert _tshark(path) == []


def _tshark(path: Path) -> list[tuple[int, int, str]]:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark not installed (Debian package tshark; .ci/run installs it)")
    out = subprocess.run(
        [tshark, "-n", "-r", str(path), "-o", "tcp.reassemble_out_of_order:TRUE", "-Y", "tls.handshake.type == 1",
         "-T", "fields", "-e", "frame.number", "-e", "tcp.srcport", "-e", "tls.handshake.ja3"],
        capture_output=True, text=True, timeout=120, check=True).stdout
    return [(int(f), int(p), j) for f, p, j in (line.split("\t") for line in out.splitlines())]


def test_reassembly_matches_tshark(hello: tuple, tmp_path: Path) -> None:
    data, exp = hello
    rnd = random.Random(16)
    frames: list[bytes] = []
    for k in range(40):
        cuts = [rnd.randrange(1, len(data)) for _ in range(rnd.randrange(0, 6))]
        order = [rnd.randrange(0, 10) for _ in range(8)] if k % 2 else []
        dups = [rnd.randrange(0, 50) for _ in range(rnd.randrange(0, 2))]
        overlaps = [rnd.choice((0, 0, 3, 20)) for _ in range(8)]
        junk = b"JUNK!" if k % 5 == 0 else b""
        frames += _session(_segments(data, cuts, order, dups, overlaps), 30000 + k, junk)
    path = write_pcap(tmp_path / "batch.pcap", frames)
    theirs = _tshark(path)
    assert len(theirs) >= 30, theirs  # tshark sees most of them (a check on the generator)
    ours = {r["src_port"]: r for r in read_capture(path, ReplayStats()) if r["proto"] == "tls"}
    bad = [(f, p, j, ours.get(p, {}).get("frame"), ours.get(p, {}).get("ja3")) for f, p, j in theirs
           if p not in ours or ours[p]["ja3"] != j or ours[p]["frame"] != f]
    assert not bad, bad
    assert len(ours) == 40 and {r["ja3"] for r in ours.values()} == {exp["ja3"]}
