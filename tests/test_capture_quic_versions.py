"""QUIC Initials of every version tshark decrypts, checked against the real tshark.

A real ClientHello from the corpus (Chrome's, from ``salesforce-ja3/ssl-chrome.pcap``) is carried in the client
Initial of each QUIC version: IETF drafts 22-34, v1, v2, Facebook mvfst (0xfaceb001/2/e) and Google QUIC with TLS
(T050, T051: gQUIC frames in IETF-style packets). tshark (which holds its own salts) must decrypt every one of them
and give the JA3 read_capture gives; read_capture must give the JA4 FoxIO's reference computed for that hello with
the transport character ``q``. A greased version (0x?a?a?a?a) forces version negotiation: as in FoxIO's reference
(tshark's dissection) it gives no fingerprint, the client's retry in v1 does, and the greased Initial is counted.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from stormguard.features.capture.reader import read_capture
from test_capture_encapsulations import _hello_at
from test_quic import crypto_frame, protect_initial, varint
from test_tls_builders import eth, ipv4, udp, write_pcap

from stormguard.report import ReplayStats

pytestmark = pytest.mark.corpus

VERSIONS = {
    **{f"draft-{d}": 0xFF000000 + d for d in range(22, 35)},
    "v1": 0x00000001,
    "v2": 0x6B3343CF,
    "mvfst-22": 0xFACEB001,
    "mvfst-27": 0xFACEB002,
    "mvfst-exp": 0xFACEB00E,
    "gquic-T050": 0x54303530,
    "gquic-T051": 0x54303531,
}


@pytest.fixture(scope="module")
def chrome(corpus: Path) -> tuple[bytes, str, str]:
    """(handshake message, JA3 by tshark, JA4 by FoxIO's reference) of a real Chrome ClientHello."""
    import csv

    rel = "salesforce-ja3/ssl-chrome.pcap"
    found = _hello_at(corpus / "pcap" / rel, 4)
    assert found
    with open(corpus / "expected" / "tshark" / (rel + ".csv"), newline="") as fh:
        (exp,) = [r for r in csv.DictReader(fh) if r["frame"] == "4"]
    return found[1][5:], exp["ja3"], exp["ja4"]


def _initial(version: int, msg: bytes, dcid: bytes) -> bytes:
    if version >> 8 == 0x543035:  # Google QUIC T05x: gQUIC CRYPTO frame (type 0x08)
        frames = b"\x08" + varint(0) + varint(len(msg)) + msg
    else:
        frames = crypto_frame(0, msg)
    return protect_initial(frames + bytes(max(0, 1162 - len(frames) - len(dcid))), dcid=dcid, version=version)


def _tshark(path: Path) -> dict[int, str]:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark not installed (Debian package tshark; .ci/run installs it)")
    out = subprocess.run([tshark, "-n", "-r", str(path), "-Y", "tls.handshake.type == 1", "-T", "fields",
                          "-e", "udp.srcport", "-e", "tls.handshake.ja3"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return {int(p): j for p, j in (line.split("\t") for line in out.splitlines())}


def test_every_quic_version_matches_tshark(chrome: tuple, tmp_path: Path) -> None:
    msg, ja3, ja4 = chrome
    ports = {}
    frames = []
    for i, (name, version) in enumerate(VERSIONS.items()):
        port = 41000 + i
        ports[port] = name
        dcid = bytes([i]) * 8
        frames.append(eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(port, 443, _initial(version, msg, dcid)))))
    path = write_pcap(tmp_path / "quic.pcap", frames)
    theirs = _tshark(path)
    assert {ports[p] for p in theirs} == set(VERSIONS), f"tshark missed: {set(VERSIONS) - {ports[p] for p in theirs}}"
    assert set(theirs.values()) == {ja3}
    stats = ReplayStats()
    rows = {r["src_port"]: r for r in read_capture(path, stats) if r["proto"] == "quic"}
    got = {ports[p]: (r["ja3"], r["ja4"]) for p, r in rows.items()}
    want = {name: (ja3, "q" + ja4[1:]) for name in VERSIONS}
    assert got == want
    assert stats.client_hellos == len(VERSIONS)


def test_greased_version_gives_no_fingerprint_the_retry_does(chrome: tuple, tmp_path: Path) -> None:
    msg, ja3, ja4 = chrome
    greased = bytes([0xC3]) + bytes.fromhex("1a2a3a4a") + b"\x08" + b"\x11" * 8 + b"\x00" + varint(0) \
        + varint(1200, 2) + b"\x5a" * 1200
    vn = bytes([0xC5])  # unused bits random (here with the 0x40 bit set, as most servers send it)
    vn = vn + b"\x00\x00\x00\x00" + b"\x00" + b"\x08" + b"\x11" * 8 + bytes.fromhex("00000001")
    frames = [
        eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(40000, 443, greased))),
        eth(ipv4("10.0.0.2", "10.0.0.1", 17, udp(443, 40000, vn))),
        eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(40000, 443, _initial(1, msg, b"\x22" * 8)))),
    ]
    path = write_pcap(tmp_path / "grease.pcap", frames)
    assert _tshark(path) == {40000: ja3}
    stats = ReplayStats()
    rows = [r for r in read_capture(path, stats) if r["proto"] == "quic"]
    assert [(r["frame"], r["ja3"], r["ja4"]) for r in rows] == [(3, ja3, "q" + ja4[1:])]
    assert stats.skipped["QUIC Initials with a greased version (version negotiation follows)"] == 1
    assert stats.skipped["QUIC version negotiation packets"] == 1
