"""Builders for hand-made ClientHellos, packets and capture files (used by the TLS/JA3/JA4/capture tests).

Everything here is built from the RFCs, not from captures, so these tests run without the reference corpus.
The few tests at the bottom check the builders themselves.
"""

from __future__ import annotations

import struct
from pathlib import Path

# --- TLS ---------------------------------------------------------------------------------------------------


def u8(n: int) -> bytes:
    return bytes([n])


def u16(n: int) -> bytes:
    return struct.pack("!H", n)


def u24(n: int) -> bytes:
    return struct.pack("!I", n)[1:]


def vec8(b: bytes) -> bytes:
    return u8(len(b)) + b


def vec16(b: bytes) -> bytes:
    return u16(len(b)) + b


def ext(etype: int, body: bytes) -> tuple[int, bytes]:
    return etype, body


def ext_sni(name: str) -> tuple[int, bytes]:
    return 0, vec16(u8(0) + vec16(name.encode()))


def ext_alpn(*protos: bytes) -> tuple[int, bytes]:
    return 16, vec16(b"".join(vec8(p) for p in protos))


def ext_groups(*groups: int) -> tuple[int, bytes]:
    return 10, vec16(b"".join(u16(g) for g in groups))


def ext_point_formats(*fmts: int) -> tuple[int, bytes]:
    return 11, vec8(bytes(fmts))


def ext_sig_algs(*algs: int) -> tuple[int, bytes]:
    return 13, vec16(b"".join(u16(a) for a in algs))


def ext_versions(*versions: int) -> tuple[int, bytes]:
    return 43, vec8(b"".join(u16(v) for v in versions))


def hello_body(version: int = 0x0303, ciphers: list[int] | tuple[int, ...] = (0x1301, 0xC02F),
               extensions: list[tuple[int, bytes]] | None = None, session_id: bytes = b"\x11" * 32,
               cookie: bytes | None = None, random: bytes = b"\x42" * 32) -> bytes:
    body = u16(version) + random + vec8(session_id)
    if cookie is not None:  # DTLS
        body += vec8(cookie)
    body += vec16(b"".join(u16(c) for c in ciphers)) + vec8(b"\x00")
    if extensions is not None:
        body += vec16(b"".join(u16(t) + vec16(d) for t, d in extensions))
    return body


def client_hello(**kw) -> bytes:
    """A complete handshake message: type 1 + uint24 length + body."""
    body = hello_body(**kw)
    return b"\x01" + u24(len(body)) + body


def records(ctype: int, data: bytes, size: int = 16384, version: int = 0x0301) -> bytes:
    out = b""
    for i in range(0, max(len(data), 1), size):
        chunk = data[i:i + size]
        out += u8(ctype) + u16(version) + vec16(chunk)
    return out


def sslv2_hello(version: int = 0x0301, specs: tuple[int, ...] = (0x010080, 0x000035), challenge: bytes = b"\x33" * 16
                ) -> bytes:
    body = b"\x01" + u16(version) + u16(3 * len(specs)) + u16(0) + u16(len(challenge))
    body += b"".join(struct.pack("!I", s)[1:] for s in specs) + challenge
    return u16(0x8000 | len(body)) + body


# FoxIO's own JA4 unit-test vector (rust/ja4/src/tls.rs test_client_stats_into_out)
CHROME_CIPHERS = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014,
                  0x009C, 0x009D, 0x002F, 0x0035]
CHROME_EXTS = [0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005, 0x0023, 0x0012, 0x002B,
               0xFF01, 0x000B, 0x000A, 0x0015]
CHROME_SIGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
CHROME_JA4 = "t13d1516h2_8daaf6152771_e5627efa2ab1"
CHROME_JA4_R = ("t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,"
                "000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,"
                "0601")


def chrome_like_hello(grease: bool = True, sni: str = "example.com") -> bytes:
    """A ClientHello with FoxIO's vector's ciphers/extensions/signature algorithms (plus GREASE if asked)."""
    exts = []
    for e in CHROME_EXTS:
        if e == 0:
            exts.append(ext_sni(sni))
        elif e == 16:
            exts.append(ext_alpn(b"h2", b"http/1.1"))
        elif e == 13:
            exts.append(ext_sig_algs(*CHROME_SIGS))
        elif e == 43:
            exts.append(ext_versions(*([0x7A7A] if grease else []), 0x0304, 0x0303))
        elif e == 10:
            exts.append(ext_groups(*([0x2A2A] if grease else []), 29, 23, 24))
        elif e == 11:
            exts.append(ext_point_formats(0))
        else:
            exts.append((e, b""))
    ciphers = list(CHROME_CIPHERS)
    if grease:
        ciphers = [0x0A0A, *ciphers]
        exts = [(0xDADA, b""), *exts, (0x1A1A, b"\x00")]
    return client_hello(ciphers=ciphers, extensions=exts)


# --- packets ---------------------------------------------------------------------------------------------------

def ip4(s: str) -> bytes:
    return bytes(int(x) for x in s.split("."))


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 1, frag: int = 0) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, proto, 0, ip4(src), ip4(dst))
    return hdr + payload


def ipv6(src: bytes, dst: bytes, nh: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB", 0x60000000, len(payload), nh, 64) + src + dst + payload


def tcp(sport: int, dport: int, seq: int, flags: int, payload: bytes = b"", ack: int = 0) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def eth(payload: bytes, ethertype: int = 0x0800, vlans: tuple[int, ...] = ()) -> bytes:
    hdr = b"\x02" * 6 + b"\x04" * 6
    for v in vlans:
        hdr += u16(0x8100) + u16(v)
    return hdr + u16(ethertype) + payload


SYN, FIN, RST, PSH, ACK = 0x02, 0x01, 0x04, 0x08, 0x10


def tcp_session(client_data: list[bytes], server_data: list[bytes] = (), c: str = "10.0.0.1", s: str = "10.0.0.2",
                cport: int = 40000, sport: int = 443, isn_c: int = 1000, isn_s: int = 5000, close: bool = True,
                wrap=eth) -> list[bytes]:
    """Handshake, client segments, server segments, FIN/FIN; returns link-layer frames."""
    def c2s(seq: int, flags: int, data: bytes = b"") -> bytes:
        return wrap(ipv4(c, s, 6, tcp(cport, sport, seq, flags, data)))

    def s2c(seq: int, flags: int, data: bytes = b"") -> bytes:
        return wrap(ipv4(s, c, 6, tcp(sport, cport, seq, flags, data)))

    pkts = [c2s(isn_c, SYN), s2c(isn_s, SYN | ACK), c2s(isn_c + 1, ACK)]
    seq = isn_c + 1
    for d in client_data:
        pkts.append(c2s(seq, PSH | ACK, d))
        seq += len(d)
    sseq = isn_s + 1
    for d in server_data:
        pkts.append(s2c(sseq, PSH | ACK, d))
        sseq += len(d)
    if close:
        pkts += [c2s(seq, FIN | ACK), s2c(sseq, FIN | ACK), c2s(seq + 1, ACK)]
    return pkts


# --- capture files ---------------------------------------------------------------------------------------------

def fragmented_flow(c: str, s: str, data: bytes, size: int = 104) -> list[bytes]:
    """A SYN, then ``data`` in one TCP segment cut into IPv4 fragments of ``size`` bytes arriving last-first."""
    seg = tcp(4000, 443, 101, PSH | ACK, data)
    parts = [seg[i:i + size] for i in range(0, len(seg), size)]
    frags = []
    off = 0
    for i, p in enumerate(parts):
        more = 0x2000 if i < len(parts) - 1 else 0
        frags.append(eth(ipv4(c, s, 6, p, ident=42, frag=more | (off // 8))))
        off += len(p)
    return [eth(ipv4(c, s, 6, tcp(4000, 443, 100, SYN))), *frags[::-1]]


def write_pcap(path: Path, frames: list[bytes], linktype: int = 1, endian: str = "<", nano: bool = False,
               t0: float = 1_700_000_000.0) -> Path:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for i, f in enumerate(frames):
        ts = t0 + i * 0.001
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nano else 1e6))
        out.append(struct.pack(endian + "IIII", sec, frac, len(f), len(f)) + f)
    path.write_bytes(b"".join(out))
    return path


def _opt(code: int, value: bytes, endian: str) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack(endian + "HH", code, len(value)) + value + b"\x00" * pad


def _block(btype: int, body: bytes, endian: str) -> bytes:
    n = 12 + len(body)
    return struct.pack(endian + "II", btype, n) + body + struct.pack(endian + "I", n)


def write_pcapng(path: Path, frames: list[tuple[int, bytes]], interfaces: list[tuple[int, int]] = ((1, 6),),
                 endian: str = "<", t0: float = 1_700_000_000.0, extra_blocks: bool = True) -> Path:
    """``frames``: (interface id, bytes); ``interfaces``: (linktype, if_tsresol exponent of 10)."""
    out = _block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1), endian)
    for lt, res in interfaces:
        opts = (_opt(9, bytes([res]), endian) + _opt(0, b"", endian)) if res != 6 else b""
        out += _block(1, struct.pack(endian + "HHI", lt, 0, 0) + opts, endian)
    if extra_blocks:
        out += _block(0x0BAD, b"unknown block!!!", endian)  # skipped by readers
    for i, (ifid, f) in enumerate(frames):
        res = interfaces[ifid][1]
        v = round((t0 + i * 0.001) * 10 ** res)
        pad = (-len(f)) % 4
        out += _block(6, struct.pack(endian + "IIIII", ifid, v >> 32, v & 0xFFFFFFFF, len(f), len(f)) + f
                      + b"\x00" * pad, endian)
    path.write_bytes(out)
    return path


# --- tests of the builders -------------------------------------------------------------------------------------

def test_client_hello_length_fields() -> None:
    msg = client_hello(extensions=[ext_sni("a.example")])
    assert msg[0] == 1
    assert int.from_bytes(msg[1:4], "big") == len(msg) - 4


def test_pcap_writer_roundtrip(tmp_path: Path) -> None:
    p = write_pcap(tmp_path / "x.pcap", [b"abc", b"defg"])
    data = p.read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1"
    assert len(data) == 24 + 16 * 2 + 7
