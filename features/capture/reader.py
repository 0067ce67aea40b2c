"""Capture replay: a pcap/pcapng file → connection records (TLS/QUIC/DTLS ClientHellos, HTTP/1.x requests).

One row per ClientHello (a HelloRetryRequest gives two, ``ch_index`` 0 and 1), one per HTTP request, and one
``proto="other"`` row per TCP connection opened by a SYN that carried neither (every connection attempt counts for
reconnect-rate features). Protocols are recognised by content on any port, never by port number.

Speed matters (captures of hundreds of MB): the file is memory-mapped (or read in large chunks) and packets are
decoded in place, with one ``struct`` unpack for the common Ethernet/IPv4/TCP-or-UDP case; a TCP direction that is
neither TLS nor HTTP after its first payload is only *watched*: each later segment costs a dict lookup, a few
counters and a one-byte test for a new TLS/HTTP start (STARTTLS, CONNECT, SOCKS). Fingerprints are cached by the
hello fields they depend on. Connection state is released on FIN/RST (after a grace period), on idle timeout and
above a cap on open connections; rows are yielded when their connection is released (at the latest, at the end of
the file), so they come out roughly, not strictly, in time order.

``outcome``: ``fin`` / ``rst`` (seen on the connection), ``open`` (capture ended first), ``timeout`` (idle for
:data:`IDLE_TIMEOUT`), ``evicted`` (open-connection cap), ``reused`` (a new SYN on the same 4-tuple). ``ts`` is the
connection's first packet, ``ts_end`` its last, ``frame`` the packet that completed the hello/request head.
"""

from __future__ import annotations

import gc
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from struct import Struct
from typing import Any
from zlib import crc32

from stormguard.features.capture.dtls import DtlsTracker, looks_like_dtls_handshake
from stormguard.features.capture.files import iter_packets
from stormguard.features.capture.packets import TUNNEL_PORTS, Decoder
from stormguard.features.capture.tcpstream import DETECT, HALF, HTTP, M32, TLS, WATCH, Conn, Half, OooBudget
from stormguard.features.http.requests import HttpRequestStream, looks_like_http_request
from stormguard.features.sniff import sniff
from stormguard.features.tls.clienthello import (
    ClientHello,
    TlsClientStream,
    looks_like_tls_client_start,
    parse_client_hello,
)
from stormguard.features.tls.ja3 import ja3
from stormguard.features.tls.ja4 import ja4

from stormguard.report import ReplayStats

try:  # QUIC Initial decryption lives in its own module (and needs ``cryptography``)
    from stormguard.features.capture.quic import (
        QuicInitialTracker,
        looks_like_quic_initial,
        unusable_long_header,
    )
except ImportError:  # pragma: no cover - only without the QUIC module
    QuicInitialTracker = None  # type: ignore[assignment,misc]
    looks_like_quic_initial = unusable_long_header = None  # type: ignore[assignment]

#: Same as :data:`stormguard.schema.TLS_VERSION_SEP` (not imported: the schema module pulls in pandas).
TLS_VERSION_SEP = " "

#: Seconds without packets before an open connection is released (outcome "timeout").
IDLE_TIMEOUT = 600.0
#: Seconds a closed (FIN/RST) connection is kept so late ACKs/retransmissions do not open a new one.
CLOSED_GRACE = 30.0
#: Open connections kept at most; beyond it the oldest are released.
MAX_CONNS = 100_000
#: Packets between two sweeps for idle/closed connections, at least (and at least as many as there are open
#: connections, so a sweep costs under one check per packet): frequent enough that rows of finished connections
#: stream out while a long capture is read, instead of all at its end.
SWEEP_EVERY = 1 << 14
#: Reassembled chunks of a direction tested for a TLS/HTTP start after a first chunk that is neither (junk bytes
#: before the record), before the direction is only watched.
PROBE_CHUNKS = 4
#: Young-generation GC threshold while parsing (CPython's default is 700).
GC_GEN0 = 20_000

#: Ethernet + IPv4 (no options) + the first 14 bytes of TCP/UDP: ethertype, version/IHL, total length,
#: flags+fragment offset, protocol, src, dst, ports, TCP sequence number, data offset, flags.
_ETH_IP4_L4 = Struct("!12xHBxH2xHxB2x4s4sHHI4xBB")
_TUNNEL_PORTS = TUNNEL_PORTS

_HTTP_FIRST = frozenset(m[0] for m in (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH",
                                        b"CONNECT", b"TRACE", b"PROPFIND", b"MKCOL", b"COPY", b"MOVE", b"LOCK",
                                        b"UNLOCK", b"SEARCH", b"REPORT", b"PURGE"))


def read_capture(path: Path, stats: ReplayStats, *, progress: Callable[[int], None] | None = None
                 ) -> Iterator[dict]:
    """Yield connection-record dicts for a pcap/pcapng file.

    Never raises on bad input: damage is reported through ``stats.warn`` (file and byte offset) and every record
    found before it is still yielded. ``progress(n)`` is called with the number of bytes read since the last call.
    """
    for row in CaptureReader(path, stats, progress=progress):
        if row is not None:
            yield row


class CaptureReader:
    """:func:`read_capture` as an object, for readers that split a capture between processes.

    ``shard=(k, n)`` keeps only the flows whose endpoints hash to ``k`` of ``n`` (both directions of a flow, and
    every fragment and tunnel layer of it, land in the same share: the hash is CRC-32 over the innermost addresses,
    the same in every process, so shares read on different machines still partition the flows).
    Each of the ``n`` readers still walks every packet, so that idle sweeps happen at the same packets as in a
    whole read; only shard 0 counts packet-level figures (packets, undecodable packets, fragments, damage of the
    file), every shard counts its own flows. With ``marks``, iteration also yields ``None`` every 1,024 packets,
    and :attr:`at` tells the frame number reached when a row or mark was yielded (``None`` at the end of the
    file) — what a merger needs to put the shares back into one order.
    """

    def __init__(self, path: Path, stats: ReplayStats, *, progress: Callable[[int], None] | None = None,
                 shard: tuple[int, int] | None = None, marks: bool = False) -> None:
        self.path = Path(path)
        self.stats = stats
        self.progress = progress
        self.shard = shard
        self.marks = marks
        self._cap: _Capture | None = None

    @property
    def at(self) -> int | None:
        return None if self._cap is None else self._cap.at

    def __iter__(self) -> Iterator[dict | None]:
        path, stats = self.path, self.stats
        # packet- and file-level figures: shard 0 (or a whole read) only, so that shares add up to a whole read
        pstats = stats if self.shard is None or self.shard[0] == 0 else ReplayStats()
        try:
            kind = sniff(path)
        except OSError as exc:
            pstats.warn(path.name, f"cannot read: {exc.strerror or exc}", reason="unreadable file")
            return
        if kind not in ("pcap", "pcapng"):
            pstats.warn(path.name, "not a pcap/pcapng capture", offset=0, reason="not a capture")
            return
        cap = self._cap = _Capture(path.name, kind, stats, pstats=pstats, shard=self.shard, marks=self.marks)
        try:
            packets = iter_packets(path, path.name, kind, pstats, self.progress)
            yield from cap.run(packets)
        except OSError as exc:
            pstats.warn(path.name, f"read error: {exc.strerror or exc}", reason="unreadable file")
        except Exception as exc:  # a reader bug must not lose what was found so far
            stats.warn(path.name, f"reading stopped by an internal error: {type(exc).__name__}: {exc}",
                       reason="capture not fully read (internal error)")
        cap.at = None
        yield from cap.flush("open")


def count_unused(pstats: ReplayStats, name: str, skipped: dict[str, int], fragments: int, not_used: int) -> None:
    """Count, at the end of a read, the ``not_used`` packets that gave no TCP/UDP flow, by the reason the decoder
    stopped at (``skipped``: link type, ethertype, encapsulation, ...), and the IP ``fragments`` it saw."""
    if not_used:
        for reason, count in skipped.items():
            pstats.skip(f"packets skipped: {reason}", count)
            not_used -= count
            if reason.startswith(("link type", "PPI carrying")):  # the file's own fault: name it
                pstats.warn(name, f"{count} packet(s) skipped: {reason}")
        if not_used > 0:
            pstats.skip("packets without TCP/UDP over IP (cut headers, fragments awaiting reassembly)", not_used)
    if fragments:
        pstats.skip("IP fragments (reassembled where complete)", fragments)


def _recognise(half: Half, data: bytes) -> bool:
    """Start a TLS or HTTP parser on ``half`` if ``data`` begins a ClientHello or a request (by content)."""
    if looks_like_tls_client_start(data):
        half.mode = TLS
        half.parser = TlsClientStream()
    elif looks_like_http_request(data):
        half.mode = HTTP
        half.parser = HttpRequestStream()
    else:
        return False
    return True


def _ip(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(b) == 4 else socket.AF_INET6, b)


class _Capture:
    """State for one capture file."""

    def __init__(self, name: str, kind: str, stats: ReplayStats, *, pstats: ReplayStats | None = None,
                 shard: tuple[int, int] | None = None, marks: bool = False) -> None:
        self.name = name
        self.kind = kind
        self.stats = stats  # flow-level counts
        self.pstats = stats if pstats is None else pstats  # packet-level counts (see CaptureReader)
        self.shard = shard
        self.marks = marks
        self.at: int | None = 0  # frame reached when the last row was yielded (CaptureReader.at)
        self.flows: dict[tuple, Half] = {}  # directed TCP key -> half sending along it
        self.uflows: dict[tuple, Half] = {}  # directed UDP key -> half (QUIC/DTLS flows only)
        self.conns: dict[Conn, None] = {}  # open connections in creation order
        self.quic = QuicInitialTracker() if QuicInitialTracker is not None else None
        self.dtls = DtlsTracker()
        self.decoder = Decoder()
        self.fp_cache: dict[tuple, tuple] = {}
        self.budget = OooBudget()
        self.ip_cache: dict[bytes, str] = {}

    # ------------------------------------------------------------------------------------------------------
    def run(self, packets: Iterator[tuple]) -> Iterator[dict | None]:
        """Records of the connections released while reading ``packets`` (see :meth:`flush` for the rest)."""
        # Thousands of live connection objects make CPython's frequent young-generation collections expensive
        # (a third of the time on a capture of many short connections): collect less often while parsing, and
        # give the caller its own settings back whenever control returns to it.
        gc_caller = gc.get_threshold()
        gc_ours = (GC_GEN0, *gc_caller[1:]) if 0 < gc_caller[0] < GC_GEN0 else gc_caller
        gc.set_threshold(*gc_ours)
        try:
            yield from self._loop(packets, gc_caller, gc_ours)
        finally:
            gc.set_threshold(*gc_caller)

    def _loop(self, packets: Iterator[tuple], gc_caller: tuple, gc_ours: tuple) -> Iterator[dict | None]:
        stats = self.stats
        pstats = self.pstats
        shard_k, shard_n = self.shard or (0, 0)
        marks = self.marks
        decode = self.decoder.decode
        flows = self.flows
        uflows = self.uflows
        conns = self.conns
        not_used = 0
        n = 0
        out: list[dict] = []
        watch, m32, half_range, http_first = WATCH, M32, HALF, _HTTP_FIRST
        sweep_every, max_conns = SWEEP_EVERY, MAX_CONNS
        check_mask = min(SWEEP_EVERY, 1024) - 1  # look at the connection count every 1024 packets
        frame_hdr = _ETH_IP4_L4.unpack_from
        tunnel_ports = _TUNNEL_PORTS
        set_gc = gc.set_threshold
        for frame, ts, lt, buf, off, caplen in packets:
            n += 1
            # Fast path for the common case, Ethernet + IPv4 without options or fragmentation + TCP/UDP (not a
            # tunnel port), all headers in one unpack; everything else goes through the general decoder.
            r = None
            if lt == 1 and caplen >= 48:
                et, vihl, tot, fragf, proto, src, dst, sport, dport, seq, doff, flags = frame_hdr(buf, off)
                if et == 0x0800 and vihl == 0x45 and not fragf & 0x3FFF:
                    end = off + caplen
                    if 20 <= tot < caplen - 14:
                        end = off + 14 + tot
                    if proto == 6:
                        if doff >= 0x50 and end - off >= 54:
                            p = off + 34 + ((doff >> 4) << 2)
                            r = True
                            payload = buf[p:end] if p < end else b""
                    elif proto == 17 and dport not in tunnel_ports and sport not in tunnel_ports:
                        flags = seq = 0
                        r = True
                        payload = buf[off + 42:end]
            if r is None:
                r = decode(lt, buf, off, off + caplen)
                if r is None:
                    not_used += 1
                    continue
                proto, src, dst, sport, dport, flags, seq, payload = r
            key = (src, dst, sport, dport)
            try:
                if proto != 6 and proto != 17:
                    not_used += 1
                elif shard_n and (crc32(src) ^ crc32(dst)) % shard_n != shard_k:
                    pass  # another reader's share of the flows
                elif proto == 6:
                    half = flows.get(key)
                    if half is None or flags & 0x02:
                        half = self._tcp_open(half, key, flags, seq, ts, frame, out)
                    conn = half.conn
                    conn.ts_end = ts
                    conn.pkts += 1
                    if flags & 0x05:
                        if flags & 0x04:
                            conn.rst = True
                        else:
                            half.fin = True
                        if conn.closed_ts < 0 and (conn.rst or half.peer.fin):
                            conn.closed_ts = ts
                    if payload:
                        half.bytes += len(payload)
                        if half.mode == watch:
                            if (seq - half.hi_seq) & m32 < half_range:  # new data, not a retransmission
                                half.hi_seq = (seq + len(payload)) & m32
                                # a new TLS ClientHello (0x16 .. type 1 / SSLv2 type 1) or HTTP request here?
                                b0 = payload[0]
                                if ((b0 == 0x16 and payload[5:6] == b"\x01") or (b0 & 0x80 and payload[2:3] == b"\x01")
                                        or b0 in http_first):
                                    self._start(half, seq, payload, frame)
                        else:
                            self._tcp_data(half, seq, payload, frame)
                else:  # UDP
                    if payload:
                        half = uflows.get(key)
                        if half is not None:  # a QUIC/DTLS flow: keep its counters
                            conn = half.conn
                            conn.ts_end = ts
                            conn.pkts += 1
                            half.bytes += len(payload)
                        b0 = payload[0]
                        if b0 & 0xC0 == 0xC0 or b0 == 22:  # QUIC long header / DTLS handshake record
                            self._udp(half, key, payload, ts, frame)
            except Exception as exc:  # a bug must not lose the rest of the capture
                stats.warn(self.name, f"packet {frame}: internal error {type(exc).__name__}: {exc}",
                           reason="packet not processed (internal error)")
            if out:
                self.at = frame
                set_gc(*gc_caller)
                yield from out
                set_gc(*gc_ours)
                out.clear()
            if not n & check_mask:
                if marks:
                    self.at = frame
                    yield None
                if n >= sweep_every and n >= len(conns) or len(conns) > max_conns:
                    pstats.packets += n
                    n = 0
                    done = list(self.sweep(ts))
                    if done:
                        self.at = frame
                        set_gc(*gc_caller)
                        yield from done
                        set_gc(*gc_ours)
        pstats.packets += n
        count_unused(pstats, self.name, self.decoder.skipped, self.decoder.fragments, not_used)
        self.decoder.skipped.clear()
        del flows, uflows

    # ------------------------------------------------------------------------------------------------------
    def _tcp_open(self, half: Half | None, key: tuple, flags: int, seq: int, ts: float, frame: int,
                  out: list[dict]) -> Half:
        if flags & 0x02:
            if half is not None and half.syn_seq >= 0 and half.syn_seq != seq:
                out.extend(self._finish(half.conn, "reused"))  # a new connection on the same 4-tuple
                half = None
            elif half is not None and half.syn_seq < 0 and not flags & 0x10 and (half.conn.closed_ts >= 0
                                                                                  or half.bytes):
                out.extend(self._finish(half.conn, "reused"))
                half = None
        if half is None:
            conn = Conn.open(key, ts, frame, budget=self.budget)
            if flags & 0x12 == 0x02:
                conn.syn = True
            half = conn.a
            self.flows[key] = half
            self.flows[conn.b.key] = conn.b
            self.conns[conn] = None
        if flags & 0x02 and half.syn_seq < 0:
            half.syn_seq = seq
            if half.mode == DETECT:
                half.next_seq = (seq + 1) & M32
        return half

    def _tcp_data(self, half: Half, seq: int, payload: bytes, frame: int) -> None:
        data = half.accept(seq, payload)
        if not data:
            if half.mode == WATCH:  # gave up (a gap that never filled)
                half.hi_seq = (seq + len(payload)) & M32
            return
        mode = half.mode
        if mode == DETECT:
            if half.parser is not None:  # a few bytes held back because they were too short to decide
                data = half.parser + data
                half.parser = None
            if not _recognise(half, data):
                if len(data) < 8 and (data[0] == 0x16 or data[0] in _HTTP_FIRST):
                    half.parser = bytes(data)  # too short to decide: hold the bytes and wait for more
                elif half.probes < PROBE_CHUNKS:
                    # junk before the record (tshark, and so FoxIO's reference, still find a hello that starts a
                    # later segment): keep reassembling in order and test the next few segment starts too
                    half.probes += 1
                else:
                    half.mode = WATCH
                    half.hi_seq = half.next_seq
                return
            mode = half.mode
        parser = half.parser
        if mode == TLS:
            for ch in parser.feed(data):
                self._hello_row(half, ch, frame, parser.hellos - 1, "tcp", "tls", "t")
        elif mode == HTTP:
            for req in parser.feed(data):
                self._http_row(half, req, frame)
        if parser is not None and parser.done:
            half.mode = WATCH
            half.parser = None
            half.hi_seq = half.next_seq

    def _start(self, half: Half, seq: int, payload: bytes, frame: int) -> None:
        """A segment in a watched direction starts with a TLS hello or an HTTP request: parse from here."""
        if not _recognise(half, payload):
            return
        half.start_stream(seq)
        self._tcp_data(half, seq, payload, frame)

    # ------------------------------------------------------------------------------------------------------
    def _udp(self, half: Half | None, key: tuple, payload: bytes, ts: float, frame: int) -> None:
        b0 = payload[0]
        if b0 & 0xC0 == 0xC0:
            if self.quic is None or not looks_like_quic_initial(payload):
                if self.quic is not None:
                    why = unusable_long_header(payload)
                    if why is not None:
                        self.stats.skip(why)
                return
            if half is None:
                half = self._udp_open(key, ts, frame, payload)
            elif half.peer.hellos and not half.hellos:
                return  # the server's Initials: the client is known, they hold no ClientHello
            for msg in self.quic.feed(payload, key, ts):
                ch = parse_client_hello(msg)
                if ch is not None:
                    self._hello_row(half, ch, frame, half.hellos, "udp", "quic", "q")
                else:
                    self.stats.skip("QUIC CRYPTO data that is not a ClientHello")
        elif b0 == 22 and looks_like_dtls_handshake(payload):
            if half is None:
                half = self._udp_open(key, ts, frame, payload)
            for ch in self.dtls.feed(payload, key):
                self._hello_row(half, ch, frame, half.hellos, "udp", "dtls", "d")

    def _udp_open(self, key: tuple, ts: float, frame: int, payload: bytes) -> Half:
        conn = Conn.open(key, ts, frame, udp=True)
        conn.pkts = 1
        conn.a.bytes = len(payload)
        self.uflows[key] = conn.a
        self.uflows[conn.b.key] = conn.b
        self.conns[conn] = None
        return conn.a

    # ------------------------------------------------------------------------------------------------------
    def _base_row(self, half: Half, frame: int, transport: str, proto: str) -> dict[str, Any]:
        peer = half.peer
        return {
            "ts": half.conn.ts, "source": self.name, "source_kind": self.kind, "frame": frame,
            "transport": transport, "proto": proto, "src_ip": self._ip(half.ip), "src_port": half.port,
            "dst_ip": self._ip(peer.ip), "dst_port": peer.port,
        }

    def _ip(self, b: bytes) -> str:
        s = self.ip_cache.get(b)
        if s is None:
            if len(self.ip_cache) >= 65536:
                self.ip_cache.clear()
            s = self.ip_cache[b] = _ip(b)
        return s

    def _hello_row(self, half: Half, ch: ClientHello, frame: int, index: int, transport: str, proto: str,
                   letter: str) -> None:
        row = self._base_row(half, frame, transport, proto)
        row["ch_index"] = index
        # Clients send the same hello shape again and again: cache the fingerprints by everything they depend on.
        fkey = (letter, ch.sslv2, ch.legacy_version, tuple(ch.ciphers), tuple(ch.extensions),
                tuple(ch.supported_groups), tuple(ch.ec_point_formats), tuple(ch.sig_algs),
                tuple(ch.supported_versions), ch.alpn[0] if ch.alpn else None, ch.sni is not None)
        fps = self.fp_cache.get(fkey)
        if fps is None:
            versions = TLS_VERSION_SEP.join(f"0x{v:04x}" for v in ch.offered_versions)
            try:
                fps = (*ja3(ch), *ja4(ch, letter), versions)
            except Exception as exc:  # a hello we parsed but cannot fingerprint: keep the row, say why
                fps = (None, None, None, None, versions)
                row["note"] = f"fingerprint failed: {type(exc).__name__}"
            if len(self.fp_cache) >= 4096:
                self.fp_cache.clear()
            self.fp_cache[fkey] = fps
        row["ja3"], row["ja3_string"], row["ja4"], row["ja4_r"], row["tls_versions"] = fps
        row["sni"] = ch.sni
        row["alpn"] = ch.alpn_str if ch.alpn else None
        if ch.note:
            row["note"] = ch.note
        if ch.sslv2:
            row["note"] = (row.get("note") or "") + ("; " if row.get("note") else "") + "SSLv2-format ClientHello"
        self.stats.client_hellos += 1
        half.hellos += 1
        conn = half.conn
        if conn.rows is None:
            conn.rows = []
        conn.rows.append((row, half))

    def _http_row(self, half: Half, req: dict, frame: int, note: str | None = None) -> None:
        row = self._base_row(half, frame, "tcp", "http")
        row.update(req)
        if note:
            row["note"] = note
        self.stats.http_requests += 1
        conn = half.conn
        if conn.rows is None:
            conn.rows = []
        conn.rows.append((row, half))

    # ------------------------------------------------------------------------------------------------------
    def _finish(self, conn: Conn, outcome: str) -> list[dict]:
        """Release a connection and return its rows, completed with end time, counters and outcome."""
        self.conns.pop(conn, None)
        table = self.uflows if conn.udp else self.flows
        for h in (conn.a, conn.b):
            if table.get(h.key) is h:
                del table[h.key]
            if h.ooo_bytes:
                h.drop_ooo()
            if conn.udp:
                if self.quic is not None:
                    self.quic.forget(h.key)
                self.dtls.flows.pop(h.key, None)
            elif h.parser is not None:
                if h.mode == TLS:
                    ch = h.parser.pending_hello()
                    if ch is not None:
                        self._hello_row(h, ch, conn.frame, h.parser.hellos, "tcp", "tls", "t")
                elif h.mode == HTTP:
                    req = h.parser.pending()
                    if req is not None:
                        self._http_row(h, req, conn.frame, "request head cut short")
                h.parser = None
        if conn.rst:
            outcome = "rst"
        elif conn.a.fin or conn.b.fin:
            outcome = "fin"
        rows = []
        if conn.rows:
            for index, (row, h) in enumerate(conn.rows):
                row["conn_row"] = index  # 0: the connection's first row; later ones are not new connections
                row["ts_end"] = conn.ts_end
                row["bytes_in"] = h.bytes
                row["bytes_out"] = h.peer.bytes
                row["packets"] = conn.pkts
                row["outcome"] = outcome
                rows.append(row)
            conn.rows = None
        elif conn.syn and not conn.udp:
            a = conn.a
            row = self._base_row(a, conn.frame, "tcp", "other")
            row.update(ts_end=conn.ts_end, bytes_in=a.bytes, bytes_out=conn.b.bytes, packets=conn.pkts,
                       outcome=outcome)
            rows.append(row)
        if rows or conn.syn:
            self.stats.connections += 1
        for h in (conn.a, conn.b):  # break the conn <-> half cycles: freed at once, no work for the GC
            h.conn = h.peer = h.parser = h.ooo = None  # type: ignore[assignment]
        return rows

    def sweep(self, now: float) -> Iterator[dict]:
        """Release idle and long-closed connections, and the oldest ones above :data:`MAX_CONNS`."""
        conns = self.conns
        over = len(conns) - MAX_CONNS
        if over > 0:
            victims = []
            for c in conns:
                victims.append(c)
                if len(victims) >= over + MAX_CONNS // 10:
                    break
            self.stats.skip("connections released early (open-connection cap)", len(victims))
            for c in victims:
                yield from self._finish(c, "evicted")
        for c in list(conns):
            if c.closed_ts >= 0:
                if now - c.ts_end > CLOSED_GRACE:
                    yield from self._finish(c, "fin")
            elif now - c.ts_end > IDLE_TIMEOUT:
                yield from self._finish(c, "timeout")

    def flush(self, outcome: str) -> Iterator[dict]:
        for c in list(self.conns):
            yield from self._finish(c, outcome)
