"""Differential test against the real tshark: real ClientHellos from the corpus in every encapsulation.

Real ClientHellos (taken byte for byte from corpus captures, with the JA3 tshark computed and the JA4 FoxIO's
reference computed for them in ``expected/tshark``) are placed into TCP sessions over each encapsulation tshark
decodes by default and that carries IP (VLAN, QinQ, MPLS, PPPoE, GRE flavours, ERSPAN II/III, VXLAN, Geneve, GTP-U,
CAPWAP data with 802.3 and 802.11+LLC/SNAP frames, IP-in-IP, 6in4, Teredo, Linux SLL/SLL2, radiotap+802.11, bare
802.11, null/loopback, raw IP, PPP), in one, several (with a retransmission) or header-split segments. One pcapng
with an interface per link type is written to tmp; tshark reads it once.

Required: every ClientHello tshark finds, read_capture finds too, from the same frame with the same JA3; every
generated hello is found with the JA3 and the FoxIO JA4/JA4_r of the original; tshark finds the hello in every
encapsulation (so a wrongly built generator cannot pass by being invisible to both); nothing is skipped.
"""

from __future__ import annotations

import csv
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from stormguard.features.capture.reader import read_capture
from test_tls_builders import ACK, FIN, PSH, SYN, eth, ip4, ipv4, ipv6, tcp, u16, udp, write_pcapng

from stormguard.report import ReplayStats

pytestmark = pytest.mark.corpus

#: (corpus capture, frame) of ClientHellos from different clients, each whole in one segment.
SOURCES = [
    ("salesforce-ja3/ssl-chrome.pcap", 4),  # Chrome, GREASE, TLS 1.3
    ("salesforce-ja3/ssl-curl.pcap", 4),  # curl, TLS 1.2
    ("foxio-ja4/latest.pcapng", 10),  # Firefox-like TLS 1.3
    ("suricata-verify/ja4-tls__input.pcap", 4),  # no SNI, ALPN "spdy/1"
    ("suricata-verify/bug-5713-01__TLSv1-Extracted-MaliciousC2.pcap", 4),  # TLS 1.0, few extensions
    ("suricata-verify/tls__tls-fin-close-data-01__debug-s13.pcap", 4),  # 1,918 bytes
]

V6_C = bytes.fromhex("20010db8000000000000000000000001")
V6_S = bytes.fromhex("20010db8000000000000000000000002")


def u32(n: int) -> bytes:
    return struct.pack("!I", n)


def _ethertype(ip: bytes) -> int:
    return 0x0800 if ip[0] >> 4 == 4 else 0x86DD


def _outer(proto: int, payload: bytes) -> bytes:
    return eth(ipv4("192.0.2.1", "192.0.2.2", proto, payload))


def _outer_udp(sport: int, dport: int, payload: bytes) -> bytes:
    return _outer(17, udp(sport, dport, payload))


def _dot11(ip: bytes, qos: bool, swap_fc: bool = False) -> bytes:
    """An 802.11 data frame to the AP (ToDS), QoS or not, with an LLC/SNAP header.

    ``swap_fc``: frame-control bytes swapped, as (Cisco) access points send them in CAPWAP and as tshark reads
    CAPWAP by default (``capwap.swap_fc``).
    """
    fc = b"\x88\x01" if qos else b"\x08\x01"
    if swap_fc:
        fc = fc[::-1]
    hdr = fc + b"\x00\x00" + b"\x02" * 6 + b"\x04" * 6 + b"\x06" * 6 + b"\x10\x00" + (b"\x00\x00" if qos else b"")
    return hdr + b"\xaa\xaa\x03\x00\x00\x00" + u16(_ethertype(ip)) + ip


def _capwap(native: bool, frame: bytes) -> bytes:
    # preamble 0; HLEN 2 words; RID 0; WBID 1 (802.11); T (native frame) bit; no flags; fragment id/offset 0
    return b"\x00\x10" + bytes([0x03 if native else 0x02, 0]) + b"\x00" * 4 + frame


def _gre(flags: int, proto: int, extra: bytes, inner: bytes) -> bytes:
    return _outer(47, u16(flags) + u16(proto) + extra + inner)


def _radiotap(frame: bytes) -> bytes:
    return b"\x00\x00" + struct.pack("<HI", 9, 0x2) + b"\x00" + frame  # one field: Flags (no FCS)


#: name -> (link type, inner IP version, wrap: IP packet -> frame)
ENCAPS: dict[str, tuple[int, int, Callable[[bytes], bytes]]] = {
    "ethernet": (1, 4, lambda ip: eth(ip)),
    "ethernet-ipv6": (1, 6, lambda ip: eth(ip, 0x86DD)),
    "vlan": (1, 4, lambda ip: eth(ip, vlans=(100,))),
    "qinq": (1, 4, lambda ip: b"\x02" * 6 + b"\x04" * 6 + u16(0x88A8) + u16(10) + u16(0x8100) + u16(20)
             + u16(0x0800) + ip),
    "mpls": (1, 4, lambda ip: eth(u32((16 << 12) | 64) + u32((17 << 12) | 0x100 | 64) + ip, 0x8847)),
    "pppoe": (1, 4, lambda ip: eth(b"\x11\x00\x00\x01" + u16(len(ip) + 2) + u16(0x21) + ip, 0x8864)),
    "gre": (1, 4, lambda ip: _gre(0, 0x0800, b"", ip)),
    "gre-checksum-key-seq": (1, 4, lambda ip: _gre(0xB000, 0x0800, b"\x00" * 4 + u32(7) + u32(1), ip)),
    "gre-teb": (1, 4, lambda ip: _gre(0x2000, 0x6558, u32(9), eth(ip))),
    "erspan-ii": (1, 4, lambda ip: _gre(0x1000, 0x88BE, u32(1) + struct.pack("!HHI", 0x1000 | 5, 3, 0), eth(ip))),
    "erspan-iii": (1, 4, lambda ip: _gre(0x1000, 0x22EB, u32(1) + struct.pack("!HHIHH", 0x2000 | 5, 3, 0, 0, 0),
                                         eth(ip))),
    "vxlan": (1, 4, lambda ip: _outer_udp(50000, 4789, b"\x08\x00\x00\x00\x00\x00\x2a\x00" + eth(ip))),
    "geneve": (1, 4, lambda ip: _outer_udp(50000, 6081, b"\x00\x00\x65\x58\x00\x00\x2a\x00" + eth(ip))),
    "gtp-u": (1, 4, lambda ip: _outer_udp(2152, 2152, b"\x30\xff" + u16(len(ip)) + u32(0x1234) + ip)),
    "gtp-u-ext": (1, 4, lambda ip: _outer_udp(2152, 2152, b"\x34\xff" + u16(len(ip) + 8) + u32(0x1234)
                                              + b"\x00\x00\x00\x85" + b"\x01\x10\x09\x00" + ip)),
    "capwap-802.3": (1, 4, lambda ip: _outer_udp(50000, 5247, _capwap(False, eth(ip)))),
    "capwap-802.11": (1, 4, lambda ip: _outer_udp(50000, 5247, _capwap(True, _dot11(ip, qos=True, swap_fc=True)))),
    "ip-in-ip": (1, 4, lambda ip: _outer(4, ip)),
    "6in4": (1, 6, lambda ip: _outer(41, ip)),
    "teredo": (1, 6, lambda ip: _outer_udp(50000, 3544, ip)),
    "sll": (113, 4, lambda ip: u16(0) + u16(1) + u16(6) + b"\x02" * 6 + b"\x00\x00" + u16(0x0800) + ip),
    "sll2": (276, 4, lambda ip: u16(0x0800) + u16(0) + u32(1) + u16(1) + b"\x00\x06" + b"\x02" * 6 + b"\x00\x00"
             + ip),
    "radiotap-802.11": (127, 4, lambda ip: _radiotap(_dot11(ip, qos=True))),
    "802.11": (105, 4, lambda ip: _dot11(ip, qos=False)),
    "null": (0, 4, lambda ip: struct.pack("<I", 2) + ip),
    "null-ipv6": (0, 6, lambda ip: struct.pack("<I", 24) + ip),
    "raw": (101, 4, lambda ip: ip),
    "ppp": (9, 4, lambda ip: b"\xff\x03\x00\x21" + ip),
}


def _split(hello: bytes, how: int) -> list[bytes]:
    if how == 0:
        return [hello]
    if how == 1:
        third = len(hello) // 3
        return [hello[:third], hello[third:2 * third], hello[third:2 * third], hello[2 * third:]]  # a retransmit
    return [hello[:3], hello[3:]]  # the record header cut in two


def _session(hello: bytes, how: int, cport: int, v: int) -> list[bytes]:
    """IP packets of a TCP session client -> server:443 carrying ``hello`` cut as ``how`` says."""
    if v == 4:
        def c2s(seq: int, flags: int, data: bytes = b"") -> bytes:
            return ipv4("10.0.0.1", "10.0.0.2", 6, tcp(cport, 443, seq, flags, data))

        def s2c(seq: int, flags: int, data: bytes = b"") -> bytes:
            return ipv4("10.0.0.2", "10.0.0.1", 6, tcp(443, cport, seq, flags, data))
    else:
        def c2s(seq: int, flags: int, data: bytes = b"") -> bytes:
            return ipv6(V6_C, V6_S, 6, tcp(cport, 443, seq, flags, data))

        def s2c(seq: int, flags: int, data: bytes = b"") -> bytes:
            return ipv6(V6_S, V6_C, 6, tcp(443, cport, seq, flags, data))
    pkts = [c2s(1000, SYN), s2c(5000, SYN | ACK), c2s(1001, ACK)]
    seq = 1001
    sent = set()
    for seg in _split(hello, how):
        start = seq if seg not in sent else seq - len(seg)  # a retransmission repeats the previous segment
        pkts.append(c2s(start, PSH | ACK, seg))
        if seg not in sent:
            seq += len(seg)
            sent.add(seg)
    return pkts + [c2s(seq, FIN | ACK), s2c(5001, FIN | ACK), c2s(seq + 1, ACK)]


def _hello_at(path: Path, frame: int | None) -> tuple[int, bytes] | None:
    """The first TCP payload (at ``frame``, if given) that is one whole ClientHello record, over Ethernet."""
    dpkt = pytest.importorskip("dpkt")
    with open(path, "rb") as fh:
        reader = dpkt.pcapng.Reader(fh) if path.suffix == ".pcapng" else dpkt.pcap.Reader(fh)
        for n, (_ts, buf) in enumerate(reader, 1):
            if frame is not None and n != frame:
                continue
            l3 = dpkt.ethernet.Ethernet(buf).data
            seg = getattr(l3, "data", None)
            if isinstance(seg, dpkt.tcp.TCP):
                d = bytes(seg.data)
                if len(d) > 9 and d[0] == 22 and d[5] == 1 and int.from_bytes(d[3:5], "big") == len(d) - 5:
                    return n, d
    return None


@pytest.fixture(scope="module")
def hellos(corpus: Path) -> list[tuple[bytes, dict]]:
    """(record bytes, the expected tshark/FoxIO row) for each source hello."""
    out = []
    for rel, frame in SOURCES:
        path = corpus / "pcap" / rel
        found = _hello_at(path, frame)
        assert found, f"no single-segment ClientHello in {path}"
        n, data = found
        with open(corpus / "expected" / "tshark" / (rel + ".csv"), newline="") as fh:
            (exp,) = [r for r in csv.DictReader(fh) if int(r["frame"]) == n]
        assert exp["ja3"] and exp["ja4"], exp
        out.append((data, exp))
    assert len({e["ja3"] for _, e in out}) == len(out), "source hellos should differ"
    return out


@pytest.fixture(scope="module")
def generated(hellos: list, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, tuple]]:
    """The capture and, per client port, (encapsulation, segmentation, expected row)."""
    lts = sorted({lt for lt, _, _ in ENCAPS.values()})
    ifid = {lt: i for i, lt in enumerate(lts)}
    frames: list[tuple[int, bytes]] = []
    meta: dict[int, tuple] = {}
    for e, (name, (lt, v, wrap)) in enumerate(ENCAPS.items()):
        for h, (data, exp) in enumerate(hellos):
            for how in range(3):
                cport = 20000 + e * 100 + h * 10 + how
                meta[cport] = (name, how, exp)
                frames += [(ifid[lt], wrap(ip)) for ip in _session(data, how, cport, v)]
    path = write_pcapng(tmp_path_factory.mktemp("encaps") / "encaps.pcapng", frames,
                        interfaces=[(lt, 6) for lt in lts], extra_blocks=False)
    return path, meta


def _tshark(path: Path) -> list[tuple[int, int, str]]:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark not installed (Debian package tshark; .ci/run installs it)")
    out = subprocess.run(
        [tshark, "-n", "-r", str(path), "-Y", "tls.handshake.type == 1", "-T", "fields", "-E", "occurrence=l",
         "-e", "frame.number", "-e", "tcp.srcport", "-e", "tls.handshake.ja3"],
        capture_output=True, text=True, timeout=120, check=True).stdout
    rows = []
    for line in out.splitlines():
        frame, sport, ja3 = line.split("\t")
        rows.append((int(frame), int(sport), ja3))
    return rows


@pytest.fixture(scope="module")
def both(generated: tuple) -> tuple[list, dict[int, list[dict]], ReplayStats, dict]:
    path, meta = generated
    stats = ReplayStats()
    ours: dict[int, list[dict]] = {}
    for r in read_capture(path, stats):
        if r["proto"] == "tls":
            ours.setdefault(r["src_port"], []).append(r)
    return _tshark(path), ours, stats, meta


def test_tshark_finds_every_generated_hello(both: tuple) -> None:
    """The generator is sound: tshark decodes every encapsulation and segmentation we build."""
    theirs, _, _, meta = both
    seen = {sport for _, sport, _ in theirs}
    missing = sorted({(meta[p][0], meta[p][1]) for p in meta if p not in seen})
    assert not missing, f"tshark does not see a ClientHello in: {missing}"


def test_every_tshark_hello_found_with_same_ja3_and_frame(both: tuple) -> None:
    theirs, ours, _, meta = both
    bad = []
    for frame, sport, ja3 in theirs:
        rows = ours.get(sport, [])
        if not any(r["ja3"] == ja3 and r["frame"] == frame for r in rows):
            bad.append((meta[sport][0], meta[sport][1], frame, ja3, [(r["frame"], r["ja3"]) for r in rows]))
    assert not bad, bad


def test_every_generated_hello_has_the_reference_ja3_and_ja4(both: tuple) -> None:
    _, ours, stats, meta = both
    bad = []
    for cport, (name, how, exp) in meta.items():
        rows = ours.get(cport, [])
        got = [(r["ja3"], r["ja4"], r["ja4_r"], r["sni"] or "") for r in rows]
        if got != [(exp["ja3"], exp["ja4"], exp["ja4_r"], exp["sni"])]:
            bad.append((name, how, got))
    assert not bad, bad
    assert stats.client_hellos == len(meta)


def test_nothing_skipped_in_the_generated_capture(both: tuple) -> None:
    _, _, stats, _ = both
    assert not stats.problems
    assert not {k: v for k, v in stats.skipped.items() if k.startswith("packets")}, stats.skipped


def test_skipped_encapsulations_are_counted_by_reason(tmp_path: Path) -> None:
    """Frames that cannot carry IP (or that we cannot open) are counted under what stopped them, not dropped."""
    ip = ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 443, 1, SYN))
    protected = bytearray(ENCAPS["802.11"][2](ip))
    protected[1] |= 0x40
    frames = [
        (0, eth(b"\x00" * 28, 0x0806)),  # ARP
        (0, eth(ip4("10.0.0.1") * 8, 0x88CC)),  # LLDP
        (0, _outer(1, b"\x08\x00" + b"\x00" * 30)),  # ICMP
        (0, _outer_udp(50000, 5247, b"\x00\x10\x03\x80" + b"\x00" * 4 + b"x" * 40)),  # fragmented CAPWAP
        (0, _outer_udp(2152, 2152, b"\x30\x01\x00\x04\x00\x00\x00\x01" + b"\x00" * 4)),  # GTP echo request
        (1, bytes(protected)),
        (1, b"\x48\x01" + b"\x00" * 30),  # null data
        (2, b"\x00" * 40),  # a link type we do not decode (USB)
    ]
    path = write_pcapng(tmp_path / "skip.pcapng", frames, interfaces=[(1, 6), (105, 6), (189, 6)])
    stats = ReplayStats()
    assert list(read_capture(path, stats)) == []
    sk = {k.removeprefix("packets skipped: "): v for k, v in stats.skipped.items()}
    assert sk == {
        "ethertype 0x0806 (not IP)": 1, "ethertype 0x88cc (not IP)": 1, "IP protocol 1 (not TCP/UDP)": 1,
        "fragmented CAPWAP data": 1, "GTP-U message other than G-PDU": 1,
        "802.11 protected (encrypted) data frame": 1, "802.11 data frame without payload (null data)": 1,
        "link type 189 not decoded": 1,
    }, stats.skipped
    assert [str(p) for p in stats.problems] == ["skip.pcapng: 1 packet(s) skipped: link type 189 not decoded"]
