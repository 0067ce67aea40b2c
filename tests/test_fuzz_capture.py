"""Fuzzing read_capture: truncated, bit-flipped and random captures never raise, and damage keeps what came before.

Seeds are hand-built captures (always) and small corpus captures (when the corpus is there).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from conftest import corpus_root
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stormguard.features.capture.reader import read_capture
from test_tls_builders import (
    chrome_like_hello,
    client_hello,
    eth,
    ext,
    ext_sni,
    hello_body,
    ipv4,
    records,
    tcp_session,
    u16,
    u24,
    udp,
    write_pcap,
    write_pcapng,
)

from stormguard.report import ReplayStats
from stormguard.schema import RECORD_COLUMNS

_TMP = Path(tempfile.mkdtemp(prefix="sg-fuzz-"))


def _synthetic_seeds() -> dict[str, bytes]:
    hello = records(22, chrome_like_hello(), size=120)
    http = b"GET /events HTTP/1.1\r\nHost: x\r\nUser-Agent: fuzz/1\r\nContent-Length: 3\r\n\r\nabc"
    frames = (tcp_session([hello[:100], hello[100:]], cport=1000)
              + tcp_session([http, http], sport=80, cport=1001)
              + tcp_session([records(22, client_hello(extensions=[ext_sni("b"), ext(43, b"\x02\x03\x04")]))],
                            cport=1002))
    body = hello_body(version=0xFEFD, cookie=b"")
    hs = b"\x01" + u24(len(body)) + u16(0) + u24(0) + u24(len(body)) + body
    frames.append(eth(ipv4("10.0.0.9", "10.0.0.8", 17, udp(5000, 5001, b"\x16\xfe\xff" + b"\x00" * 8
                                                          + u16(len(hs)) + hs))))
    a = write_pcap(_TMP / "seed.pcap", frames).read_bytes()
    b = write_pcapng(_TMP / "seed.pcapng", [(0, f) for f in frames]).read_bytes()
    return {"seed.pcap": a, "seed.pcapng": b}


def _corpus_seeds(limit: int = 8, max_size: int = 40_000) -> dict[str, bytes]:
    root = corpus_root()
    if root is None:
        return {}
    files = sorted((p for p in (root / "pcap").glob("*/*") if p.is_file() and p.stat().st_size <= max_size),
                   key=lambda p: p.name)
    picked = files[:: max(1, len(files) // limit)][:limit]
    return {p.name: p.read_bytes() for p in picked}


SEEDS = {**_synthetic_seeds(), **_corpus_seeds()}
NAMES = sorted(SEEDS)


def _run(data: bytes, name: str) -> tuple[list[dict], ReplayStats]:
    path = _TMP / f"fuzz-{os.getpid()}-{name}"
    path.write_bytes(data)
    stats = ReplayStats()
    rows = list(read_capture(path, stats))  # must not raise
    for r in rows:
        assert set(r) <= set(RECORD_COLUMNS)
    return rows, stats


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(name=st.sampled_from(NAMES), cut=st.floats(0, 1))
def test_truncated(name: str, cut: float) -> None:
    data = SEEDS[name]
    _run(data[: int(len(data) * cut)], name)


@FUZZ
@given(name=st.sampled_from(NAMES), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1,
                                                    max_size=20))
def test_bit_flips(name: str, flips: list[tuple[float, int]]) -> None:
    data = bytearray(SEEDS[name])
    for where, bit in flips:
        i = min(len(data) - 1, int(where * len(data)))
        data[i] ^= 1 << bit
    _run(bytes(data), name)


@FUZZ
@given(name=st.sampled_from(NAMES), where=st.floats(0, 1), junk=st.binary(min_size=1, max_size=400))
def test_spliced_junk(name: str, where: float, junk: bytes) -> None:
    data = SEEDS[name]
    i = int(where * len(data))
    _run(data[:i] + junk + data[i:], name)


@FUZZ
@given(head=st.sampled_from([b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\x0a\x0d\x0d\x0a",
                             b""]), body=st.binary(max_size=3000))
def test_random_bytes(head: bytes, body: bytes) -> None:
    _run(head + body, "random.pcap")


def test_truncation_keeps_everything_before_the_damage() -> None:
    data = SEEDS["seed.pcap"]
    full, stats = _run(data, "seed.pcap")
    assert not stats.problems
    full_keys = {(r["src_port"], r["frame"], r.get("ja3"), r.get("method")) for r in full if r["proto"] != "other"}
    # packet boundaries of the classic pcap seed
    bounds = []
    off = 24
    while off < len(data):
        caplen = int.from_bytes(data[off + 8:off + 12], "little")
        off += 16 + caplen
        bounds.append(off)
    for frame_count, end in enumerate(bounds, start=1):
        for cut in (end, end + 7):  # at a record boundary, and inside the next record header
            if cut > len(data):
                continue
            rows, stats = _run(data[:cut], "cut.pcap")
            keys = {(r["src_port"], r["frame"], r.get("ja3"), r.get("method")) for r in rows if r["proto"] != "other"}
            before = {k for k in full_keys if k[1] <= frame_count}
            assert before <= keys, (cut, before - keys)
            assert keys <= full_keys | {k for k in keys if k[1] <= frame_count}
            if cut != end and cut < len(data):
                assert stats.problems and stats.problems[0].file.endswith("cut.pcap")
                assert stats.problems[0].offset == end


@pytest.mark.parametrize("name", NAMES)
def test_seeds_read_cleanly(name: str) -> None:
    rows, _ = _run(SEEDS[name], name)
    if name.startswith("seed."):
        assert {r["proto"] for r in rows} >= {"tls", "http", "dtls"}
