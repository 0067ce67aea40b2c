"""pcap and pcapng readers that yield packets without copying them.

Both readers read the file in large chunks and yield ``(frame, ts, linktype, buf, off, caplen)`` tuples: the packet
is ``buf[off:off + caplen]``, and ``buf`` is shared by many packets (decoders use ``struct.unpack_from`` on it, so no
per-packet copy is made). ``frame`` is the 1-based packet number as Wireshark counts it.

Damage (an impossible record length, a block whose trailing length disagrees, a file cut mid-packet) ends the
file with a warning that names the file and byte offset; every packet before the damage has been yielded.
"""

from __future__ import annotations

import io
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from struct import Struct, unpack_from
from typing import BinaryIO

from stormguard.report import ReplayStats

CHUNK = 4 << 20
#: A record claiming more than this is damage, not a packet (jumbo frames + headroom; tools cap at 256 KiB).
MAX_PACKET = 262144 + 65536
MAX_BLOCK = 16 << 20
#: How far past a damaged pcap record header we look for the next plausible one, and how often per file.
RESYNC_SCAN = 1 << 16
MAX_RESYNCS = 64
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)

Packet = tuple[int, float, int, bytes, int, int]
#: A pcapng interface as the reader keeps it: (link type, time divisor or 0, time multiplier, offset seconds).
Interface = tuple[int, int, float, int]


@dataclass(frozen=True)
class Span:
    """Bytes ``[start, stop)`` of a capture that begin at a packet record (pcap) or block (pcapng) boundary, with
    what a reader needs to begin there: ``frame``, the packets before it (so frame numbers stay those of a whole
    read) and, for pcapng, the section's byte order, its interfaces and the last timestamp (simple packet blocks
    carry none). ``stop`` None: to the end of the file, with a whole read's damage handling. Found by
    :func:`plan_spans`."""

    start: int
    stop: int | None
    frame: int = 0
    endian: str = "<"
    interfaces: tuple[Interface, ...] = ()
    last_ts: float = 0.0


class _Pages:
    """Drop the pages of a mapped file that a walk has passed: they are file-backed (nothing is lost) but count in
    the resident set, and a reader or planner on a memory-limited worker walks files many times its limit."""

    __slots__ = ("m", "released")

    def __init__(self, m: mmap.mmap) -> None:
        self.m = m
        self.released = 0

    def passed(self, pos: int) -> None:
        upto = (pos - (1 << 20)) & ~(mmap.PAGESIZE - 1)
        if upto - self.released >= (8 << 20) and _DONTNEED is not None:
            try:
                self.m.madvise(_DONTNEED, self.released, upto - self.released)
            except (OSError, ValueError):  # pragma: no cover - advisory only
                pass
            self.released = upto


class _Reader:
    """Chunked reader with a sliding window: ``need(n)`` makes ``n`` bytes available at ``pos``."""

    __slots__ = ("fh", "buf", "pos", "base", "eof", "progress", "mapped", "reported", "pages")

    def __init__(self, fh: BinaryIO, progress: Callable[[int], None] | None) -> None:
        self.fh = fh
        self.buf: bytes | mmap.mmap = b""
        self.pos = 0
        self.base = 0  # file offset of buf[0]
        self.eof = False
        self.progress = progress
        self.mapped: mmap.mmap | None = None
        self.reported = 0
        self.pages: _Pages | None = None
        try:  # a regular file: map it whole (no copies, no chunk boundaries); else read chunks
            size = os.fstat(fh.fileno()).st_size
            if size > 0:
                self.mapped = self.buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                self.pages = _Pages(self.mapped)
                self.eof = True
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            self.mapped = None

    def tick(self, pos: int) -> None:
        """Mapped files: report progress up to ``pos`` (reads report themselves) and drop the pages already
        consumed from memory, so a large capture does not stay resident (they are file-backed: nothing is lost)."""
        if self.pages is None:
            return
        if self.progress is not None and pos > self.reported:
            self.progress(pos - self.reported)
            self.reported = pos
        self.pages.passed(pos)  # (keeps the last MiB)

    def close(self) -> None:
        if self.mapped is not None:
            self.tick(len(self.mapped))
            self.buf = b""
            try:
                self.mapped.close()
            except BufferError:  # pragma: no cover - a view still alive somewhere
                pass
            self.mapped = None
            self.pages = None

    def need(self, n: int) -> bool:
        if len(self.buf) - self.pos >= n:
            return True
        while not self.eof and len(self.buf) - self.pos < n:
            data = self.fh.read(max(CHUNK, n))
            if not data:
                self.eof = True
                break
            if self.progress is not None:
                self.progress(len(data))
            self.base += self.pos
            self.buf = self.buf[self.pos:] + data
            self.pos = 0
        return len(self.buf) - self.pos >= n

    @property
    def offset(self) -> int:
        return self.base + self.pos


_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9),
    b"\x34\xcd\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xcd\x34": (">", 1e-6),  # Kuznetzov's modified pcap
}


def _at_span(r: _Reader, span: Span | None) -> int:
    """Check that a span can be read from ``r`` (a mapped regular file) and return its stop offset (or "none")."""
    if span is None:
        return 1 << 62
    if r.mapped is None:
        raise ValueError("a capture span is read from a regular file (mapped), not a stream")
    return span.stop if span.stop is not None else 1 << 62


def iter_pcap(path, name: str, stats: ReplayStats,
              progress: Callable[[int], None] | None = None, span: Span | None = None) -> Iterator[Packet]:
    """Packets of a classic pcap file (either byte order, micro- or nanosecond timestamps); with ``span``, the
    packets of that byte range only (frame numbers as in a whole read)."""
    fh = open(path, "rb", buffering=0)  # closed in the finally below
    r = _Reader(fh, progress)
    try:
        stop = _at_span(r, span)
        if not r.need(24):
            stats.warn(name, "file too short for a pcap header", offset=0, reason="damaged capture")
            return
        magic = r.buf[:4]
        if magic not in _PCAP_MAGIC:
            stats.warn(name, "not a pcap file (bad magic)", offset=0, reason="damaged capture")
            return
        endian, unit = _PCAP_MAGIC[magic]
        modified = magic in (b"\x34\xcd\xb2\xa1", b"\xa1\xb2\xcd\x34")
        hdr_len = 24 if modified else 16
        linktype = unpack_from(endian + "I", r.buf, 20)[0] & 0x0FFFFFFF
        rec = endian + "IIII"
        nano = unit == 1e-9
        r.pos = 24
        frame = 0
        rec_unpack = Struct(rec).unpack_from
        div = 1e9 if nano else 1e6
        buf = r.buf
        pos = 24
        blen = len(buf)
        good_sec = -1
        good_data = 24  # where the last good packet's data starts: a resync never goes back before it
        resyncs = 0
        if span is not None and span.start > 24:
            pos = good_data = span.start
            frame = span.frame
        while True:
            if pos >= stop:  # (a span's end: a record boundary; mapped files only, where buf[0] is byte 0)
                return
            if blen - pos < 16:
                r.pos = pos
                if not r.need(16):
                    if len(r.buf) - r.pos:
                        stats.warn(name, f"capture cut inside a packet record header ({len(r.buf) - r.pos} stray "
                                   "bytes)", offset=r.offset, reason="truncated capture")
                    return
                buf = r.buf
                pos = r.pos
                blen = len(buf)
                good_data = pos  # the window moved: no looking back past this record
            sec, frac, caplen, _orig = rec_unpack(buf, pos)
            if caplen > MAX_PACKET:
                r.pos = pos
                bad = r.offset
                if resyncs >= MAX_RESYNCS or not _resync_pcap(r, rec_unpack, hdr_len, good_sec, div,
                                                              good_data):
                    stats.warn(name, f"damaged packet record (captured length {caplen}); rest of file skipped",
                               offset=bad, reason="damaged capture")
                    return
                resyncs += 1
                stats.warn(name, f"damaged packet record (captured length {caplen}); reading resumed at the next "
                           f"plausible record, byte {r.offset}", offset=bad, reason="damaged capture")
                buf = r.buf
                pos = r.pos
                blen = len(buf)
                continue
            size = hdr_len + caplen
            if blen - pos < size:
                r.pos = pos
                if not r.need(size):
                    stats.warn(name, f"capture cut inside packet {frame + 1} ({len(r.buf) - r.pos - hdr_len} of "
                               f"{caplen} bytes)", offset=r.offset, reason="truncated capture")
                    return
                buf = r.buf
                pos = r.pos
                blen = len(buf)
                good_data = pos
            frame += 1
            good_sec = sec
            good_data = pos + hdr_len
            yield frame, sec + frac / div, linktype, buf, pos + hdr_len, caplen
            pos += size
            if not frame & 0x3FFF:
                r.tick(pos)
    finally:
        r.close()
        fh.close()


def _plausible(hdr: tuple[int, int, int, int], good_sec: int, div: float) -> bool:
    sec, frac, caplen, orig = hdr
    return (0 < caplen <= orig <= MAX_PACKET and frac < div
            and (good_sec < 0 or abs(sec - good_sec) <= 86400))


def _resync_pcap(r: _Reader, rec_unpack, hdr_len: int, good_sec: int, div: float, floor: int) -> bool:
    """After a damaged record header at ``r.pos``, move ``r.pos`` to the nearest offset (up to 256 bytes back, not
    before ``floor`` = the previous packet's data, to :data:`RESYNC_SCAN` ahead) where two consecutive plausible
    records start (or one that ends the file)."""
    base = r.base
    r.need(RESYNC_SCAN + 2 * (hdr_len + MAX_PACKET))
    floor -= r.base - base  # the window may have moved (then floor < 0: it was before the window)
    if floor < 0:
        floor = r.pos - 1
    buf = r.buf
    n = len(buf)
    start = r.pos
    # the previous record's length may have been too long by a few bytes: look a little way back too (but
    # never before the previous packet's data, so nothing is read twice)
    back = max(0, floor + 1, start - 256)
    for i in range(back, min(n - hdr_len, start + RESYNC_SCAN) + 1):
        if i == start:
            continue
        h = rec_unpack(buf, i)
        if not _plausible(h, good_sec, div):
            continue
        j = i + hdr_len + h[2]
        if j == n and r.eof:
            r.pos = i
            return True
        if j + hdr_len <= n and _plausible(rec_unpack(buf, j), h[0], div):
            r.pos = i
            return True
    return False


_KNOWN_BLOCKS = frozenset((1, 2, 3, 4, 5, 6, 7, 9, 10, 0x0A0D0D0A, 0x00000BAD, 0x40000BAD))


def _resync_pcapng(r: _Reader, endian: str, interfaces: int) -> bool:
    """After a damaged block at ``r.pos``, move ``r.pos`` to the next 4-byte aligned block (within
    :data:`RESYNC_SCAN` bytes) of a known type whose leading and trailing lengths agree."""
    r.need(RESYNC_SCAN + MAX_PACKET + 64)
    buf = r.buf
    n = len(buf)
    start = r.pos
    hdr = endian + "II"
    one = endian + "I"
    for i in range(start + 4, min(n - 12, start + RESYNC_SCAN) + 1, 4):
        btype, blen = unpack_from(hdr, buf, i)
        if btype not in _KNOWN_BLOCKS or blen < 12 or blen % 4 or i + blen > n or blen > MAX_BLOCK:
            continue
        if unpack_from(one, buf, i + blen - 4)[0] != blen:
            continue
        if btype == 6 and (blen < 32 or unpack_from(one, buf, i + 8)[0] >= interfaces):
            continue
        r.pos = i
        return True
    return False


def iter_pcapng(path, name: str, stats: ReplayStats,
                progress: Callable[[int], None] | None = None, span: Span | None = None) -> Iterator[Packet]:
    """Packets of a pcapng file (sections in either byte order, several interfaces, EPB/SPB/OPB); with ``span``,
    the packets of that byte range only (frame numbers as in a whole read)."""
    fh = open(path, "rb", buffering=0)  # closed in the finally below
    r = _Reader(fh, progress)
    try:
        stop = _at_span(r, span)
        endian = "<"
        # per interface: (linktype, divisor or None, multiplier, ts offset seconds)
        ifaces: list[Interface] = []
        frame = 0
        last_ts = 0.0
        resyncs = 0
        if span is not None:
            r.pos, frame, endian, last_ts = span.start, span.frame, span.endian, span.last_ts
            ifaces = list(span.interfaces)
        while True:
            if r.pos >= stop:  # (a span's end: a block boundary; mapped files only, where buf[0] is byte 0)
                return
            if not r.need(12):
                if len(r.buf) - r.pos:
                    stats.warn(name, "capture cut inside a block header", offset=r.offset, reason="truncated capture")
                return
            buf = r.buf
            pos = r.pos
            if buf[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
                bom = buf[pos + 8:pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                else:
                    stats.warn(name, "section header with a bad byte-order magic; rest of file skipped",
                               offset=r.offset, reason="damaged capture")
                    return
                ifaces = []
            btype, blen = unpack_from(endian + "II", buf, pos)
            damage = None
            if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                damage = f"damaged block (type 0x{btype:x}, length {blen})"
            elif not r.need(blen):
                damage = (f"capture cut inside a block (type 0x{btype:x}, {len(r.buf) - r.pos} of {blen} bytes)")
            elif unpack_from(endian + "I", r.buf, r.pos + blen - 4)[0] != blen:
                damage = f"damaged block (type 0x{btype:x}: trailing length differs)"
            if damage is not None:
                bad = r.offset
                if resyncs < MAX_RESYNCS and _resync_pcapng(r, endian, len(ifaces)):
                    resyncs += 1
                    stats.warn(name, f"{damage}; reading resumed at the next plausible block, byte {r.offset}",
                               offset=bad, reason="damaged capture")
                    continue
                truncated = damage.startswith("capture cut")
                stats.warn(name, damage if truncated else f"{damage}; rest of file skipped", offset=bad,
                           reason="truncated capture" if truncated else "damaged capture")
                return
            buf = r.buf
            pos = r.pos
            body_end = pos + blen - 4
            if btype == 6 or btype == 2:  # enhanced / obsolete packet block
                if btype == 6:
                    ifid, hi, lo, caplen, _orig = unpack_from(endian + "IIIII", buf, pos + 8)
                else:
                    ifid, _drops, hi, lo, caplen, _orig = unpack_from(endian + "HHIIII", buf, pos + 8)
                data = pos + 28
                frame += 1
                if ifid >= len(ifaces) or data + caplen > body_end:
                    stats.warn(name, f"packet {frame}: bad interface id {ifid} or captured length {caplen}",
                               offset=r.offset, reason="damaged packet block")
                else:
                    lt, div, mul, tsoff = ifaces[ifid]
                    v = (hi << 32) | lo
                    ts = last_ts = (v / div if div else v * mul) + tsoff
                    yield frame, ts, lt, buf, data, caplen
            elif btype == 3:  # simple packet block
                frame += 1
                if not ifaces:
                    stats.warn(name, f"packet {frame}: simple packet block before any interface",
                               offset=r.offset, reason="damaged packet block")
                else:
                    orig = unpack_from(endian + "I", buf, pos + 8)[0]
                    caplen = min(orig, body_end - (pos + 12))
                    yield frame, last_ts, ifaces[0][0], buf, pos + 12, caplen  # SPBs carry no time
            elif btype == 1:  # interface description
                if blen >= 20:
                    ifaces.append(_interface(buf, pos, body_end, endian))
            r.pos = pos + blen
            if not frame & 0x3FFF:
                r.tick(r.pos)
    finally:
        r.close()
        fh.close()


def _interface(buf: bytes, pos: int, body_end: int, endian: str) -> Interface:
    """An interface description block at ``pos``: its link type and timestamp resolution and offset."""
    lt = unpack_from(endian + "H", buf, pos + 8)[0]
    div, mul, tsoff = 1000000, 0.0, 0
    p = pos + 16
    while p + 4 <= body_end:
        code, olen = unpack_from(endian + "HH", buf, p)
        if code == 0:
            break
        if code == 9 and olen >= 1:
            v = buf[p + 4]
            if v & 0x80:
                div, mul = 0, 2.0 ** -(v & 0x7F)
            else:
                div, mul = 10 ** v, 0.0
        elif code == 14 and olen >= 8:
            tsoff = unpack_from(endian + "q", buf, p + 4)[0]
        p += 4 + ((olen + 3) & ~3)
    return lt, div, mul, tsoff


def iter_packets(path, name: str, kind: str, stats: ReplayStats,
                 progress: Callable[[int], None] | None = None, span: Span | None = None) -> Iterator[Packet]:
    """Packets of a pcap/pcapng file (``kind`` from :func:`features.sniff.sniff`), or of one ``span`` of it."""
    return (iter_pcapng if kind == "pcapng" else iter_pcap)(path, name, stats, progress, span)


def plan_spans(path: str | os.PathLike[str], kind: str, split_bytes: int) -> list[Span]:
    """Cut a capture into spans of about ``split_bytes`` at packet-record (pcap) or block (pcapng) boundaries, by
    walking the record headers from the start (each record's length says where the next begins: a capture has
    no other marker, so this is one sequential read of the headers). The walk checks what a reader checks
    (plausible lengths, a pcapng block's trailing length, a record cut by the end of the file); at the first
    sign of damage it stops cutting, so the last span, which runs to the end of the file, gets the damage
    handling (resynchronisation, reports) of a whole read. The spans cover the file; one span when it is small,
    not a capture, or not a regular file."""
    with open(path, "rb") as fh:
        try:
            m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return [Span(0, None)]
        try:
            return _plan_pcapng(m, split_bytes) if kind == "pcapng" else _plan_pcap(m, split_bytes)
        finally:
            m.close()


def _plan_pcap(m: mmap.mmap, split_bytes: int) -> list[Span]:
    size = len(m)
    if size < 24 or m[:4] not in _PCAP_MAGIC:
        return [Span(0, None)]
    endian = _PCAP_MAGIC[m[:4]][0]
    hdr_len = 24 if m[:4] in (b"\x34\xcd\xb2\xa1", b"\xa1\xb2\xcd\x34") else 16
    caplen_at = Struct(endian + "I").unpack_from
    spans: list[Span] = []
    pos = start = 24
    frame = first = 0
    pages = _Pages(m)
    previous = pos  # where the record before ``pos`` starts
    while size - pos >= 16:
        caplen = caplen_at(m, pos + 8)[0]
        end = pos + hdr_len + caplen
        if caplen > MAX_PACKET or end > size:
            # damage or a cut record: the last span reads it as a whole read would, and begins before the
            # record in front of it (a reader's resynchronisation may look back into that record)
            if spans and previous < start:
                start, first = spans[-1].start, spans[-1].frame
                spans.pop()
            break
        previous = pos
        pos = end
        frame += 1
        if not frame & 0x3FFF:
            pages.passed(pos)
        if pos - start >= split_bytes and pos < size:
            spans.append(Span(start, pos, first))
            start, first = pos, frame
    spans.append(Span(start, None, first))
    return spans


def _plan_pcapng(m: mmap.mmap, split_bytes: int) -> list[Span]:
    size = len(m)
    spans: list[Span] = []
    pos = start = 0
    frame = first = 0
    endian, first_endian = "<", "<"
    ifaces: list[Interface] = []
    first_ifaces: tuple[Interface, ...] = ()
    last_ts = first_ts = 0.0
    pages = _Pages(m)
    while size - pos >= 12:
        if m[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
            bom = m[pos + 8:pos + 12]
            if bom not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                break
            endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            ifaces = []
        btype, blen = unpack_from(endian + "II", m, pos)
        if (blen < 12 or blen % 4 or blen > MAX_BLOCK or pos + blen > size
                or unpack_from(endian + "I", m, pos + blen - 4)[0] != blen):
            break  # damage: the last span reads it as a whole read would
        body_end = pos + blen - 4
        if btype == 6 or btype == 2:
            if btype == 6:
                ifid, hi, lo, caplen = unpack_from(endian + "IIII", m, pos + 8)
            else:
                ifid, _drops, hi, lo, caplen = unpack_from(endian + "HHIII", m, pos + 8)
            frame += 1
            if ifid < len(ifaces) and pos + 28 + caplen <= body_end:
                _lt, div, mul, tsoff = ifaces[ifid]
                v = (hi << 32) | lo
                last_ts = (v / div if div else v * mul) + tsoff
        elif btype == 3:
            frame += 1
        elif btype == 1 and blen >= 20:
            ifaces.append(_interface(m, pos, body_end, endian))
        pos += blen
        if not frame & 0x3FFF:
            pages.passed(pos)
        if pos - start >= split_bytes and pos < size:
            spans.append(Span(start, pos, first, first_endian, first_ifaces, first_ts))
            start, first, first_endian, first_ifaces, first_ts = pos, frame, endian, tuple(ifaces), last_ts
    spans.append(Span(start, None, first, first_endian, first_ifaces, first_ts))
    return spans
