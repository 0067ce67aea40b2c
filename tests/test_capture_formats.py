"""pcapng block variety (SPB, OPB, timestamp resolutions and offsets, damage) and bounded connection state."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import stormguard.features.capture.reader as capture
from stormguard.features.capture.files import iter_packets
from stormguard.features.capture.reader import read_capture
from test_tls_builders import (
    ACK,
    SYN,
    _block,
    _opt,
    chrome_like_hello,
    eth,
    ipv4,
    records,
    tcp,
    tcp_session,
    write_pcap,
)

from stormguard.report import ReplayStats

HELLO = records(22, chrome_like_hello())


def _shb(endian: str = "<") -> bytes:
    return _block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1), endian)


def _idb(lt: int, opts: bytes = b"", endian: str = "<") -> bytes:
    return _block(1, struct.pack(endian + "HHI", lt, 0, 0) + opts, endian)


def _pad(b: bytes) -> bytes:
    return b + b"\x00" * ((-len(b)) % 4)


def test_simple_and_obsolete_packet_blocks(tmp_path: Path) -> None:
    frames = tcp_session([HELLO])
    out = _shb() + _idb(1)
    # EPB for the first frame, then SPBs and OPBs alternately
    v = 1_700_000_000 * 1_000_000
    out += _block(6, struct.pack("<IIIII", 0, v >> 32, v & 0xFFFFFFFF, len(frames[0]), len(frames[0]))
                  + _pad(frames[0]), "<")
    for i, f in enumerate(frames[1:], start=1):
        if i % 2:
            out += _block(3, struct.pack("<I", len(f)) + _pad(f), "<")
        else:
            w = v + i * 1000
            out += _block(2, struct.pack("<HHIIII", 0, 0, w >> 32, w & 0xFFFFFFFF, len(f), len(f)) + _pad(f), "<")
    p = tmp_path / "blocks.pcapng"
    p.write_bytes(out)
    stats = ReplayStats()
    rows = [r for r in read_capture(p, stats) if r["proto"] == "tls"]
    assert len(rows) == 1 and rows[0]["frame"] == 4
    assert rows[0]["ts"] == pytest.approx(1_700_000_000.0)
    assert not stats.problems


@pytest.mark.parametrize(("tsresol", "ticks_per_s"), [(0x80 | 10, 1024), (3, 1000), (9, 10**9)])
def test_timestamp_resolution_and_offset(tmp_path: Path, tsresol: int, ticks_per_s: int) -> None:
    opts = _opt(9, bytes([tsresol]), "<") + _opt(14, struct.pack("<q", 1000), "<") + _opt(0, b"", "<")
    f = eth(ipv4("1.1.1.1", "2.2.2.2", 6, tcp(1, 2, 3, SYN)))
    v = 1_600_000_000 * ticks_per_s + ticks_per_s // 2
    out = _shb() + _idb(1, opts) + _block(
        6, struct.pack("<IIIII", 0, v >> 32, v & 0xFFFFFFFF, len(f), len(f)) + _pad(f), "<")
    p = tmp_path / "res.pcapng"
    p.write_bytes(out)
    (pkt,) = list(iter_packets(p, p.name, "pcapng", ReplayStats()))
    assert pkt[1] == pytest.approx(1_600_001_000.5, abs=1e-3)


def test_damaged_pcapng_block_keeps_earlier_packets(tmp_path: Path) -> None:
    frames = tcp_session([HELLO])
    out = _shb() + _idb(1)
    for f in frames:
        out += _block(6, struct.pack("<IIIII", 0, 0, 0, len(f), len(f)) + _pad(f), "<")
    good = len(out)
    out += _block(6, struct.pack("<IIIII", 0, 0, 0, 40, 40) + b"\x00" * 40, "<")[:-4] + b"\x99\x00\x00\x00"
    p = tmp_path / "dmg.pcapng"
    p.write_bytes(out)
    stats = ReplayStats()
    rows = [r for r in read_capture(p, stats) if r["proto"] == "tls"]
    assert len(rows) == 1
    assert stats.problems[0].offset == good and stats.problems[0].file == "dmg.pcapng"


def test_second_section_resets_interfaces(tmp_path: Path) -> None:
    a = tcp_session([HELLO], cport=1)
    b = [f[14:] for f in tcp_session([HELLO], cport=2)]  # raw IP in section 2
    out = _shb() + _idb(1)
    for f in a:
        out += _block(6, struct.pack("<IIIII", 0, 0, 0, len(f), len(f)) + _pad(f), "<")
    out += _shb(">") + _idb(101, endian=">")
    for f in b:
        out += _block(6, struct.pack(">IIIII", 0, 0, 0, len(f), len(f)) + _pad(f), ">")
    p = tmp_path / "sections.pcapng"
    p.write_bytes(out)
    rows = [r for r in read_capture(p, ReplayStats()) if r["proto"] == "tls"]
    assert sorted(r["src_port"] for r in rows) == [1, 2]


def test_open_connection_cap_releases_oldest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture, "MAX_CONNS", 50)
    monkeypatch.setattr(capture, "SWEEP_EVERY", 64)  # the count is looked at every min(SWEEP_EVERY, 1024) packets
    frames = []
    for i in range(400):
        frames.append(eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(10000 + i, 443, 1, SYN))))
    stats = ReplayStats()
    rows = list(read_capture(write_pcap(tmp_path / "many.pcap", frames), stats))
    assert len(rows) == 400 and all(r["proto"] == "other" for r in rows)
    assert {r["outcome"] for r in rows} == {"evicted", "open"}
    assert stats.skipped["connections released early (open-connection cap)"] > 0


def test_idle_connections_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture, "SWEEP_EVERY", 4)
    frames = [eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1000, 443, 1, SYN)))]
    frames += [eth(ipv4("10.0.0.3", "10.0.0.4", 6, tcp(2000, 80, 1 + i, ACK))) for i in range(8)]
    p = tmp_path / "idle.pcap"
    data = bytearray(write_pcap(p, frames).read_bytes())
    # move every packet after the first an hour later
    off = 24 + 16 + len(frames[0])
    for f in frames[1:]:
        sec = struct.unpack_from("<I", data, off)[0]
        struct.pack_into("<I", data, off, sec + 3600)
        off += 16 + len(f)
    p.write_bytes(bytes(data))
    rows = list(read_capture(p, ReplayStats()))
    assert [(r["src_port"], r["outcome"]) for r in rows] == [(1000, "timeout")]


def test_gc_thresholds_are_given_back(tmp_path: Path) -> None:
    import gc

    before = gc.get_threshold()
    p = write_pcap(tmp_path / "gc.pcap", tcp_session([HELLO]) * 2)
    it = read_capture(p, ReplayStats())
    next(it)  # suspended while the caller holds a row: the caller's settings apply
    assert gc.get_threshold() == before
    it.close()
    assert gc.get_threshold() == before
    list(read_capture(p, ReplayStats()))
    assert gc.get_threshold() == before


def test_damaged_pcapng_block_in_the_middle_is_stepped_over(tmp_path: Path) -> None:
    out = _shb() + _idb(1)
    for f in tcp_session([HELLO], cport=1):
        out += _block(6, struct.pack("<IIIII", 0, 0, 0, len(f), len(f)) + _pad(f), "<")
    bad = len(out)
    out += b"\x06\x00\x00\x00\xff\xff\xff\x7f" + b"\x00" * 40  # a block header with an absurd length, then junk
    for f in tcp_session([HELLO], cport=2):
        out += _block(6, struct.pack("<IIIII", 0, 0, 0, len(f), len(f)) + _pad(f), "<")
    p = tmp_path / "mid.pcapng"
    p.write_bytes(out)
    stats = ReplayStats()
    rows = [r for r in read_capture(p, stats) if r["proto"] == "tls"]
    assert sorted(r["src_port"] for r in rows) == [1, 2]
    (problem,) = stats.problems
    assert problem.offset == bad and "resumed" in problem.message
