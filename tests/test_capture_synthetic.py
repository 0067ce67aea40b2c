"""read_capture on hand-built captures: link types, tunnels, reassembly, HTTP, connection rows, damage."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from stormguard.features.capture.reader import read_capture
from test_tls_builders import (
    ACK,
    CHROME_JA4,
    FIN,
    PSH,
    RST,
    SYN,
    chrome_like_hello,
    client_hello,
    eth,
    ext,
    ext_sni,
    ext_versions,
    fragmented_flow,
    hello_body,
    ip4,
    ipv4,
    ipv6,
    records,
    tcp,
    tcp_session,
    u16,
    u24,
    udp,
    write_pcap,
    write_pcapng,
)

from stormguard.report import ReplayStats
from stormguard.schema import RECORD_COLUMNS, records_frame

HELLO = records(22, chrome_like_hello())


def read(path: Path) -> tuple[list[dict], ReplayStats]:
    stats = ReplayStats()
    rows = list(read_capture(path, stats))
    records_frame(rows)  # every key is a schema column with a castable value
    return rows, stats


def tls_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["proto"] == "tls"]


def test_basic_tls_connection(tmp_path: Path) -> None:
    frames = tcp_session([HELLO], [b"\x16\x03\x03\x00\x05\x02abcd"], sport=443)
    rows, stats = read(write_pcap(tmp_path / "a.pcap", frames))
    assert len(rows) == 1
    r = rows[0]
    assert set(r) <= set(RECORD_COLUMNS)
    assert r["proto"] == "tls" and r["transport"] == "tcp"
    assert (r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"]) == ("10.0.0.1", 40000, "10.0.0.2", 443)
    assert r["frame"] == 4 and r["ch_index"] == 0
    assert r["ja4"] == CHROME_JA4 and r["ja3"] and r["ja3_string"].startswith("771,")
    assert r["sni"] == "example.com" and r["alpn"] == "h2,http/1.1" and r["tls_versions"] == "0x0304 0x0303"
    assert r["source"] == "a.pcap" and r["source_kind"] == "pcap"
    assert r["ts"] == pytest.approx(1_700_000_000.0) and r["ts_end"] == pytest.approx(1_700_000_000.0 + 0.007)
    assert r["outcome"] == "fin" and r["packets"] == len(frames)
    assert r["bytes_in"] == len(HELLO) and r["bytes_out"] == 10
    assert stats.client_hellos == 1 and stats.connections == 1 and stats.packets == len(frames)


def test_any_port_and_segmented_out_of_order_retransmitted(tmp_path: Path) -> None:
    segs = [HELLO[i:i + 60] for i in range(0, len(HELLO), 60)]
    assert len(segs) > 3
    frames = tcp_session(segs, sport=8444)
    # swap two middle segments and retransmit the first one
    frames[4], frames[5] = frames[5], frames[4]
    frames.insert(6, frames[3])
    rows, _ = read(write_pcap(tmp_path / "b.pcap", frames))
    (r,) = tls_rows(rows)
    assert r["dst_port"] == 8444 and r["ja4"] == CHROME_JA4
    # the packet carrying the last segment (1-based; one retransmission inserted before it)
    assert r["frame"] == 3 + len(segs) + 1


def test_overlapping_segments(tmp_path: Path) -> None:
    c, s = "10.0.0.1", "10.0.0.2"
    isn = 77

    def seg(off: int, data: bytes) -> bytes:
        return eth(ipv4(c, s, 6, tcp(5555, 443, isn + 1 + off, PSH | ACK, data)))

    frames = [eth(ipv4(c, s, 6, tcp(5555, 443, isn, SYN))), seg(0, HELLO[:120]), seg(80, HELLO[80:300]),
              seg(250, HELLO[250:])]
    rows, _ = read(write_pcap(tmp_path / "o.pcap", frames))
    assert tls_rows(rows)[0]["ja4"] == CHROME_JA4


def test_hello_retry_request_gives_two_rows(tmp_path: Path) -> None:
    second = client_hello(extensions=[ext_sni("example.com"), ext_versions(0x0304), ext(44, b"\x00\x02ab")])
    frames = tcp_session([HELLO, records(20, b"\x01", version=0x0303) + records(22, second, version=0x0303),
                          records(23, b"x" * 30)])
    rows, stats = read(write_pcap(tmp_path / "h.pcap", frames))
    tls = tls_rows(rows)
    assert [r["ch_index"] for r in tls] == [0, 1]
    assert tls[0]["ja3"] != tls[1]["ja3"]
    assert stats.client_hellos == 2


def test_midstream_flow_without_syn_and_starttls(tmp_path: Path) -> None:
    c, s = "192.0.2.1", "192.0.2.2"
    frames = [
        eth(ipv4(c, s, 6, tcp(2000, 25, 500, PSH | ACK, b"EHLO me\r\n"))),
        eth(ipv4(s, c, 6, tcp(25, 2000, 900, PSH | ACK, b"250 ok\r\n"))),
        eth(ipv4(c, s, 6, tcp(2000, 25, 509, PSH | ACK, b"STARTTLS\r\n"))),
        eth(ipv4(s, c, 6, tcp(25, 2000, 908, PSH | ACK, b"220 go\r\n"))),
        eth(ipv4(c, s, 6, tcp(2000, 25, 519, PSH | ACK, HELLO))),
        eth(ipv4(c, s, 6, tcp(2000, 25, 519, PSH | ACK, HELLO))),  # retransmission: no second row
    ]
    rows, _ = read(write_pcap(tmp_path / "m.pcap", frames))
    assert len(rows) == 1 and rows[0]["proto"] == "tls" and rows[0]["frame"] == 5
    assert rows[0]["outcome"] == "open"


def test_connection_rows_for_syn_only_and_non_tls(tmp_path: Path) -> None:
    c, s = "10.1.1.1", "10.1.1.2"
    frames = [eth(ipv4(c, s, 6, tcp(1111, 80, 10, SYN))),
              eth(ipv4(s, c, 6, tcp(80, 1111, 20, RST | ACK))),
              *tcp_session([b"SSH-2.0-OpenSSH_9.0\r\n" + b"\x00" * 100], cport=2222, sport=22)]
    rows, stats = read(write_pcap(tmp_path / "c.pcap", frames))
    assert sorted((r["proto"], r["dst_port"], r["outcome"]) for r in rows) == [("other", 22, "fin"),
                                                                              ("other", 80, "rst")]
    assert stats.connections == 2


def test_port_reuse_is_a_new_connection(tmp_path: Path) -> None:
    frames = tcp_session([HELLO], isn_c=100) + tcp_session([HELLO], isn_c=90000)
    rows, _ = read(write_pcap(tmp_path / "r.pcap", frames))
    assert len(tls_rows(rows)) == 2


def test_http_requests(tmp_path: Path) -> None:
    req1 = (b"POST /api/x HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8.0\r\nContent-Length: 5\r\n"
            b"X-Custom: 1\r\n\r\nhello")
    req2 = b"GET /stream?x=1 HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\n"
    data = req1 + req2
    frames = tcp_session([data[:30], data[30:70], data[70:]], sport=8080)
    rows, stats = read(write_pcap(tmp_path / "http.pcap", frames))
    assert [r["method"] for r in rows] == ["POST", "GET"]
    assert rows[0]["path"] == "/api/x" and rows[0]["http_version"] == "HTTP/1.1"
    assert rows[0]["user_agent"] == "curl/8.0"
    assert rows[0]["header_names"] == "Host,User-Agent,Content-Length,X-Custom"
    assert rows[1]["header_names"] == "Host,Accept" and rows[1]["user_agent"] is None
    assert all(r["proto"] == "http" and r["transport"] == "tcp" for r in rows)
    assert stats.http_requests == 2


def test_connect_then_tls(tmp_path: Path) -> None:
    frames = tcp_session([b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", HELLO],
                         [b"HTTP/1.1 200 Connection established\r\n\r\n"], sport=3128)
    rows, _ = read(write_pcap(tmp_path / "connect.pcap", frames))
    assert [r["proto"] for r in rows] == ["http", "tls"]


# --- link types, tunnels, IP -------------------------------------------------------------------------------

def _ip_frames(ip_packets: list[bytes], wrap) -> list[bytes]:
    return [wrap(p) for p in ip_packets]


def _session_ip() -> list[bytes]:
    return [p[14:] for p in tcp_session([HELLO])]


def _sll(p: bytes) -> bytes:
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, 0x0800) + p


def _sll2(p: bytes) -> bytes:
    return struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\x02" * 8) + p


@pytest.mark.parametrize(("linktype", "wrap"), [
    (1, lambda p: eth(p, vlans=(100, 200))),
    (113, _sll),
    (276, _sll2),
    (101, lambda p: p),
    (228, lambda p: p),
    (0, lambda p: struct.pack("<I", 2) + p),
    (0, lambda p: struct.pack(">I", 2) + p),
    (108, lambda p: struct.pack(">I", 2) + p),
    (9, lambda p: b"\xff\x03\x00\x21" + p),
    (50, lambda p: b"\xff\x03\x00\x21" + p),
])
def test_link_types(tmp_path: Path, linktype: int, wrap) -> None:
    rows, _ = read(write_pcap(tmp_path / "l.pcap", _ip_frames(_session_ip(), wrap), linktype=linktype))
    assert [r["ja4"] for r in tls_rows(rows)] == [CHROME_JA4]


def _gre(inner_eth: bytes) -> bytes:
    # GRE with key and sequence number, transparent Ethernet bridging
    return ipv4("172.16.0.1", "172.16.0.2", 47, b"\x30\x00" + u16(0x6558) + b"\x00\x00\x00\x07" + b"\x00\x00\x00\x01"
                + inner_eth)


def _erspan2(inner_eth: bytes) -> bytes:
    return ipv4("172.16.0.1", "172.16.0.2", 47, b"\x10\x00" + u16(0x88BE) + b"\x00\x00\x00\x01" + b"\x10" + b"\x00" * 7
                + inner_eth)


def _vxlan(inner_eth: bytes) -> bytes:
    return ipv4("172.16.0.1", "172.16.0.2", 17, udp(50000, 4789, b"\x08\x00\x00\x00\x00\x00\x01\x00" + inner_eth))


def _geneve(inner_eth: bytes) -> bytes:
    opt = b"\x01\x02\x03\x01" + b"\xaa\xbb\xcc\xdd"  # one 4-byte option (class, type, len=1 word)
    hdr = bytes([len(opt) // 4, 0]) + u16(0x6558) + b"\x00\x00\x01\x00"
    return ipv4("172.16.0.1", "172.16.0.2", 17, udp(50000, 6081, hdr + opt + inner_eth))


@pytest.mark.parametrize("tunnel", [_gre, _erspan2, _vxlan, _geneve])
def test_tunnels(tmp_path: Path, tunnel) -> None:
    frames = [eth(tunnel(f)) for f in tcp_session([HELLO])]
    rows, _ = read(write_pcap(tmp_path / "t.pcap", frames))
    (r,) = tls_rows(rows)
    assert r["src_ip"] == "10.0.0.1" and r["ja4"] == CHROME_JA4


def test_ipv4_fragments_reassembled(tmp_path: Path) -> None:
    frames = fragmented_flow("10.9.9.1", "10.9.9.2", HELLO)  # fragments arrive last-first
    assert len(frames) - 1 > 2
    rows, stats = read(write_pcap(tmp_path / "f.pcap", frames))
    assert tls_rows(rows)[0]["ja4"] == CHROME_JA4
    assert any("fragment" in k for k in stats.skipped)


def test_ipv6_with_extension_headers(tmp_path: Path) -> None:
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("20010db8000000000000000000000002")
    hbh = bytes([60, 0]) + b"\x01\x04\x00\x00\x00\x00"  # hop-by-hop -> destination options
    dopt = bytes([44, 0]) + b"\x01\x04\x00\x00\x00\x00"  # destination options -> fragment
    frag = bytes([6, 0, 0, 0]) + b"\x00\x00\x00\x09"  # atomic fragment -> TCP

    def pkt(sport: int, dport: int, seq: int, flags: int, data: bytes = b"") -> bytes:
        return eth(ipv6(src, dst, 0, hbh + dopt + frag + tcp(sport, dport, seq, flags, data)), 0x86DD)

    rows, _ = read(write_pcap(tmp_path / "v6.pcap", [pkt(1234, 443, 1, SYN), pkt(1234, 443, 2, PSH | ACK, HELLO)]))
    (r,) = tls_rows(rows)
    assert r["src_ip"] == "2001:db8::1" and r["dst_ip"] == "2001:db8::2"


# --- file formats ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("endian", "nano"), [("<", False), (">", False), ("<", True), (">", True)])
def test_pcap_variants(tmp_path: Path, endian: str, nano: bool) -> None:
    rows, _ = read(write_pcap(tmp_path / "v.pcap", tcp_session([HELLO]), endian=endian, nano=nano,
                              t0=1_700_000_000.25))
    (r,) = tls_rows(rows)
    assert r["ts"] == pytest.approx(1_700_000_000.25, abs=1e-6)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_interfaces(tmp_path: Path, endian: str) -> None:
    a = [(0, f) for f in tcp_session([HELLO])]
    b = [(1, f[14:]) for f in tcp_session([HELLO], cport=40001)]  # raw IP on the second interface
    rows, stats = read(write_pcapng(tmp_path / "x.pcapng", a + b, interfaces=[(1, 6), (101, 9)], endian=endian))
    tls = tls_rows(rows)
    assert sorted(r["src_port"] for r in tls) == [40000, 40001]
    assert all(r["source_kind"] == "pcapng" for r in rows)
    second = next(r for r in tls if r["src_port"] == 40001)
    assert second["frame"] == len(a) + 4
    assert second["ts"] == pytest.approx(1_700_000_000.0 + len(a) * 0.001, abs=1e-6)
    assert not stats.problems


def test_dtls_fragmented_hello(tmp_path: Path) -> None:
    body = hello_body(version=0xFEFD, ciphers=[0xC02B, 0xC02F], cookie=b"",
                      extensions=[ext_sni("d.example"), ext(23, b"")])
    half = len(body) // 2

    def rec(off: int, frag: bytes) -> bytes:
        hs = b"\x01" + u24(len(body)) + u16(0) + u24(off) + u24(len(frag)) + frag
        return b"\x16\xfe\xff" + u16(0) + b"\x00" * 6 + u16(len(hs)) + hs

    c, s = "10.2.2.1", "10.2.2.2"
    frames = [eth(ipv4(c, s, 17, udp(6000, 7000, rec(half, body[half:])))),
              eth(ipv4(c, s, 17, udp(6000, 7000, rec(0, body[:half]))))]
    rows, _ = read(write_pcap(tmp_path / "d.pcap", frames))
    (r,) = rows
    assert r["proto"] == "dtls" and r["transport"] == "udp" and r["frame"] == 2
    assert r["ja3_string"].startswith("65277,49195-49199,0-23,")
    assert r["ja4"].startswith("dd2d0202")


# --- damage, progress -----------------------------------------------------------------------------------------

def test_truncated_capture_keeps_earlier_rows(tmp_path: Path) -> None:
    first = tcp_session([HELLO], cport=1)
    second = tcp_session([HELLO], cport=2)
    p = write_pcap(tmp_path / "cut.pcap", first + second)
    data = p.read_bytes()
    p.write_bytes(data[:-30])
    rows, stats = read(p)
    assert {r["src_port"] for r in tls_rows(rows)} == {1, 2}
    (problem,) = stats.problems
    assert problem.file == "cut.pcap" and problem.offset is not None and problem.offset < len(data)


def test_damaged_record_length(tmp_path: Path) -> None:
    first = tcp_session([HELLO], cport=1)
    p = write_pcap(tmp_path / "bad.pcap", first + tcp_session([HELLO], cport=2))
    data = bytearray(p.read_bytes())
    off = 24 + sum(16 + len(f) for f in first)
    data[off + 8:off + 12] = struct.pack("<I", 0x7FFFFFF0)
    p.write_bytes(bytes(data))
    rows, stats = read(p)
    # the damaged record (the second SYN) is lost; reading resumes at the next plausible record
    assert {r["src_port"] for r in tls_rows(rows)} == {1, 2}
    (problem,) = stats.problems
    assert problem.offset == off and "damaged" in problem.message and "resumed" in problem.message
    assert stats.packets == 2 * len(first) - 1
    # damage followed by garbage: the rest is skipped, what came before is kept
    p.write_bytes(bytes(data[:off + 16]) + bytes(range(256)) * 4)
    rows, stats = read(p)
    assert {r["src_port"] for r in tls_rows(rows)} == {1}
    assert "rest of file skipped" in stats.problems[0].message and stats.problems[0].offset == off


def test_not_a_capture(tmp_path: Path) -> None:
    p = tmp_path / "x.pcap"
    p.write_bytes(b"hello world, not a capture")
    rows, stats = read(p)
    assert rows == [] and stats.problems


def test_progress_counts_every_byte(tmp_path: Path) -> None:
    p = write_pcap(tmp_path / "p.pcap", tcp_session([HELLO]) * 3)
    seen: list[int] = []
    list(read_capture(p, ReplayStats(), progress=seen.append))
    assert sum(seen) == p.stat().st_size


def test_rst_outcome_and_client_direction(tmp_path: Path) -> None:
    # the server speaks first on the wire (a mid-stream capture): the hello sender is still the client
    c, s = "10.5.5.1", "10.5.5.2"
    frames = [eth(ipv4(s, c, 6, tcp(443, 3333, 10, PSH | ACK, b"\x17\x03\x03\x00\x01x"))),
              eth(ipv4(c, s, 6, tcp(3333, 443, 50, PSH | ACK, HELLO))),
              eth(ipv4(c, s, 6, tcp(3333, 443, 50 + len(HELLO), RST)))]
    rows, _ = read(write_pcap(tmp_path / "rst.pcap", frames))
    (r,) = rows
    assert r["src_ip"] == c and r["dst_port"] == 443 and r["outcome"] == "rst"
    assert ip4(r["src_ip"]) == ip4(c)
    assert FIN  # (imported for symmetry with the other flags)


def test_sequence_number_wraparound_and_tiny_first_segment(tmp_path: Path) -> None:
    isn = 0xFFFFFFFF - 3  # the hello's bytes cross 2**32
    segs = [HELLO[:1], HELLO[1:4], HELLO[4:150], HELLO[150:]]
    rows, _ = read(write_pcap(tmp_path / "wrap.pcap", tcp_session(segs, isn_c=isn)))
    (r,) = tls_rows(rows)
    assert r["ja4"] == CHROME_JA4 and r["frame"] == 3 + len(segs)


def test_http_head_cut_by_end_of_capture(tmp_path: Path) -> None:
    frames = tcp_session([b"GET /a HTTP/1.1\r\nHost: x\r\nUser-Agent: partial"], sport=80, close=False)
    rows, _ = read(write_pcap(tmp_path / "cut-http.pcap", frames))
    (r,) = rows
    assert r["method"] == "GET" and r["user_agent"] == "partial" and r["note"] and r["outcome"] == "open"


def test_hello_cut_by_end_of_capture_is_kept_with_a_note(tmp_path: Path) -> None:
    frames = tcp_session([HELLO[:200]], close=False)
    rows, _ = read(write_pcap(tmp_path / "cut-tls.pcap", frames))
    (r,) = tls_rows(rows)
    assert r["note"] and "truncated" in r["note"] and r["sni"] == "example.com"


def test_capture_reader_stays_light() -> None:
    """The capture reader must not pull in pandas (0.4 s and ~80 MB): the live server and benchmarks import it."""
    import subprocess
    import sys

    code = "import sys, stormguard.features.capture.reader; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    from stormguard.features.capture import reader as capture

    from stormguard.schema import TLS_VERSION_SEP

    assert capture.TLS_VERSION_SEP == TLS_VERSION_SEP


# --- more encapsulations and HTTP corner cases ----------------------------------------------------------------

def _ipv6_session() -> list[bytes]:
    src = bytes.fromhex("fd000000000000000000000000000001")
    dst = bytes.fromhex("fd000000000000000000000000000002")
    return [ipv6(src, dst, 6, tcp(1234, 443, 1, SYN)), ipv6(src, dst, 6, tcp(1234, 443, 2, PSH | ACK, HELLO))]


@pytest.mark.parametrize(("linktype", "frames"), [
    (1, [eth(p, 0x86DD, vlans=(7,)) for p in _ipv6_session()]),  # VLAN + IPv6
    (1, [eth(b"\x11\x00\x00\x01" + u16(len(p) + 2) + b"\x00\x21" + p, 0x8864) for p in _session_ip()]),  # PPPoE
    (1, [eth(b"\x00\x01\x40\x40" + b"\x00\x02\x01\x40" + p, 0x8847) for p in _session_ip()]),  # MPLS, 2 labels
    (12, _session_ip()),
    (229, _ipv6_session()),
    (113, [struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, 0x86DD) + p for p in _ipv6_session()]),
    (1, [eth(ipv4("192.168.0.1", "192.168.0.2", 41, p)) for p in _ipv6_session()]),  # 6in4
    (1, [eth(ipv4("192.168.0.1", "192.168.0.2", 4, p)) for p in _session_ip()]),  # IP-in-IP
    (1, [eth(ipv4("172.16.0.1", "172.16.0.2", 47, b"\x00\x00" + u16(0x22EB) + b"\x00" * 12 + eth(p)))
         for p in _session_ip()]),  # ERSPAN type III
])
def test_more_encapsulations(tmp_path: Path, linktype: int, frames: list[bytes]) -> None:
    rows, _ = read(write_pcap(tmp_path / "e.pcap", frames, linktype=linktype))
    assert [r["ja4"] for r in tls_rows(rows)] == [CHROME_JA4]


def test_http_chunked_body_then_next_request_and_pipelining(tmp_path: Path) -> None:
    chunked = b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    nxt = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    pipelined = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    frames = tcp_session([chunked, nxt], sport=80, cport=5000) + tcp_session([pipelined], sport=80, cport=5001)
    rows, _ = read(write_pcap(tmp_path / "h.pcap", frames))
    assert sorted(r["path"] for r in rows) == ["/a", "/b", "/next", "/up"]


def test_dtls_hello_verify_retry_gives_two_rows(tmp_path: Path) -> None:
    def rec(cookie: bytes, mseq: int) -> bytes:
        body = hello_body(version=0xFEFD, ciphers=[0xC02B], cookie=cookie, extensions=[ext(23, b"")])
        hs = b"\x01" + u24(len(body)) + u16(mseq) + u24(0) + u24(len(body)) + body
        return b"\x16\xfe\xff" + u16(0) + b"\x00" * 6 + u16(len(hs)) + hs

    c, s = "10.3.3.1", "10.3.3.2"
    verify = b"\x16\xfe\xff" + b"\x00" * 8 + u16(15) + b"\x03" + b"\x00" * 14
    frames = [eth(ipv4(c, s, 17, udp(7000, 4433, rec(b"", 0)))),
              eth(ipv4(s, c, 17, udp(4433, 7000, verify))),
              eth(ipv4(c, s, 17, udp(7000, 4433, rec(b"\xaa" * 20, 1))))]
    rows, _ = read(write_pcap(tmp_path / "dv.pcap", frames))
    assert [(r["proto"], r["ch_index"], r["frame"]) for r in rows] == [("dtls", 0, 1), ("dtls", 1, 3)]
    assert rows[0]["ja3"] == rows[1]["ja3"]  # the cookie is not part of JA3
    assert rows[0]["packets"] == 3
