"""QUIC through read_capture: a client Initial built and protected here (RFC 9001 §5) → a ``quic`` row with JA4 'q'."""

from __future__ import annotations

from pathlib import Path

import pytest
from stormguard.features.capture.reader import read_capture
from test_tls_builders import CHROME_JA4, chrome_like_hello, eth, ipv4, udp, write_pcap

from stormguard.report import ReplayStats

quic = pytest.importorskip("stormguard.features.capture.quic")
aead = pytest.importorskip("cryptography.hazmat.primitives.ciphers.aead")
ciphers = pytest.importorskip("cryptography.hazmat.primitives.ciphers")


def _varint(v: int, size: int) -> bytes:
    return (({1: 0, 2: 1, 4: 2, 8: 3}[size] << (8 * size - 2)) | v).to_bytes(size, "big")


def _initial(crypto: bytes, dcid: bytes, pn: int) -> bytes:
    """One protected QUIC v1 client Initial carrying ``crypto`` at offset 0, padded to 1200 bytes."""
    keys = quic.derive_client_initial_keys(dcid, 0x00000001)
    frame = b"\x06" + _varint(0, 1) + _varint(len(crypto), 2) + crypto
    pn_len = 2
    header_len = 1 + 4 + 1 + len(dcid) + 1 + 1 + 2 + pn_len
    payload = frame + bytes(max(0, 1200 - header_len - 16 - len(frame)))  # PADDING frames
    header = (bytes([0xC0 | (pn_len - 1)]) + (1).to_bytes(4, "big") + bytes([len(dcid)]) + dcid + b"\x00"
              + _varint(0, 1) + _varint(pn_len + len(payload) + 16, 2) + pn.to_bytes(pn_len, "big"))
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    sealed = aead.AESGCM(keys.key).encrypt(nonce, payload, header)
    sample = sealed[4 - pn_len:20 - pn_len]
    enc = ciphers.Cipher(ciphers.algorithms.AES(keys.hp), ciphers.modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    out = bytearray(header)
    out[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        out[len(header) - pn_len + i] ^= mask[1 + i]
    return bytes(out) + sealed


def test_quic_initial_gives_a_quic_row(tmp_path: Path) -> None:
    hello = chrome_like_hello()
    dcid = bytes.fromhex("8394c8f03e515708")
    frames = [eth(ipv4("192.0.2.10", "198.51.100.7", 17, udp(51000, 443, _initial(hello, dcid, 0)))),
              eth(ipv4("198.51.100.7", "192.0.2.10", 17, udp(443, 51000, b"\xc0" + b"\x00" * 40)))]
    stats = ReplayStats()
    rows = list(read_capture(write_pcap(tmp_path / "q.pcap", frames), stats))
    (r,) = rows
    assert r["proto"] == "quic" and r["transport"] == "udp" and r["frame"] == 1
    assert (r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"]) == ("192.0.2.10", 51000, "198.51.100.7", 443)
    assert r["ja4"] == "q" + CHROME_JA4[1:]
    assert r["sni"] == "example.com" and r["packets"] == 2
    assert stats.client_hellos == 1
