"""TCP connections and per-direction reassembly, with bounded state.

A :class:`Conn` has two :class:`Half` objects, one per direction (the sender's address and port). A half only
reassembles while a parser wants its bytes (TLS or HTTP mode); in the other modes a packet costs a few attribute
updates. Reassembly keeps the next expected sequence number and a small map of out-of-order segments: duplicates
and retransmissions are trimmed against what was already delivered, overlaps keep the first copy, sequence
numbers wrap modulo 2**32, a flow seen without its SYN starts at its first data segment, and a half that needs
more than :data:`MAX_OOO_BYTES` of out-of-order data gives up (a gap that never fills).
"""

from __future__ import annotations

M32 = 0xFFFFFFFF
HALF = 0x80000000
MAX_OOO_BYTES = 64 * 1024  # per direction: a hello or request head never needs more held back
MAX_OOO_SEGMENTS = 128
MAX_OOO_TOTAL = 64 << 20  # over all connections of a capture


class OooBudget:
    """Bytes held out of order over all connections of one capture (a shared cap keeps memory bounded)."""

    __slots__ = ("used", "limit")

    def __init__(self, limit: int = MAX_OOO_TOTAL) -> None:
        self.used = 0
        self.limit = limit

# half modes
DETECT = 0  # no payload seen yet: the first bytes decide
TLS = 1  # feeding a TlsClientStream
HTTP = 2  # feeding an HttpRequestStream
WATCH = 3  # not a protocol we parse (or gave up on a gap): only look at segment starts for a new hello/request


class Half:
    """One direction of a TCP connection: ``ip``/``port`` of the sender."""

    __slots__ = ("conn", "key", "ip", "port", "peer", "next_seq", "hi_seq", "ooo", "ooo_bytes", "mode",
                 "parser", "bytes", "fin", "syn_seq", "hellos", "probes")

    def __init__(self, conn: Conn, key: tuple, ip: bytes, port: int) -> None:
        self.conn = conn
        self.key = key
        self.ip = ip
        self.port = port
        self.peer: Half = self
        self.next_seq = -1  # next expected sequence number while reassembling; -1 unknown
        self.hi_seq = -1  # end of the highest segment seen (for retransmission checks in WATCH mode)
        self.ooo: dict[int, bytes] | None = None
        self.ooo_bytes = 0
        self.mode = DETECT
        self.parser = None
        self.bytes = 0
        self.fin = False
        self.syn_seq = -1
        self.hellos = 0  # ClientHellos sent (UDP flows: tells the client side from the server side)
        self.probes = 0  # chunks after the first tested for a protocol start (junk before the record)

    def start_stream(self, seq: int) -> None:
        """Begin reassembling at ``seq`` (a protocol start was found there)."""
        self.drop_ooo()
        self.next_seq = seq

    def drop_ooo(self) -> None:
        if self.ooo_bytes:
            self.conn.budget.used -= self.ooo_bytes
        self.ooo = None
        self.ooo_bytes = 0

    def give_up(self) -> None:
        """A gap that never fills (or memory is short): stop reassembling, only watch segment starts."""
        self.drop_ooo()
        self.mode = WATCH
        self.parser = None
        self.hi_seq = self.next_seq

    def accept(self, seq: int, data: bytes) -> bytes | None:
        """Add a segment; return the bytes that became contiguous (possibly joined with buffered ones)."""
        nxt = self.next_seq
        if nxt < 0:
            nxt = self.next_seq = seq
        d = (seq - nxt) & M32
        if d >= HALF:  # starts before what we already have: retransmission / overlap
            back = HALF * 2 - d
            if back >= len(data):
                return None
            data = data[back:]
        elif d:  # in the future: hold it
            ooo = self.ooo
            if ooo is None:
                ooo = self.ooo = {}
            budget = self.conn.budget
            if seq not in ooo or len(ooo[seq]) < len(data):
                grow = len(data) - len(ooo.get(seq, b""))
                self.ooo_bytes += grow
                budget.used += grow
                ooo[seq] = data
            if self.ooo_bytes > MAX_OOO_BYTES or len(ooo) > MAX_OOO_SEGMENTS or budget.used > budget.limit:
                self.give_up()
            return None
        nxt = (nxt + len(data)) & M32
        ooo = self.ooo
        if ooo:
            parts = [data]
            progress = True
            while progress and ooo:
                progress = False
                for s in list(ooo):
                    dd = (s - nxt) & M32
                    if dd == 0 or dd >= HALF:
                        seg = ooo.pop(s)
                        self.ooo_bytes -= len(seg)
                        self.conn.budget.used -= len(seg)
                        if dd:
                            back = HALF * 2 - dd
                            if back >= len(seg):
                                continue
                            seg = seg[back:]
                        parts.append(seg)
                        nxt = (nxt + len(seg)) & M32
                        progress = True
            data = b"".join(parts)
        self.next_seq = nxt
        return data


class Conn:
    """A TCP connection (or a UDP flow carrying QUIC/DTLS): times, counters and the records found on it."""

    __slots__ = ("a", "b", "ts", "ts_end", "frame", "pkts", "syn", "rst", "rows", "udp", "closed_ts", "budget")

    def __init__(self, ts: float, frame: int, udp: bool = False, budget: OooBudget | None = None) -> None:
        self.budget = budget if budget is not None else OooBudget()
        self.ts = ts
        self.ts_end = ts
        self.frame = frame
        self.pkts = 0
        self.syn = False  # a SYN (without ACK) opened it: half ``a`` is the client
        self.rst = False
        self.rows: list[tuple[dict, Half]] | None = None  # records found on it (created with the first)
        self.udp = udp
        self.closed_ts = -1.0
        self.a: Half
        self.b: Half

    @staticmethod
    def open(key: tuple, ts: float, frame: int, udp: bool = False, budget: OooBudget | None = None) -> Conn:
        """A connection whose first packet was sent along ``key`` = (src, dst, sport, dport)."""
        src, dst, sport, dport = key
        c = Conn(ts, frame, udp, budget)
        a = c.a = Half(c, key, src, sport)
        b = c.b = Half(c, (dst, src, dport, sport), dst, dport)
        a.peer = b
        b.peer = a
        return c
