"""A large capture read in byte ranges by many workers: spans routed to flow shares, then one reader per share.

A capture's records depend on whole flows (a TCP connection, a fragmented datagram, a QUIC handshake may run
through the whole file), so its byte ranges cannot each be turned into records. They can each be *routed*:

1. :func:`~stormguard.features.capture.files.plan_spans` cuts the file at packet-record (pcap) or block (pcapng)
   boundaries, with the reader state each span begins with (frame number, pcapng section and interfaces).
2. :func:`route_span`, one task per span: read its packets, decode each one's innermost addresses and send it to
   the flow share they hash to (CRC-32, as :class:`~stormguard.features.capture.reader.CaptureReader`'s shards), in a
   packet file per share; packets that give no flow yet (an IP fragment awaiting the rest of its datagram, a frame
   that is not IP) go to every share, and packets no share needs (IP without TCP/UDP) to none. It also writes the
   span's *timeline*, every packet's frame number, time and share, and counts the packet-level figures (packets,
   damage with its byte offset, undecodable packets by reason, fragments).
3. :func:`read_routed`, one task per share: walk the timelines of all spans in order and feed the capture reader
   its own packets, and a *tick* (the packet's frame number and time on a header of another share's flow,
   :func:`tick_frame`) for every packet of another share, so that idle sweeps happen at the same packets and times
   as in a whole read; it keeps the flows of its share
   (the reader's shard filter: a fragment sent to every share is reassembled by each, kept by one) and counts the
   flow-level figures.

So a share's records are those a whole read gives for its flows, and the shares together are the whole read's
records. What costs more than a whole read: each packet is decoded twice (routing, then parsing) and written once
to the scratch folder (about the capture's size on disk), and every share walks every packet's tick.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from struct import Struct
from typing import Any
from zlib import crc32

from stormguard.features.capture.files import Span, iter_packets
from stormguard.features.capture.packets import Decoder

from stormguard.report import ReplayStats

#: A routed packet in a share file: link type and captured length, then the bytes.
_PACKET = Struct("<iI")
#: The share of a packet every share needs (no flow yet: a fragment, a frame that is not IP), and of one none needs.
EVERY_SHARE = -1
NO_SHARE = -2


def tick_frame(share: int, shares: int) -> bytes:
    """A tick for the reader of ``share``: an Ethernet/IPv4/TCP header whose addresses hash to another share, so
    that the reader treats it exactly as a whole read treats a packet of a flow it does not keep (decoded by the
    fast path, passed over by the shard filter, then the sweep check with the packet's time)."""
    import struct

    target = (share + 1) % shares
    dst = bytes((192, 0, 2, 1))
    for i in range(1 << 16):
        src = bytes((198, 51, i >> 8, i & 0xFF))
        if (crc32(src) ^ crc32(dst)) % shares == target:
            break
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, src, dst)
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 0, 0, 0x50, 0x10, 0, 0, 0)
    return b"\x00" * 12 + b"\x08\x00" + ip + tcp


@dataclass
class RoutedSpan:
    """What :func:`route_span` found in one span: its packet-level counts (``stats``: packets, damage) and what the
    decoder could not use (``not_used``: packets decoded to IP without TCP/UDP; the reasons of the undecodable
    ones; fragments seen), summed over the spans by :func:`merge_unused` before they are counted."""

    index: int
    packets: int = 0
    not_used: int = 0
    fragments: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    stats: ReplayStats = field(default_factory=ReplayStats)


def span_files(folder: str | os.PathLike[str], index: int, share: int | None = None) -> Path:
    base = Path(folder) / f"span-{index:05d}"
    return base.with_suffix(".timeline") if share is None else base.with_suffix(f".share-{share:03d}")


def route_span(path: str, kind: str, span: Span, index: int, shares: int, folder: str) -> RoutedSpan:
    """Worker: route the packets of ``span`` of the capture ``path`` to ``shares`` share files (see the module
    docstring) in ``folder``."""
    import numpy as np

    name = Path(path).name
    result = RoutedSpan(index)
    decoder = Decoder()
    decode = decoder.decode
    frames: list[int] = []
    times: list[float] = []
    dests: list[int] = []
    outs = [open(span_files(folder, index, s), "wb", buffering=1 << 20) for s in range(shares)]  # noqa: SIM115
    pack = _PACKET.pack
    try:
        for frame, ts, lt, buf, off, caplen in iter_packets(path, name, kind, result.stats, span=span):
            r = decode(lt, buf, off, off + caplen)
            if r is None:  # (counted by a share's reader: a fragment may complete there, not here)
                dest = EVERY_SHARE
            elif r[0] != 6 and r[0] != 17:
                result.not_used += 1
                dest = NO_SHARE
            else:
                dest = (crc32(r[1]) ^ crc32(r[2])) % shares
            frames.append(frame)
            times.append(ts)
            dests.append(dest)
            if dest == NO_SHARE:
                continue
            head = pack(lt, caplen)
            data = memoryview(buf)[off:off + caplen]
            for out in outs if dest == EVERY_SHARE else (outs[dest],):
                out.write(head)
                out.write(data)
            del data
    finally:
        for out in outs:
            out.close()
    result.packets = len(frames)
    result.stats.packets += len(frames)
    result.skipped = dict(decoder.skipped)
    result.fragments = decoder.fragments
    timeline = np.empty(len(frames), dtype=[("frame", "<i8"), ("ts", "<f8"), ("dest", "<i2")])
    timeline["frame"], timeline["ts"], timeline["dest"] = frames, times, dests
    timeline.tofile(span_files(folder, index))
    return result


def merge_unused(spans: list[RoutedSpan], name: str, stats: ReplayStats, every_share_unused: int) -> None:
    """Count the unusable packets and fragments into ``stats`` once, as a whole read counts them at its end (one
    warning per reason, not one per span). ``every_share_unused``: how many of the packets sent to every share
    stayed unusable in a share's reader (:func:`unused_count` of its packet counts) — a span cannot tell, since
    the rest of a fragmented datagram may be in an earlier span."""
    from stormguard.features.capture.reader import count_unused

    skipped: dict[str, int] = {}
    for span in spans:
        for reason, n in span.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    count_unused(stats, name, skipped, sum(span.fragments for span in spans),
                 every_share_unused + sum(span.not_used for span in spans))


def unused_count(packet_stats: ReplayStats) -> int:
    """Packets a share's reader could not use, from the packet-level counts it was given (every one of them was
    sent to every share: the others are its own flows' or ticks)."""
    return sum(n for reason, n in packet_stats.skipped.items()
               if reason.startswith(("packets skipped: ", "packets without TCP/UDP")))


def _packets(folder: str, spans: int, share: int, shares: int) -> Iterator[tuple[Any, ...]]:
    """The packets of ``share`` with ticks for the others', in frame order over every span."""
    import mmap

    import numpy as np

    unpack = _PACKET.unpack_from
    tick = tick_frame(share, shares)
    size_tick = len(tick)
    for index in range(spans):
        timeline = np.fromfile(span_files(folder, index), dtype=[("frame", "<i8"), ("ts", "<f8"), ("dest", "<i2")])
        share_file = span_files(folder, index, share)
        with open(share_file, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data: Any = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            try:
                pos = 0
                for frame, ts, dest in zip(timeline["frame"].tolist(), timeline["ts"].tolist(),
                                           timeline["dest"].tolist(), strict=True):
                    if dest == share or dest == EVERY_SHARE:
                        lt, caplen = unpack(data, pos)
                        pos += 8
                        yield frame, ts, lt, data, pos, caplen
                        pos += caplen
                    else:
                        yield frame, ts, 1, tick, 0, size_tick
                if pos != size:
                    raise ValueError(f"{share_file}: {size - pos} bytes left after the span's packets")
            finally:
                if size:
                    data.close()


def read_routed(path: str, kind: str, folder: str, spans: int, share: int, shares: int,
                stats: ReplayStats, packet_stats: ReplayStats | None = None) -> Iterator[dict[str, Any]]:
    """Worker: the records of the flows of ``share`` (of ``shares``) of the capture ``path``, from the routed
    spans in ``folder``; flow-level counts into ``stats``. The packet-level ones were counted by the spans; this
    reader's go to ``packet_stats`` (for :func:`unused_count`), else nowhere."""
    from stormguard.features.capture.reader import _Capture

    name = Path(path).name
    pstats = packet_stats if packet_stats is not None else ReplayStats()
    cap = _Capture(name, kind, stats, pstats=pstats, shard=(share, shares))
    try:
        for row in cap.run(_packets(folder, spans, share, shares)):
            if row is not None:
                yield row
    except Exception as exc:  # a reader bug must not lose what was found so far (as CaptureReader)
        stats.warn(name, f"reading flow share {share + 1}/{shares} stopped by an internal error: "
                   f"{type(exc).__name__}: {exc}", reason="capture not fully read (internal error)")
    cap.at = None
    yield from cap.flush("open")
