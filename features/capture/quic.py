"""QUIC Initial packets (v1 RFC 9000/9001, v2 RFC 9369, late drafts) → the client's TLS ClientHello bytes.

A QUIC client sends its ClientHello inside CRYPTO frames of *Initial* packets. Those packets are encrypted, but
with keys anyone can derive from the Destination Connection ID of the client's first Initial (RFC 9001 §5.2), so
a passive observer can recover the ClientHello and fingerprint it exactly like a TLS-over-TCP one.

What makes this more than "decrypt one packet":

* the ClientHello may be split over several CRYPTO frames, several Initial packets and several datagrams, out of
  order and with gaps that are filled later (post-quantum key shares make it >1 MTU), so CRYPTO data is
  reassembled by stream offset per connection;
* after the server's first reply the client addresses the server by a new DCID, but the Initial keys stay the
  ones derived from the *original* DCID, so keys belong to the connection, not to the packet;
* after a Retry the client starts over with a new DCID and new keys (and resends the same CRYPTO stream from
  offset 0), so a packet that fails with the connection's keys is retried with keys from its own DCID;
* after a TLS HelloRetryRequest the second ClientHello follows the first in the same CRYPTO stream;
* a datagram may coalesce an Initial with 0-RTT/Handshake packets; the long-header Length field steps over them.

Only the ``cryptography`` package and the standard library are used. Nothing here raises on malformed input:
:meth:`QuicInitialTracker.feed` returns ``[]`` and counts a reason in :attr:`QuicInitialTracker.errors`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "QUIC_V1",
    "QUIC_V2",
    "InitialKeys",
    "QuicInitialTracker",
    "derive_client_initial_keys",
    "is_greased_version",
    "looks_like_quic_initial",
    "unusable_long_header",
]

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF

_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
_SALT_DRAFT33 = _SALT_V1  # drafts 33 and 34 already use the v1 salt
_SALT_DRAFT29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")  # drafts 29-32
_SALT_DRAFT23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")  # drafts 23-28
_SALT_DRAFT22 = bytes.fromhex("7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a")  # draft 22
_SALT_T050 = bytes.fromhex("7ff579e5acd072915580304c43a2367c60488310")  # Google QUIC T050 (TLS)
_SALT_T051 = bytes.fromhex("7a4edef4e7ccee5fa4506c19124fc8ccda6e033d")  # Google QUIC T051 (TLS)


@dataclass(frozen=True, slots=True)
class _Version:
    """What differs between QUIC versions for Initial protection: salt, HKDF label prefix, type codes, frames."""

    salt: bytes
    label_prefix: bytes  # b"quic " (v1, drafts) or b"quicv2 " (RFC 9369 §3.3.2)
    initial_type: int  # long-header packet type bits of Initial (v1: 0b00, v2: 0b01)
    retry_type: int  # Retry has no Length field and ends the datagram (v1: 0b11, v2: 0b00)
    gquic_frames: bool = False  # Google QUIC T05x: gQUIC frame types (CRYPTO is 0x08) inside IETF-style packets


def _draft_salt(draft: int) -> bytes:
    """The Initial salt of an IETF draft version (as Wireshark picks it)."""
    if draft <= 22:
        return _SALT_DRAFT22
    if draft <= 28:
        return _SALT_DRAFT23
    return _SALT_DRAFT29 if draft <= 32 else _SALT_DRAFT33


_V1_LIKE = {"label_prefix": b"quic ", "initial_type": 0, "retry_type": 3}
_VERSIONS: dict[int, _Version] = {
    QUIC_V1: _Version(salt=_SALT_V1, **_V1_LIKE),
    QUIC_V2: _Version(salt=_SALT_V2, label_prefix=b"quicv2 ", initial_type=1, retry_type=0),
    # Facebook mvfst: 0xfaceb001 is based on draft 22, 0xfaceb002 and the experimental 0xfaceb00e on draft 27.
    0xFACEB001: _Version(salt=_SALT_DRAFT22, **_V1_LIKE),
    0xFACEB002: _Version(salt=_SALT_DRAFT23, **_V1_LIKE),
    0xFACEB00E: _Version(salt=_SALT_DRAFT23, **_V1_LIKE),
    # Google QUIC with TLS (Chrome's T050/T051): IETF long header and Initial protection, own salts.
    0x54303530: _Version(salt=_SALT_T050, gquic_frames=True, **_V1_LIKE),
    0x54303531: _Version(salt=_SALT_T051, gquic_frames=True, **_V1_LIKE),
}
for _draft in range(22, 35):
    _VERSIONS[0xFF000000 + _draft] = _Version(salt=_draft_salt(_draft), **_V1_LIKE)
del _draft

#: Google QUIC Q050 (IETF-style header, but a gQUIC CHLO instead of a TLS ClientHello): counted, not decoded.
QUIC_Q050 = 0x51303530


def is_greased_version(version: int) -> bool:
    """0x?a?a?a?a: reserved to force version negotiation (no Initial salt; the client retries another version)."""
    return version & 0x0F0F0F0F == 0x0A0A0A0A


# For the cheap check: version word → required value of the first byte's top nibble (long + fixed + type).
_INITIAL_NIBBLE: dict[int, int] = {v: 0xC | info.initial_type for v, info in _VERSIONS.items()}

_MAX_CID = 20  # RFC 9000 §17.2: connection IDs are at most 20 bytes in v1 (and v2)
_MAX_CRYPTO = 64 * 1024  # per-connection CRYPTO reassembly window; real ClientHellos are < 8 KiB
_KEY_CACHE_SIZE = 4096


# ---------------------------------------------------------------------------------------------------------------
# Key derivation (RFC 9001 §5.2, RFC 8446 §7.1 HKDF-Expand-Label)
# ---------------------------------------------------------------------------------------------------------------


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def _hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context; stdlib HMAC is enough and avoids per-call objects."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


@dataclass(frozen=True, slots=True)
class InitialKeys:
    """Client Initial packet-protection material for one (version, DCID): AEAD key, IV and header-protection key."""

    key: bytes
    iv: bytes
    hp: bytes
    secret: bytes  # the client Initial secret itself, exposed so tests can check it against the RFCs


def derive_client_initial_keys(dcid: bytes, version: int = QUIC_V1) -> InitialKeys:
    """Derive the client Initial key/iv/hp from the client's first DCID (RFC 9001 §5.2, RFC 9369 §3.3).

    Raises ``KeyError`` for a version whose Initial salt we do not know; the tracker never calls it for those.
    """
    info = _VERSIONS[version]
    initial_secret = _hkdf_extract(info.salt, dcid)
    client_secret = _hkdf_expand_label(initial_secret, b"client in", 32)
    p = info.label_prefix
    return InitialKeys(
        key=_hkdf_expand_label(client_secret, p + b"key", 16),
        iv=_hkdf_expand_label(client_secret, p + b"iv", 12),
        hp=_hkdf_expand_label(client_secret, p + b"hp", 16),
        secret=client_secret,
    )


class _Protection:
    """Ready-to-use cipher objects for one key set (built once per DCID, reused for every packet)."""

    __slots__ = ("aead", "hp", "iv")

    def __init__(self, keys: InitialKeys) -> None:
        self.aead = AESGCM(keys.key)
        self.hp = Cipher(algorithms.AES(keys.hp), modes.ECB())
        self.iv = int.from_bytes(keys.iv, "big")

    def mask(self, sample: bytes) -> bytes:
        enc = self.hp.encryptor()
        return enc.update(sample) + enc.finalize()


# ---------------------------------------------------------------------------------------------------------------
# Wire helpers
# ---------------------------------------------------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a QUIC variable-length integer at ``pos``; returns (value, new_pos). IndexError/ValueError if short."""
    first = buf[pos]
    size = 1 << (first >> 6)
    if pos + size > len(buf):
        raise ValueError("truncated varint")
    value = first & 0x3F
    for i in range(1, size):
        value = (value << 8) | buf[pos + i]
    return value, pos + size


def _decode_pn(largest: int, truncated: int, pn_nbits: int) -> int:
    """RFC 9000 Appendix A.3: recover the full packet number closest to largest+1."""
    expected = largest + 1
    win = 1 << pn_nbits
    hwin = win >> 1
    mask = win - 1
    candidate = (expected & ~mask) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


def looks_like_quic_initial(payload: bytes) -> bool:
    """Cheap check that a UDP payload starts with a QUIC Initial long-header packet of a version we can decrypt.

    Long header (0x80) and fixed bit (0x40) set, version 1, 2, draft-22…34, mvfst (0xfaceb001/2/e) or Google
    QUIC T050/T051, the version's Initial type bits, and a plausible DCID length. Costs a few byte reads, so it can run on every UDP datagram.
    """
    if len(payload) < 7:
        return False
    nibble = _INITIAL_NIBBLE.get(int.from_bytes(payload[1:5], "big"))
    return nibble is not None and payload[0] >> 4 == nibble and payload[5] <= _MAX_CID


def unusable_long_header(payload: bytes) -> str | None:
    """Why a long-header datagram of a version we cannot decrypt holds no ClientHello we can read (else ``None``).

    As FoxIO's JA4 reference (which reads tshark's dissection): an Initial with a greased version (0x?a?a?a?a)
    only forces version negotiation and gives no fingerprint; the client's next Initial, in a real version, does.
    """
    if len(payload) < 7 or not payload[0] & 0x80:
        return None
    version = int.from_bytes(payload[1:5], "big")
    if version in _VERSIONS:
        return None
    if version == 0:
        return "QUIC version negotiation packets"
    if is_greased_version(version):
        return "QUIC Initials with a greased version (version negotiation follows)"
    if version >> 8 == 0x513035 or version >> 8 == 0x513034:
        return "Google QUIC Q04x/Q05x packets (gQUIC handshake, no TLS ClientHello)"
    return None  # any UDP payload can start with two set bits: not counted as QUIC


def _parse_gquic_frames(payload: bytes) -> tuple[list[tuple[int, bytes]], str | None]:
    """Frames of a decrypted Google QUIC T05x Initial: PADDING (0x00), PING (0x07) and CRYPTO (0x08: variable-length
    integer offset and length, as in IETF QUIC). Anything else stops parsing, keeping the CRYPTO data before it."""
    crypto: list[tuple[int, bytes]] = []
    pos = 0
    n = len(payload)
    try:
        while pos < n:
            ftype = payload[pos]
            pos += 1
            if ftype == 0x00:
                rest = payload[pos:]
                pos += len(rest) - len(rest.lstrip(b"\x00"))
            elif ftype == 0x07:
                continue
            elif ftype == 0x08:
                offset, pos = _varint(payload, pos)
                length, pos = _varint(payload, pos)
                if pos + length > n:
                    return crypto, "truncated_crypto_frame"
                crypto.append((offset, payload[pos : pos + length]))
                pos += length
            else:
                return crypto, "unexpected_frame_type"
    except (IndexError, ValueError):
        return crypto, "truncated_frame"
    return crypto, None


def _parse_frames(payload: bytes) -> tuple[list[tuple[int, bytes]], str | None]:
    """Frames of a decrypted Initial payload → (CRYPTO (offset, data) list, error reason or None).

    Initial packets may only carry PADDING, PING, ACK, CRYPTO and CONNECTION_CLOSE (RFC 9000 §12.4); anything
    else stops parsing (the CRYPTO frames seen before it are kept: the packet was authenticated).
    """
    crypto: list[tuple[int, bytes]] = []
    pos = 0
    n = len(payload)
    try:
        while pos < n:
            ftype, pos = _varint(payload, pos)
            if ftype == 0x00:  # PADDING: usually a long run of zeros, skip it in one step
                rest = payload[pos:]
                pos += len(rest) - len(rest.lstrip(b"\x00"))
            elif ftype == 0x01:  # PING
                continue
            elif ftype in (0x02, 0x03):  # ACK / ACK_ECN
                _, pos = _varint(payload, pos)  # largest acknowledged
                _, pos = _varint(payload, pos)  # ack delay
                count, pos = _varint(payload, pos)
                _, pos = _varint(payload, pos)  # first range
                if count > n:  # cannot fit; avoids a long loop on garbage
                    return crypto, "bad_ack_frame"
                for _ in range(count):
                    _, pos = _varint(payload, pos)
                    _, pos = _varint(payload, pos)
                if ftype == 0x03:
                    for _ in range(3):
                        _, pos = _varint(payload, pos)
            elif ftype == 0x06:  # CRYPTO
                offset, pos = _varint(payload, pos)
                length, pos = _varint(payload, pos)
                if pos + length > n:
                    return crypto, "truncated_crypto_frame"
                crypto.append((offset, payload[pos : pos + length]))
                pos += length
            elif ftype in (0x1C, 0x1D):  # CONNECTION_CLOSE (transport / application)
                _, pos = _varint(payload, pos)
                if ftype == 0x1C:
                    _, pos = _varint(payload, pos)
                reason_len, pos = _varint(payload, pos)
                pos += reason_len
                if pos > n:
                    return crypto, "truncated_close_frame"
            else:
                return crypto, "unexpected_frame_type"
    except (IndexError, ValueError):
        return crypto, "truncated_frame"
    return crypto, None


# ---------------------------------------------------------------------------------------------------------------
# Per-connection state
# ---------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Conn:
    """One client connection on one UDP flow: its Initial keys and the CRYPTO stream being reassembled."""

    version: int
    key_dcid: bytes  # DCID the current Initial keys came from (original DCID, or the post-Retry one)
    last_ts: float
    largest_pn: int = -1
    buf: bytearray = field(default_factory=bytearray)
    ranges: list[list[int]] = field(default_factory=list)  # sorted, merged [start, end) received
    msg_offset: int = 0  # stream offset of the next handshake message
    hellos: int = 0  # ClientHellos completed in this key epoch
    done: bool = False
    seen: set[bytes] = field(default_factory=set)  # digests of ClientHellos already returned on this flow

    def reset_stream(self, key_dcid: bytes, version: int) -> None:
        """A Retry (or a new connection reusing the 4-tuple): new keys, CRYPTO stream starts again at 0."""
        self.key_dcid = key_dcid
        self.version = version
        self.largest_pn = -1
        self.buf = bytearray()
        self.ranges = []
        self.msg_offset = 0
        self.hellos = 0

    def add_crypto(self, offset: int, data: bytes) -> None:
        if offset >= _MAX_CRYPTO or not data:
            return
        data = data[: _MAX_CRYPTO - offset]
        end = offset + len(data)
        if len(self.buf) < end:
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[offset:end] = data
        merged: list[list[int]] = []
        placed = False
        for r in self.ranges:
            if r[1] < offset:
                merged.append(r)
            elif r[0] > end:
                if not placed:
                    merged.append([offset, end])
                    placed = True
                merged.append(r)
            else:  # overlapping or touching
                offset, end = min(offset, r[0]), max(end, r[1])
        if not placed:
            merged.append([offset, end])
        merged.sort()
        self.ranges = merged

    def contiguous(self) -> int:
        return self.ranges[0][1] if self.ranges and self.ranges[0][0] == 0 else 0


# ---------------------------------------------------------------------------------------------------------------
# Tracker
# ---------------------------------------------------------------------------------------------------------------


class QuicInitialTracker:
    """One per capture. Tracks client Initial packets per connection and reassembles CRYPTO frames.

    Connections are keyed by the caller's flow key (the client→server UDP 4-tuple): the DCID changes during a
    handshake (server-chosen DCID, Retry), the 4-tuple does not. Each connection remembers the DCID its keys came
    from; a packet is tried with those keys first and then with keys from its own DCID (which is what happens
    after a Retry, or when a new connection reuses the 4-tuple). State is bounded by ``max_connections`` (LRU),
    ``idle_timeout`` seconds of capture time, and ``max_buffer_bytes`` of CRYPTO data over all connections.
    Counters of why packets were not used are in :attr:`errors`; the latest reason is :attr:`last_error`.
    """

    def __init__(
        self,
        max_connections: int = 100_000,
        idle_timeout: float = 120.0,
        max_buffer_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.max_connections = max(1, int(max_connections))
        self.idle_timeout = float(idle_timeout)
        self.max_buffer_bytes = max(_MAX_CRYPTO, int(max_buffer_bytes))
        self.errors: Counter[str] = Counter()
        self.last_error: str | None = None
        self.packets_decrypted = 0
        self.hellos_returned = 0
        self._conns: OrderedDict[tuple, _Conn] = OrderedDict()
        self._keys: OrderedDict[tuple[int, bytes], _Protection] = OrderedDict()
        self._buffered = 0

    # -- public API -------------------------------------------------------------------------------------------

    def feed(self, payload: bytes, flow_key: tuple, ts: float) -> list[bytes]:
        """Feed one client→server UDP datagram payload (may hold several coalesced QUIC packets).

        Returns the TLS ClientHello handshake messages (``b"\\x01" + uint24 length + body``) that this datagram
        completed. Non-QUIC payloads are rejected after a few byte reads. Never raises.
        """
        self.last_error = None
        if not looks_like_quic_initial(payload):
            return []
        try:
            data = payload if type(payload) is bytes else bytes(payload)
            self._expire(ts)
            return self._feed(data, flow_key, ts)
        except Exception as exc:  # a backstop: malformed input must never break a capture replay
            self._fail(f"internal_error:{type(exc).__name__}")
            return []

    def forget(self, flow_key: tuple) -> None:
        """Drop all state for ``flow_key`` (e.g. when the caller's flow table evicts the flow)."""
        conn = self._conns.pop(flow_key, None)
        if conn is not None:
            self._buffered -= len(conn.buf)

    def __len__(self) -> int:
        return len(self._conns)

    # -- internals --------------------------------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        self.errors[reason] += 1
        self.last_error = reason

    def _expire(self, now: float) -> None:
        """Drop connections idle longer than ``idle_timeout``; the dict is in last-use order, so stop early."""
        conns = self._conns
        while conns:
            key, conn = next(iter(conns.items()))
            if now - conn.last_ts <= self.idle_timeout:
                break
            del conns[key]
            self._buffered -= len(conn.buf)

    def _protection(self, version: int, dcid: bytes) -> _Protection:
        ck = (version, dcid)
        prot = self._keys.get(ck)
        if prot is None:
            prot = _Protection(derive_client_initial_keys(dcid, version))
            self._keys[ck] = prot
            if len(self._keys) > _KEY_CACHE_SIZE:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(ck)
        return prot

    def _feed(self, data: bytes, flow_key: tuple, ts: float) -> list[bytes]:
        out: list[bytes] = []
        pos = 0
        n = len(data)
        while pos < n:
            b0 = data[pos]
            if not b0 & 0x80:  # short header (1-RTT) runs to the end of the datagram; or trailing padding
                break
            if n - pos < 7:
                self._fail("truncated_header")
                break
            version = int.from_bytes(data[pos + 1 : pos + 5], "big")
            info = _VERSIONS.get(version)
            if info is None:
                if pos == 0:
                    if is_greased_version(version):  # the client retries with a real version after negotiation
                        self._fail("greased_version")
                    elif version == QUIC_Q050:
                        self._fail("gquic_q050_no_tls")
                    elif version == 0:
                        self._fail("version_negotiation")
                    else:
                        self._fail("unknown_version")
                break
            p = pos + 5
            dcil = data[p]
            p += 1
            if dcil > _MAX_CID or p + dcil >= n:
                self._fail("bad_dcid")
                break
            dcid = data[p : p + dcil]
            p += dcil
            scil = data[p]
            p += 1 + scil
            if scil > _MAX_CID or p > n:
                self._fail("bad_scid")
                break
            ptype = (b0 >> 4) & 3
            if ptype == info.retry_type:  # no Length field; a client never sends one
                break
            try:
                if ptype == info.initial_type:
                    token_len, p = _varint(data, p)
                    p += token_len
                length, p = _varint(data, p)
            except (IndexError, ValueError):
                self._fail("truncated_header")
                break
            end = p + length
            if end > n:
                self._fail("truncated_packet")
                break
            if ptype == info.initial_type:
                out.extend(self._initial(data, pos, p, end, dcid, version, flow_key, ts))
            pos = end
        return out

    def _unprotect(self, data: bytes, start: int, pn_offset: int, end: int, prot: _Protection, largest: int):
        """Remove header protection and decrypt one Initial; returns (packet number, plaintext) or None."""
        sample_at = pn_offset + 4
        if sample_at + 16 > end:
            return None
        mask = prot.mask(data[sample_at : sample_at + 16])
        b0 = data[start] ^ (mask[0] & 0x0F)
        pn_len = (b0 & 0x03) + 1
        pn_bytes = bytes(
            x ^ m for x, m in zip(data[pn_offset : pn_offset + pn_len], mask[1 : 1 + pn_len], strict=True)
        )
        header = bytes((b0,)) + data[start + 1 : pn_offset] + pn_bytes
        pn = _decode_pn(largest, int.from_bytes(pn_bytes, "big"), pn_len * 8)
        nonce = (prot.iv ^ pn).to_bytes(12, "big")
        try:
            plain = prot.aead.decrypt(nonce, data[pn_offset + pn_len : end], header)
        except InvalidTag:
            return None
        return pn, plain

    def _initial(
        self,
        data: bytes,
        start: int,
        pn_offset: int,
        end: int,
        dcid: bytes,
        version: int,
        flow_key: tuple,
        ts: float,
    ) -> list[bytes]:
        conn = self._conns.get(flow_key)
        if conn is not None:
            self._conns.move_to_end(flow_key)
            conn.last_ts = ts
            if conn.done:
                return []
        result = None
        new_epoch = False
        if conn is not None:
            result = self._unprotect(
                data, start, pn_offset, end, self._protection(version, conn.key_dcid), conn.largest_pn
            )
        if result is None and (conn is None or dcid != conn.key_dcid):
            result = self._unprotect(data, start, pn_offset, end, self._protection(version, dcid), -1)
            new_epoch = result is not None
        if result is None:
            self._fail("decrypt_failed")
            return []
        self.packets_decrypted += 1
        pn, plain = result
        if conn is None:
            conn = _Conn(version=version, key_dcid=dcid, last_ts=ts)
            self._conns[flow_key] = conn
            while len(self._conns) > self.max_connections:
                _, old = self._conns.popitem(last=False)
                self._buffered -= len(old.buf)
        elif new_epoch:
            self._buffered -= len(conn.buf)
            conn.reset_stream(dcid, version)
        conn.version = version  # compatible version negotiation (v1 → v2) keeps the original DCID's keys
        conn.largest_pn = max(conn.largest_pn, pn)

        frames, reason = (_parse_gquic_frames if _VERSIONS[version].gquic_frames else _parse_frames)(plain)
        if reason is not None:
            self._fail(reason)
        before = len(conn.buf)
        for offset, chunk in frames:
            conn.add_crypto(offset, chunk)
        self._buffered += len(conn.buf) - before
        hellos = self._extract(conn)
        if conn.done and conn.buf:
            self._buffered -= len(conn.buf)
            conn.buf = bytearray()
            conn.ranges = []
        self._enforce_budget(flow_key)
        return hellos

    def _extract(self, conn: _Conn) -> list[bytes]:
        """Pull complete handshake messages off the front of the CRYPTO stream; keep ClientHellos."""
        out: list[bytes] = []
        have = conn.contiguous()
        while not conn.done and conn.msg_offset + 4 <= have:
            mo = conn.msg_offset
            msg_type = conn.buf[mo]
            total = 4 + int.from_bytes(conn.buf[mo + 1 : mo + 4], "big")
            if msg_type != 1:
                self._fail("not_client_hello")
                conn.done = True
                break
            if mo + total > _MAX_CRYPTO:
                self._fail("client_hello_too_large")
                conn.done = True
                break
            if mo + total > have:
                break
            msg = bytes(conn.buf[mo : mo + total])
            conn.msg_offset = mo + total
            conn.hellos += 1
            digest = hashlib.blake2b(msg, digest_size=16).digest()
            if digest not in conn.seen:  # a post-Retry resend of the same ClientHello is not a new one
                conn.seen.add(digest)
                out.append(msg)
                self.hellos_returned += 1
            if conn.hellos >= 2:  # ClientHello, and the second one after a HelloRetryRequest
                conn.done = True
        return out

    def _enforce_budget(self, current: tuple) -> None:
        """Evict least-recently-used connections (never ``current``) while buffered CRYPTO data is over budget."""
        while self._buffered > self.max_buffer_bytes and len(self._conns) > 1:
            key, old = next(iter(self._conns.items()))
            if key == current:
                self._conns.move_to_end(key)
                continue
            del self._conns[key]
            self._buffered -= len(old.buf)
            self._fail("evicted_for_memory")
