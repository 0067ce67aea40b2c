"""TLS ClientHello parsing: handshake messages, the record layer of a client stream, SSLv2-compatible hellos.

:func:`parse_client_hello` takes one complete handshake message (type ``0x01`` + uint24 length + body) and is
shared by TCP/TLS, QUIC (CRYPTO frames) and DTLS (after fragment reassembly). :class:`TlsClientStream` turns
the reassembled bytes a client sends on a TCP connection into ClientHellos, reassembling handshake messages across
records and segments and stepping over ChangeCipherSpec so the second ClientHello after a HelloRetryRequest is
found too. Nothing here raises on malformed input: a hello that cannot be parsed yields ``None`` or a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import Struct, unpack_from

#: GREASE values (RFC 8701): 0x0a0a, 0x1a1a, ... 0xfafa.
GREASE = frozenset(((i << 12) | 0x0A0A | (i << 4)) for i in range(16))

EXT_SNI = 0
EXT_SUPPORTED_GROUPS = 10
EXT_EC_POINT_FORMATS = 11
EXT_SIG_ALGS = 13
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43

#: Extensions whose contents the fingerprints or records use (the others only count by type).
_PARSED_EXTENSIONS = frozenset((EXT_SNI, EXT_SUPPORTED_GROUPS, EXT_EC_POINT_FORMATS, EXT_SIG_ALGS, EXT_ALPN,
                                EXT_SUPPORTED_VERSIONS))
_HH = Struct("!HH").unpack_from

#: Largest handshake message we are willing to buffer (a ClientHello with a post-quantum key share is ~1.8 KB;
#: anything near 64 KB is hostile or garbage).
MAX_HELLO = 1 << 16


@dataclass(slots=True)
class ClientHello:
    """What the fingerprints need from a ClientHello, values as on the wire (GREASE still present)."""

    legacy_version: int
    ciphers: list[int] = field(default_factory=list)
    extensions: list[int] = field(default_factory=list)
    supported_groups: list[int] = field(default_factory=list)
    ec_point_formats: list[int] = field(default_factory=list)
    sig_algs: list[int] = field(default_factory=list)
    alpn: list[bytes] = field(default_factory=list)
    supported_versions: list[int] = field(default_factory=list)
    sni: str | None = None
    sslv2: bool = False  # SSLv2-compatible (2-byte header) hello: cipher specs are 3 bytes, no extensions
    note: str | None = None  # parsing anomaly (truncated extensions, ...)

    @property
    def offered_versions(self) -> list[int]:
        """Versions offered, GREASE removed: supported_versions if present, else the legacy version."""
        if EXT_SUPPORTED_VERSIONS in self.extensions:
            offered = [v for v in self.supported_versions if v not in GREASE]
            if offered:
                return offered
        return [self.legacy_version]

    @property
    def alpn_str(self) -> str | None:
        if not self.alpn:
            return None
        return ",".join(p.decode("utf-8", "backslashreplace") for p in self.alpn)


def _u16_list(data: bytes, start: int, end: int) -> list[int]:
    n = (end - start) // 2
    return list(unpack_from(f"!{n}H", data, start)) if n > 0 else []


def _parse_extension(ch: ClientHello, etype: int, data: bytes, p: int, end: int) -> None:
    """Fill the ClientHello fields an extension carries; malformed bodies are ignored (the type still counts)."""
    if etype == EXT_SUPPORTED_GROUPS:
        if end - p >= 2:
            n = unpack_from("!H", data, p)[0]
            ch.supported_groups = _u16_list(data, p + 2, min(end, p + 2 + n))
    elif etype == EXT_EC_POINT_FORMATS:
        if end - p >= 1:
            n = data[p]
            ch.ec_point_formats = list(data[p + 1:min(end, p + 1 + n)])
    elif etype == EXT_SIG_ALGS:
        if end - p >= 2:
            n = unpack_from("!H", data, p)[0]
            ch.sig_algs = _u16_list(data, p + 2, min(end, p + 2 + n))
    elif etype == EXT_SUPPORTED_VERSIONS:
        if end - p >= 1:
            n = data[p]
            ch.supported_versions = _u16_list(data, p + 1, min(end, p + 1 + n))
    elif etype == EXT_ALPN:
        if end - p >= 2:
            lend = min(end, p + 2 + unpack_from("!H", data, p)[0])
            q = p + 2
            out = []
            while q < lend:
                n = data[q]
                if q + 1 + n > lend:
                    break
                out.append(bytes(data[q + 1:q + 1 + n]))
                q += 1 + n
            ch.alpn = out
    elif etype == EXT_SNI:
        # server_name_list<2>: name_type(1) name<2>; the first host_name (type 0) counts
        if end - p >= 2:
            lend = min(end, p + 2 + unpack_from("!H", data, p)[0])
            q = p + 2
            while q + 3 <= lend:
                ntype = data[q]
                n = unpack_from("!H", data, q + 1)[0]
                if ntype == 0:
                    ch.sni = bytes(data[q + 3:min(lend, q + 3 + n)]).decode("utf-8", "backslashreplace")
                    break
                q += 3 + n


def parse_client_hello(msg: bytes) -> ClientHello | None:
    """Parse a full handshake message (type 1 + uint24 length + body) into a :class:`ClientHello`.

    Returns ``None`` when ``msg`` is not a ClientHello or too short to hold version, random, session id and
    cipher suites. A hello cut inside its extensions keeps the extensions read so far and says so in ``note``
    (that is what Wireshark's JA3 sees too).
    """
    try:
        return _parse_client_hello(msg)
    except Exception:  # never let a malformed hello escape
        return None


def _parse_client_hello(msg: bytes) -> ClientHello | None:
    if len(msg) < 4 or msg[0] != 1:
        return None
    length = (msg[1] << 16) | (msg[2] << 8) | msg[3]
    end = min(len(msg), 4 + length)
    note = None if len(msg) >= 4 + length else "truncated ClientHello"
    return _parse_hello_body(msg, 4, end, note, dtls=False)


def _parse_hello_body(msg: bytes, p: int, end: int, note: str | None, *, dtls: bool) -> ClientHello | None:
    if p + 35 > end:
        return None
    ch = ClientHello(unpack_from("!H", msg, p)[0])
    p += 34
    p += 1 + msg[p]  # session id
    if dtls:
        if p >= end:
            return None
        p += 1 + msg[p]  # cookie
    if p + 2 > end:
        return None
    n = unpack_from("!H", msg, p)[0]
    p += 2
    if p + n > end:
        note = note or "truncated cipher suites"
        n = (end - p) & ~1
    ch.ciphers = _u16_list(msg, p, p + n)
    p += n
    if p >= end:
        ch.note = note
        return ch
    p += 1 + msg[p]  # compression methods
    if p + 2 > end:
        ch.note = note
        return ch
    n = unpack_from("!H", msg, p)[0]
    p += 2
    eend = p + n
    if eend > end:
        note = note or "truncated extensions"
        eend = end
    exts = ch.extensions
    parsed = _PARSED_EXTENSIONS
    hh = _HH
    while p + 4 <= eend:
        etype, elen = hh(msg, p)
        p += 4
        exts.append(etype)
        q = p + elen
        if q > eend:
            note = note or f"truncated extension {etype}"
            if etype in parsed:
                _parse_extension(ch, etype, msg, p, eend)
            break
        if etype in parsed:
            _parse_extension(ch, etype, msg, p, q)
        p = q
    ch.note = note
    return ch


def parse_sslv2_client_hello(rec: bytes) -> ClientHello | None:
    """Parse an SSLv2-compatible ClientHello record (2-byte header with the top bit set, msg type 1)."""
    try:
        if len(rec) < 11 or not rec[0] & 0x80 or rec[2] != 1:
            return None
        length = ((rec[0] & 0x7F) << 8) | rec[1]
        end = min(len(rec), 2 + length)
        version, cs_len, _sid_len, _chal_len = unpack_from("!HHHH", rec, 3)
        p = 11
        specs = []
        q_end = min(end, p + cs_len)
        while p + 3 <= q_end:
            specs.append((rec[p] << 16) | (rec[p + 1] << 8) | rec[p + 2])
            p += 3
        return ClientHello(version, ciphers=specs, sslv2=True,
                           note=None if len(rec) >= 2 + length else "truncated SSLv2 ClientHello")
    except Exception:
        return None


def looks_like_tls_client_start(b: bytes) -> bool:
    """Does a client's stream (or a segment) start with a TLS handshake record holding a ClientHello?"""
    return (len(b) >= 6 and b[0] == 0x16 and b[1] == 3 and b[2] <= 4 and b[5] == 1) or looks_like_sslv2_hello(b)


def looks_like_sslv2_hello(b: bytes) -> bool:
    # 2-byte header, msg type 1, version 0x0002 or 0x03xx
    return (len(b) >= 5 and b[0] & 0x80 != 0 and b[2] == 1
            and ((b[3] == 3 and b[4] <= 4) or (b[3] == 0 and b[4] == 2)) and ((b[0] & 0x7F) << 8 | b[1]) >= 9)


class TlsClientStream:
    """Record layer → handshake messages → ClientHellos, for the client direction of one TCP connection.

    ``feed`` takes in-order bytes and returns the ClientHellos completed by them. The stream ``done`` flag goes up
    once no further plaintext ClientHello can follow (application data, a non-hello handshake message, garbage,
    two hellos seen), so callers stop feeding.
    """

    __slots__ = ("buf", "hs", "done", "hellos", "after_ccs", "note")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.hs = bytearray()
        self.done = False
        self.hellos = 0
        self.after_ccs = False
        self.note: str | None = None

    def feed(self, data: bytes) -> list[ClientHello]:
        if self.done:
            return []
        buf = self.buf
        buf += data
        out: list[ClientHello] = []
        p = 0
        n = len(buf)
        if self.hellos == 0 and not self.hs and n >= 3 and buf[0] & 0x80 and buf[2] == 1:
            # SSLv2-compatible hello: a single record
            length = ((buf[0] & 0x7F) << 8) | buf[1]
            if n < 2 + length:
                if n > MAX_HELLO:
                    self.done = True
                return out
            ch = parse_sslv2_client_hello(bytes(buf[:2 + length]))
            if ch is not None:
                out.append(ch)
                self.hellos += 1
            self.done = True
            self.buf = bytearray()
            return out
        while n - p >= 5:
            ctype = buf[p]
            if ctype not in (20, 21, 22, 23, 24) or buf[p + 1] != 3:
                self.note = self.note or "non-TLS bytes in client stream"
                self.done = True
                break
            rlen = (buf[p + 3] << 8) | buf[p + 4]
            if n - p < 5 + rlen:
                if rlen > 18432:
                    self.done = True
                break
            if ctype == 22:
                self.hs += buf[p + 5:p + 5 + rlen]
                out.extend(self._messages())
            elif ctype == 20:
                self.after_ccs = True
            elif ctype == 23:
                self.done = True
            p += 5 + rlen
            if self.done:
                break
        if self.done:
            self.buf = bytearray()
            self.hs = bytearray()
        elif p:
            del buf[:p]
        if len(self.hs) > MAX_HELLO:
            self.done = True
        return out

    def _messages(self) -> list[ClientHello]:
        hs = self.hs
        out = []
        q = 0
        while len(hs) - q >= 4:
            mlen = (hs[q + 1] << 16) | (hs[q + 2] << 8) | hs[q + 3]
            if hs[q] != 1 or mlen > MAX_HELLO:
                # any other handshake message: the plaintext hellos are over (encrypted Finished after CCS too)
                self.done = True
                break
            if len(hs) - q < 4 + mlen:
                break
            ch = parse_client_hello(bytes(hs[q:q + 4 + mlen]))
            q += 4 + mlen
            if ch is None or (self.after_ccs and ch.legacy_version >> 8 != 3):
                self.done = True
                break
            out.append(ch)
            self.hellos += 1
            if self.hellos >= 2:
                self.done = True
                break
        if q:
            del hs[:q]
        return out

    def pending_hello(self) -> ClientHello | None:
        """A ClientHello cut short by the end of the capture/connection, parsed as far as it goes."""
        hs = bytes(self.hs)
        if len(self.buf) > 5 and self.buf[0] == 22:  # plus a handshake record cut short
            hs += bytes(self.buf[5:])
        if self.done or len(hs) < 40 or hs[0] != 1:
            return None
        ch = parse_client_hello(hs)
        if ch is not None:
            ch.note = "truncated ClientHello (connection/capture ended)"
        return ch
