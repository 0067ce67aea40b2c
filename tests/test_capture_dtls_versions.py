"""DTLS ClientHellos against the real tshark: every version value, fragmented handshakes, HelloVerifyRequest retries.

A real ClientHello from the corpus (curl's, ``salesforce-ja3/ssl-curl.pcap``) is turned into a DTLS ClientHello
(legacy version DTLS 1.0 0xfeff, 1.2 0xfefd, 1.3's 0xfefc, and OpenSSL's pre-standard 0x0100; an empty cookie) and
sent whole, fragmented over several records in one datagram, over several datagrams out of order with a duplicate,
and as the second ClientHello after a HelloVerifyRequest (with the cookie); and once inside CAPWAP's DTLS header (a
wireless access point to its controller). Every hello tshark fingerprints (all
but the out-of-order ones: tshark 4.0 lists their fragments without a JA3), read_capture finds from the same frame
with the same JA3; read_capture finds every generated hello, with the JA3 tshark gives that DTLS version and the
JA4 FoxIO's reference computes: the TLS hello's JA4 with transport ``d`` and the version characters of the DTLS
version (``d1``/``d2``/``d3``/``s1``).
"""

from __future__ import annotations

import csv
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from stormguard.features.capture.reader import read_capture
from test_capture_encapsulations import _hello_at
from test_tls_builders import eth, ipv4, udp, write_pcap

from stormguard.report import ReplayStats

pytestmark = pytest.mark.corpus

VERSIONS = {0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3", 0x0100: "s1"}


@pytest.fixture(scope="module")
def curl(corpus: Path) -> tuple[bytes, str]:
    """(ClientHello body, JA4 by FoxIO's reference) of curl's real TLS 1.2 ClientHello."""
    rel = "salesforce-ja3/ssl-curl.pcap"
    found = _hello_at(corpus / "pcap" / rel, 4)
    assert found
    with open(corpus / "expected" / "tshark" / (rel + ".csv"), newline="") as fh:
        (exp,) = [r for r in csv.DictReader(fh) if r["frame"] == "4"]
    assert "2b" not in exp["ja3_full"].split(",")[2].split("-")  # no supported_versions: legacy version counts
    return found[1][9:], exp["ja4"]


def _dtls_body(tls_body: bytes, version: int, cookie: bytes) -> bytes:
    sid_end = 35 + tls_body[34]
    return struct.pack("!H", version) + tls_body[2:sid_end] + bytes([len(cookie)]) + cookie + tls_body[sid_end:]


def _record(version: int, seq: int, msg: bytes) -> bytes:
    return struct.pack("!BHH", 22, version, 0) + seq.to_bytes(6, "big") + struct.pack("!H", len(msg)) + msg


def _fragment(body: bytes, mseq: int, off: int, length: int, mtype: int = 1) -> bytes:
    return (bytes([mtype]) + len(body).to_bytes(3, "big") + struct.pack("!H", mseq) + off.to_bytes(3, "big")
            + length.to_bytes(3, "big") + body[off:off + length])


def _datagrams(body: bytes, version: int, how: str, mseq: int = 0) -> list[bytes]:
    rv = 0xFEFF if version == 0xFEFC else version  # DTLS 1.3 sends its hello in a DTLS 1.0/1.2 record
    if how == "whole":
        return [_record(rv, mseq, _fragment(body, mseq, 0, len(body)))]
    third = len(body) // 3
    parts = [(0, third), (third, third), (2 * third, len(body) - 2 * third)]
    recs = [_record(rv, mseq * 3 + i, _fragment(body, mseq, o, n)) for i, (o, n) in enumerate(parts)]
    if how == "records":  # three records in one datagram
        return [b"".join(recs)]
    return [recs[2], recs[0], recs[0], recs[1]]  # three datagrams, out of order, one duplicated


def _tshark(path: Path) -> list[tuple[int, int, str]]:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark not installed (Debian package tshark; .ci/run installs it)")
    out = subprocess.run([tshark, "-n", "-r", str(path), "-Y", "dtls.handshake.type == 1", "-T", "fields",
                          "-e", "frame.number", "-e", "udp.srcport", "-e", "dtls.handshake.ja3"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [(int(f), int(p), j) for f, p, j in (line.split("\t") for line in out.splitlines())]


def test_dtls_versions_fragments_and_retries_match_tshark(curl: tuple, tmp_path: Path) -> None:
    body, ja4 = curl
    frames: list[bytes] = []
    expect: dict[int, tuple] = {}
    port = 42000
    for version, vchars in VERSIONS.items():
        for how in ("whole", "records", "datagrams"):
            port += 1
            c2s = [eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(port, 4433, d)))
                   for d in _datagrams(_dtls_body(body, version, b""), version, how)]
            frames += c2s
            expect[port] = (version, how, [len(frames)], "d" + vchars + ja4[3:])
        # HelloVerifyRequest, then the same hello again with the cookie (message_seq 1)
        port += 1
        cookie = bytes(range(20))
        hvr = _record(0xFEFF, 0, _fragment(b"\xfe\xff\x14" + cookie, 0, 0, 23, mtype=3))
        frames.append(eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(port, 4433,
                                                               _datagrams(_dtls_body(body, version, b""),
                                                                          version, "whole")[0]))))
        first = len(frames)
        frames.append(eth(ipv4("10.0.0.2", "10.0.0.1", 17, udp(4433, port, hvr))))
        frames += [eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(port, 4433, d)))
                   for d in _datagrams(_dtls_body(body, version, cookie), version, "records", mseq=1)]
        expect[port] = (version, "hello-verify-retry", [first, len(frames)], "d" + vchars + ja4[3:])
    # a wireless access point's DTLS hello to its controller: CAPWAP control channel, DTLS header (preamble 1)
    port += 1
    frames.append(eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(port, 5246, b"\x01\x00\x00\x00" + _datagrams(
        _dtls_body(body, 0xFEFD, b""), 0xFEFD, "whole")[0]))))
    expect[port] = (0xFEFD, "capwap-dtls", [len(frames)], "dd2" + ja4[3:])
    path = write_pcap(tmp_path / "dtls.pcap", frames)

    # tshark lists every fragment of an out-of-order hello but fingerprints none of them: only rows with a JA3
    theirs = [t for t in _tshark(path) if t[2]]
    assert {p for _, p, _ in theirs} == {p for p, e in expect.items() if e[1] != "datagrams"}
    ja3_of = {expect[p][0]: j for _, p, j in theirs}  # the DTLS version is part of JA3
    assert len(set(ja3_of.values())) == len(VERSIONS)
    stats = ReplayStats()
    ours: dict[int, list[dict]] = {}
    for r in read_capture(path, stats):
        if r["proto"] == "dtls":
            ours.setdefault(r["src_port"], []).append(r)
    for frame, port, j in theirs:
        assert any(r["ja3"] == j and r["frame"] == frame for r in ours.get(port, [])), (expect[port], frame)
    for port, (version, how, frames_at, want_ja4) in expect.items():
        rows = sorted(ours.get(port, []), key=lambda r: r["frame"])
        assert [(r["frame"], r["ja3"], r["ja4"], r["transport"]) for r in rows] == [
            (f, ja3_of[version], want_ja4, "udp") for f in frames_at], (hex(version), how)
        assert [r["ch_index"] for r in rows] == list(range(len(frames_at)))
    assert not stats.problems
