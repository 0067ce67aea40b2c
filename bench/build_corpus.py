"""Build large, realistic replay inputs for the benchmarks from the reference corpus.

* :func:`build_capture` — one classic libpcap file (Ethernet link type, microsecond timestamps) made of every packet
  of every corpus capture (``pcap/**``, pcap and pcapng, all link types), repeated N times. Every copy of every
  file (a "unit": repetition x file) is re-addressed so that its flows are new flows: every IPv4 address ``a``
  becomes a fresh ``10.x.y.z`` (and every IPv6 address a fresh ``fd53:4700:<unit>::<n>``), the same for ``a``
  wherever it appears in that unit, so both directions of a flow stay consistent (the corpus has byte-identical
  files under different names, which would otherwise repeat flows 10 ms apart). Addresses inside GRE / ERSPAN /
  VXLAN / Geneve / IP-in-IP tunnels are rewritten too; ports are untouched. IPv4 header checksums are recomputed and
  TCP/UDP/ICMPv6 checksums adjusted incrementally (RFC 1624), so the file stays valid for tshark; the outer UDP
  checksum of a VXLAN/Geneve packet whose inner addresses changed is set to 0 ("none"). (The parsers benchmarked
  here, stormguard and pyja3/dpkt, ignore checksums anyway.) Timestamps are shifted so the file is monotonic:
  each (repetition, file) starts 10 ms after the previous one ended and keeps its own packet spacing; a packet
  whose original timestamp goes backwards gets the previous one's, and a gap of over an hour (two corpus files
  jump by decades) becomes 1 ms.
* :func:`build_log` — a combined-format access log of N x 10,000 lines from the corpus Apache log, each
  repetition shifted forward by whole days and with client addresses re-mapped per repetition.

Outputs are cached under ``bench/out/`` (git-ignored) with a JSON sidecar (``<file>.json``) holding the counts; a
cache entry is reused when the inputs, the builder version and the parameters are unchanged.

Run ``python bench/build_corpus.py --selftest`` to check the capture builder on its own (no stormguard needed).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import re
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import dpkt

BUILDER_VERSION = 5
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "out"
DEFAULT_CORPUS = Path(os.environ.get("STORMGUARD_CORPUS", HERE.parent.parent / "shared" / "corpus"))

ETH_IPV4 = b"\x08\x00"
ETH_IPV6 = b"\x86\xdd"
FAKE_MACS = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"  # dst, src (locally administered)
SNAPLEN = 262144
BASE_TS_US = 1_700_000_000 * 1_000_000  # 2023-11-14, an arbitrary start for the built capture
MAX_GAP_US = 3600 * 1_000_000  # a longer gap between two packets of one file (a clock jump) becomes 1 ms

# ----------------------------------------------------------------------------------------------------------------
# Reading inputs (dpkt) and turning every link type into Ethernet frames


def _ip_ethertype(payload: bytes) -> bytes | None:
    if not payload:
        return None
    v = payload[0] >> 4
    return ETH_IPV4 if v == 4 else ETH_IPV6 if v == 6 else None


def _to_ethernet(linktype: int, buf: bytes) -> bytes | None:
    """The packet as an Ethernet frame, or ``None`` when it carries neither IPv4 nor IPv6 (nor is Ethernet)."""
    if linktype == 1:  # EN10MB
        return buf
    if linktype in (0, 108):  # NULL / LOOP: 4-byte address family (host or network order)
        payload = buf[4:]
        et = _ip_ethertype(payload)
    elif linktype in (12, 14, 101, 228, 229):  # raw IP (12/14 on some BSDs), IPV4, IPV6
        payload = buf
        et = _ip_ethertype(payload)
    elif linktype == 113:  # Linux cooked v1: protocol at 14..16
        payload = buf[16:]
        proto = buf[14:16]
        et = proto if proto in (ETH_IPV4, ETH_IPV6) else _ip_ethertype(payload)
    elif linktype == 276:  # Linux cooked v2: protocol at 0..2
        payload = buf[20:]
        proto = buf[0:2]
        et = proto if proto in (ETH_IPV4, ETH_IPV6) else _ip_ethertype(payload)
    elif linktype in (9, 50, 51):  # PPP, PPP-HDLC, PPPoE session payload
        i = 2 if buf[:2] == b"\xff\x03" else 0
        proto, payload = buf[i:i + 2], buf[i + 2:]
        et = ETH_IPV4 if proto == b"\x00\x21" else ETH_IPV6 if proto == b"\x00\x57" else None
    else:
        return None
    if et is None:
        return None
    return FAKE_MACS + et + payload


def _open_reader(fh):
    head = fh.read(4)
    fh.seek(0)
    if head == b"\x0a\x0d\x0d\x0a":
        return "pcapng", dpkt.pcapng.Reader(fh)
    return "pcap", dpkt.pcap.Reader(fh)


def read_frames(path: Path) -> tuple[list[tuple[int, bytes]], Counter]:
    """All packets of one capture as (timestamp in µs, Ethernet frame); counts what was dropped and why."""
    notes: Counter = Counter()
    frames: list[tuple[int, bytes]] = []
    try:
        with open(path, "rb") as fh:
            kind, reader = _open_reader(fh)
            linktype = reader.datalink()
            notes[f"{kind} linktype {linktype}"] += 1
            it = iter(reader)
            while True:
                try:
                    ts, buf = next(it)
                except StopIteration:
                    break
                except Exception as exc:  # a damaged file: keep what was read
                    notes[f"read stopped early: {type(exc).__name__}"] += 1
                    break
                frame = _to_ethernet(linktype, bytes(buf))
                if frame is None:
                    notes[f"dropped: not IP on linktype {linktype}"] += 1
                    continue
                frames.append((int(round(float(ts) * 1_000_000)), frame))
    except Exception as exc:
        notes[f"unreadable: {type(exc).__name__}: {exc}"] += 1
    return frames, notes


def corpus_captures(corpus: Path) -> list[Path]:
    root = corpus / "pcap"
    return sorted(p for p in root.rglob("*") if p.is_file())


def expected_client_hellos(corpus: Path, capture: Path) -> Counter:
    """Rows of tshark's expected CSV for ``capture``, by kind (all / tcp-ipv4 / ...)."""
    rel = capture.relative_to(corpus / "pcap")
    csv_path = corpus / "expected" / "tshark" / rel.parent / (rel.name + ".csv")
    c: Counter = Counter()
    if not csv_path.exists():
        return c
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            c["all"] += 1
            if row.get("ja3"):
                c["with_ja3"] += 1  # tshark gives no JA3 for SSLv2-format hellos
            c[row.get("proto") or "?"] += 1
            if row.get("transport") == "tcp" and ":" not in (row.get("src_ip") or ":"):
                c["tcp_ipv4"] += 1
    return c


# ----------------------------------------------------------------------------------------------------------------
# Where the addresses are: a small decoder that finds every IP header in a frame (through tunnels)

# A rewrite plan entry: (ip_offset, version, l4_checksum_offset or -1, is_udp, tunnel_udp_checksum_offset or -1)
PlanEntry = tuple[int, int, int, bool, int]


def _plan_ether(b: bytes, off: int, out: list, depth: int, tunnel_csum: int) -> None:
    if depth > 6 or off + 14 > len(b):
        return
    et = b[off + 12:off + 14]
    off += 14
    while et in (b"\x81\x00", b"\x88\xa8", b"\x91\x00") and off + 4 <= len(b):
        et = b[off + 2:off + 4]
        off += 4
    if et == b"\x88\x47" or et == b"\x88\x48":  # MPLS: labels until bottom of stack, then guess IP
        while off + 4 <= len(b):
            bos = b[off + 2] & 1
            off += 4
            if bos:
                break
        et = _ip_ethertype(b[off:off + 1]) or b""
    elif et == b"\x88\x64" and off + 8 <= len(b):  # PPPoE session
        proto = b[off + 6:off + 8]
        off += 8
        et = ETH_IPV4 if proto == b"\x00\x21" else ETH_IPV6 if proto == b"\x00\x57" else b""
    _plan_ip(b, off, et, out, depth + 1, tunnel_csum)


def _plan_ip(b: bytes, off: int, et: bytes, out: list, depth: int, tunnel_csum: int) -> None:
    if depth > 6:
        return
    if et == ETH_IPV4:
        if off + 20 > len(b) or b[off] >> 4 != 4:
            return
        ihl = (b[off] & 0x0F) * 4
        if ihl < 20:
            return
        proto = b[off + 9]
        frag_off = int.from_bytes(b[off + 6:off + 8], "big") & 0x1FFF
        l4 = off + ihl
        first_frag = frag_off == 0
        _plan_l4(b, off, 4, proto, l4, first_frag, out, depth, tunnel_csum)
    elif et == ETH_IPV6:
        if off + 40 > len(b) or b[off] >> 4 != 6:
            return
        nh = b[off + 6]
        l4 = off + 40
        first_frag = True
        while nh in (0, 43, 60, 44) and l4 + 8 <= len(b):
            if nh == 44:
                first_frag = (int.from_bytes(b[l4 + 2:l4 + 4], "big") >> 3) == 0
                nh, l4 = b[l4], l4 + 8
            else:
                nh, l4 = b[l4], l4 + (b[l4 + 1] + 1) * 8
        _plan_l4(b, off, 6, nh, l4, first_frag, out, depth, tunnel_csum)


def _plan_l4(b: bytes, ip_off: int, ver: int, proto: int, l4: int, first_frag: bool, out: list, depth: int,
             tunnel_csum: int) -> None:
    csum = -1
    is_udp = False
    if first_frag:
        if proto == 6 and l4 + 18 <= len(b):
            csum = l4 + 16
        elif proto == 17 and l4 + 8 <= len(b):
            csum, is_udp = l4 + 6, True
        elif proto == 58 and ver == 6 and l4 + 4 <= len(b):
            csum = l4 + 2
    out.append((ip_off, ver, csum, is_udp, tunnel_csum))
    if not first_frag:
        return
    if proto == 4:
        _plan_ip(b, l4, ETH_IPV4, out, depth + 1, -1)
    elif proto == 41:
        _plan_ip(b, l4, ETH_IPV6, out, depth + 1, -1)
    elif proto == 47 and l4 + 4 <= len(b):
        _plan_gre(b, l4, out, depth + 1)
    elif proto == 17 and l4 + 8 <= len(b):
        sport = int.from_bytes(b[l4:l4 + 2], "big")
        dport = int.from_bytes(b[l4 + 2:l4 + 4], "big")
        udp_csum = l4 + 6
        p = l4 + 8
        if 4789 in (sport, dport) and p + 8 <= len(b) and b[p] & 0x08:  # VXLAN
            _plan_ether(b, p + 8, out, depth + 1, udp_csum)
        elif 6081 in (sport, dport) and p + 8 <= len(b):  # Geneve
            opt = (b[p] & 0x3F) * 4
            gproto = b[p + 2:p + 4]
            inner = p + 8 + opt
            if gproto == b"\x65\x58":
                _plan_ether(b, inner, out, depth + 1, udp_csum)
            elif gproto in (ETH_IPV4, ETH_IPV6):
                _plan_ip(b, inner, gproto, out, depth + 1, udp_csum)


def _plan_gre(b: bytes, off: int, out: list, depth: int) -> None:
    flags = int.from_bytes(b[off:off + 2], "big")
    proto = b[off + 2:off + 4]
    ver = flags & 0x7
    p = off + 4
    if flags & 0x8000:  # checksum present (left as is)
        p += 4
    if flags & 0x2000:  # key
        p += 4
    if flags & 0x1000:  # sequence
        p += 4
    if ver == 1 and flags & 0x0080:  # PPTP enhanced GRE: acknowledgment
        p += 4
    if proto in (ETH_IPV4, ETH_IPV6):
        _plan_ip(b, p, proto, out, depth + 1, -1)
    elif proto == b"\x65\x58":  # transparent Ethernet bridging
        _plan_ether(b, p, out, depth + 1, -1)
    elif proto == b"\x88\xbe":  # ERSPAN: type II has an 8-byte header when the sequence bit is set, type I none
        _plan_ether(b, p + 8 if flags & 0x1000 else p, out, depth + 1, -1)
    elif proto == b"\x22\xeb" and p + 12 <= len(b):  # ERSPAN type III (+8 with the O flag)
        _plan_ether(b, p + 12 + (8 if b[p + 11] & 1 else 0), out, depth + 1, -1)
    elif proto == b"\x88\x0b" and p + 2 <= len(b):  # PPP (PPTP)
        q = p + 2 if b[p:p + 2] == b"\xff\x03" else p
        pp = b[q:q + 2]
        if pp[:1] in (b"\x21", b"\x57"):  # protocol-field compression
            pp, q = b"\x00" + pp[:1], q + 1
        else:
            q += 2
        et = ETH_IPV4 if pp == b"\x00\x21" else ETH_IPV6 if pp == b"\x00\x57" else b""
        _plan_ip(b, q, et, out, depth + 1, -1)


def plan_frame(frame: bytes) -> tuple[PlanEntry, ...]:
    out: list[PlanEntry] = []
    _plan_ether(frame, 0, out, 0, -1)
    return tuple(out)


# ----------------------------------------------------------------------------------------------------------------
# Rewriting


def _csum_adjust(csum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 incremental update of a one's complement checksum for a changed 16-bit-aligned span."""
    s = (~csum) & 0xFFFF
    for i in range(0, len(old), 2):
        s += (~((old[i] << 8) | old[i + 1])) & 0xFFFF
        s += (new[i] << 8) | new[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def _ipv4_header_csum(h: bytes | bytearray) -> int:
    s = 0
    for i in range(0, len(h), 2):
        if i != 10:
            s += (h[i] << 8) | h[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


class Readdresser:
    """Per repetition, a consistent one-to-one map of original addresses to fresh ones (10/8 and fd53:4700::/32)."""

    def __init__(self, avoid: set[bytes]):
        self.avoid = avoid
        self.maps: dict[tuple[int, bytes], bytes] = {}
        self.n4 = 0
        self.n6 = 0

    def new(self, rep: int, addr: bytes) -> bytes:
        key = (rep, addr)
        got = self.maps.get(key)
        if got is None:
            if len(addr) == 4:
                while True:
                    self.n4 += 1
                    if self.n4 >= 1 << 24:
                        raise RuntimeError("out of 10/8 addresses")
                    got = bytes((10,)) + self.n4.to_bytes(3, "big")
                    if got not in self.avoid and got[3] not in (0, 255):
                        break
            else:
                self.n6 += 1
                got = b"\xfd\x53\x47\x00" + rep.to_bytes(4, "big") + self.n6.to_bytes(8, "big")
            self.maps[key] = got
        return got


def rewrite(frame: bytes, plan: tuple[PlanEntry, ...], rep: int, addrs: Readdresser) -> bytes:
    """``frame`` with its addresses mapped for ``rep`` (a (repetition, file) number) and checksums fixed."""
    if not plan:
        return frame
    b = bytearray(frame)
    for ip_off, ver, l4c, is_udp, tun_c in plan:
        if ver == 4:
            a0, n = ip_off + 12, 8
        else:
            a0, n = ip_off + 8, 32
        if a0 + n > len(b):
            continue
        old = bytes(b[a0:a0 + n])
        half = n // 2
        new = addrs.new(rep, old[:half]) + addrs.new(rep, old[half:])
        b[a0:a0 + n] = new
        if ver == 4:
            ihl = (b[ip_off] & 0x0F) * 4
            if ip_off + ihl <= len(b):
                b[ip_off + 10:ip_off + 12] = _ipv4_header_csum(b[ip_off:ip_off + ihl]).to_bytes(2, "big")
        if l4c >= 0 and l4c + 2 <= len(b):
            c = (b[l4c] << 8) | b[l4c + 1]
            if not (is_udp and c == 0):
                c = _csum_adjust(c, old, new)
                if is_udp and c == 0:
                    c = 0xFFFF
                b[l4c:l4c + 2] = c.to_bytes(2, "big")
        if tun_c >= 0 and tun_c + 2 <= len(b):
            b[tun_c:tun_c + 2] = b"\x00\x00"  # outer UDP checksum of a tunnel: "none"
    return bytes(b)


# ----------------------------------------------------------------------------------------------------------------
# The capture builder


def _fingerprint(paths: list[Path], *extra: object) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(repr((BUILDER_VERSION, *extra)).encode())
    return h.hexdigest()[:12]


def _drop_stale(out_dir: Path, pattern: str, keep: Path) -> None:
    """Remove earlier builds (other parameters or builder versions) of the same kind from the cache."""
    for old in out_dir.glob(pattern):
        if old != keep:
            old.unlink(missing_ok=True)
            Path(str(old) + ".json").unlink(missing_ok=True)


def _load_capture_corpus(corpus: Path) -> tuple[list[dict], dict]:
    files = []
    notes: Counter = Counter()
    expected: Counter = Counter()
    avoid: set[bytes] = set()
    for path in corpus_captures(corpus):
        frames, n = read_frames(path)
        notes.update(n)
        plans = [plan_frame(f) for _, f in frames]
        for (_, f), plan in zip(frames, plans, strict=True):
            for ip_off, ver, *_ in plan:
                if ver == 4:
                    avoid.add(f[ip_off + 12:ip_off + 16])
                    avoid.add(f[ip_off + 16:ip_off + 20])
        exp = expected_client_hellos(corpus, path)
        expected.update(exp)
        files.append({"path": path, "frames": frames, "plans": plans})
    per_rep = {
        "files": len(files),
        "file_packets": [[str(f["path"].relative_to(corpus / "pcap")), len(f["frames"])] for f in files],
        "packets": sum(len(f["frames"]) for f in files),
        "bytes": sum(16 + len(fr) for f in files for _, fr in f["frames"]),
        "expected_client_hellos": dict(expected),
        "notes": dict(notes),
    }
    return files, {"per_rep": per_rep, "avoid": avoid}


def build_capture(corpus: Path = DEFAULT_CORPUS, out_dir: Path = DEFAULT_OUT, size_mb: float = 100.0,
                  repeat: int | None = None, force: bool = False, log=print) -> tuple[Path, dict]:
    """Build (or reuse) the big capture; returns its path and its metadata (see the sidecar JSON)."""
    paths = corpus_captures(corpus)
    if not paths:
        raise SystemExit(f"no captures under {corpus / 'pcap'} (set STORMGUARD_CORPUS?)")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = _fingerprint(paths, "pcap", size_mb, repeat)
    out = out_dir / f"big-{key}.pcap"
    meta_path = out.with_suffix(".pcap.json")
    if not force and out.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("bytes") == out.stat().st_size:
            log(f"capture: reusing {out} ({meta['bytes'] / 1e6:.1f} MB, {meta['packets']:,} packets)")
            return out, meta
    t0 = time.perf_counter()
    files, info = _load_capture_corpus(corpus)
    per_rep = info["per_rep"]
    reps = repeat if repeat else max(1, math.ceil(size_mb * 1e6 / max(1, per_rep["bytes"])))
    log(f"capture: {per_rep['files']} corpus files, {per_rep['packets']:,} packets, "
        f"{per_rep['bytes'] / 1e6:.2f} MB per repetition -> {reps} repetitions")
    addrs = Readdresser(info["avoid"])
    tmp = out.with_suffix(".pcap.tmp")
    cur = BASE_TS_US
    n = 0
    pack = struct.Struct("<IIII").pack
    with open(tmp, "wb", buffering=1 << 20) as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, 1))
        for rep in range(reps):
            for i, f in enumerate(files):
                frames = f["frames"]
                if not frames:
                    continue
                unit = rep * len(files) + i
                prev = frames[0][0]
                cur += 10_000
                for (ts, frame), plan in zip(frames, f["plans"], strict=True):
                    delta = ts - prev
                    prev = ts
                    if 0 < delta <= MAX_GAP_US:
                        cur += delta
                    elif delta > MAX_GAP_US:
                        cur += 1_000
                    t = cur
                    data = rewrite(frame, plan, unit, addrs)[:SNAPLEN]
                    fh.write(pack(t // 1_000_000, t % 1_000_000, len(data), len(data)))
                    fh.write(data)
                    n += 1
    os.replace(tmp, out)
    _drop_stale(out_dir, "big-*.pcap", out)
    exp = {k: v * reps for k, v in per_rep["expected_client_hellos"].items()}
    meta = {
        "path": str(out),
        "bytes": out.stat().st_size,
        "packets": n,
        "repetitions": reps,
        "per_repetition": per_rep,
        "expected_client_hellos": exp,
        "ipv4_addresses_allocated": addrs.n4,
        "ipv6_addresses_allocated": addrs.n6,
        "first_ts": BASE_TS_US / 1e6,
        "last_ts": cur / 1e6,
        "build_seconds": round(time.perf_counter() - t0, 2),
        "builder_version": BUILDER_VERSION,
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    log(f"capture: wrote {out} ({meta['bytes'] / 1e6:.1f} MB, {n:,} packets, ~{exp.get('all', 0):,} ClientHellos "
        f"per tshark) in {meta['build_seconds']} s")
    return out, meta


# ----------------------------------------------------------------------------------------------------------------
# The log builder

_TIME = re.compile(r"\[(\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2}) ([+-]\d{4})\]")
_IPV4_START = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?= )")


def build_log(corpus: Path = DEFAULT_CORPUS, out_dir: Path = DEFAULT_OUT, lines: int = 1_000_000,
              force: bool = False, log=print) -> tuple[Path, dict]:
    """Repeat the corpus Apache log until it has ``lines`` lines; each repetition moves on by whole days (keeping
    the time of day) and maps every client address to a different one (same client -> same address within a
    repetition)."""
    src = corpus / "logs" / "elastic-examples-apache_logs.log"
    out_dir.mkdir(parents=True, exist_ok=True)
    key = _fingerprint([src], "log", lines)
    out = out_dir / f"big-{key}.log"
    meta_path = out.with_suffix(".log.json")
    if not force and out.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("bytes") == out.stat().st_size:
            log(f"log: reusing {out} ({meta['lines']:,} lines, {meta['bytes'] / 1e6:.1f} MB)")
            return out, meta
    t0 = time.perf_counter()
    raw = src.read_bytes().decode("utf-8", "surrogateescape").splitlines()
    parsed = []  # (ip or None, rest-after-ip, prefix-before-time, time or None, suffix)
    t_min = t_max = None
    for line in raw:
        m = _TIME.search(line)
        ts = datetime.strptime(m.group(1), "%d/%b/%Y:%H:%M:%S") if m else None
        if ts is not None:
            t_min = ts if t_min is None or ts < t_min else t_min
            t_max = ts if t_max is None or ts > t_max else t_max
        parsed.append((line, m, ts))
    span_days = (t_max - t_min).days + 1 if t_min else 1
    reps = math.ceil(lines / max(1, len(raw)))
    n = 0
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    tmp = out.with_suffix(".log.tmp")
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="\n", buffering=1 << 20) as fh:
        for rep in range(reps):
            shift = timedelta(days=rep * span_days)
            ipmap: dict[str, str] = {}
            chunk = []
            for line, m, ts in parsed:
                if n >= lines:
                    break
                if rep and m is not None:
                    t = ts + shift
                    stamp = f"{t.day:02d}/{months[t.month - 1]}/{t.year}:{t:%H:%M:%S}"
                    line = f"{line[:m.start(1)]}{stamp}{line[m.end(1):]}"
                if rep:
                    im = _IPV4_START.match(line)
                    if im:
                        old = im.group(0)
                        new = ipmap.get(old)
                        if new is None:
                            k = len(ipmap) + 1
                            new = f"{(rep % 200) + 11}.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"
                            ipmap[old] = new
                        line = new + line[im.end():]
                chunk.append(line)
                n += 1
            fh.write("\n".join(chunk))
            fh.write("\n")
    os.replace(tmp, out)
    _drop_stale(out_dir, "big-*.log", out)
    meta = {"path": str(out), "lines": n, "bytes": out.stat().st_size, "repetitions": reps,
            "source_lines": len(raw), "days_per_repetition": span_days,
            "build_seconds": round(time.perf_counter() - t0, 2), "builder_version": BUILDER_VERSION}
    meta_path.write_text(json.dumps(meta, indent=2))
    log(f"log: wrote {out} ({n:,} lines, {meta['bytes'] / 1e6:.1f} MB) in {meta['build_seconds']} s")
    return out, meta


# ----------------------------------------------------------------------------------------------------------------
# Self-test of the capture builder (independent of stormguard)


def _iter_pcap(path: Path) -> Iterator[tuple[float, bytes]]:
    with open(path, "rb") as fh:
        yield from dpkt.pcap.Reader(fh)


def selftest(corpus: Path = DEFAULT_CORPUS, out_dir: Path = DEFAULT_OUT) -> int:
    """Build a 3-repetition capture and check it: format, monotonic time, checksums, distinct flows, and that pyja3
    finds exactly 3x the ClientHellos it finds in repetition 0 with 3x as many distinct 4-tuples."""
    from ja3 import ja3 as pyja3  # pyja3's module; used as a library here

    failures = []
    path, meta = build_capture(corpus, out_dir / "selftest", repeat=3, force=True)
    with open(path, "rb") as fh:
        hdr = fh.read(24)
    magic, _, _, _, _, snaplen, linktype = struct.unpack("<IHHiIII", hdr)
    if (magic, linktype) != (0xA1B2C3D4, 1):
        failures.append(f"header: magic {magic:#x} linktype {linktype}")
    last = -1.0
    n = checked_l4 = 0
    bad_ip_csum = [0, 0, 0]
    bad_l4_csum = [0, 0, 0]
    flows_by_rep: list[set] = [set() for _ in range(3)]
    per_rep = meta["per_repetition"]["packets"]
    unit_of_packet = [u for u, (_, k) in enumerate(meta["per_repetition"]["file_packets"] * 3) for _ in range(k)]
    unit_of_flow: dict[tuple, int] = {}
    cross_unit = set()
    for ts, buf in _iter_pcap(path):
        rep = n // per_rep
        n += 1
        if ts < last:
            failures.append(f"packet {n}: time goes backwards")
        last = ts
        eth = dpkt.ethernet.Ethernet(buf)
        ip = eth.data
        if isinstance(ip, dpkt.ip.IP) and len(buf) >= 14 + ip.hl * 4:
            raw = bytes(buf[14:14 + ip.hl * 4])
            if ip.sum != _ipv4_header_csum(raw):
                bad_ip_csum[rep] += 1
            l4 = ip.data
            if (isinstance(l4, dpkt.tcp.TCP) and ip.offset == 0 and not ip.mf and ip.len == len(buf) - 14
                    and len(ip) == ip.len):
                checked_l4 += 1
                seg = bytes(buf[14 + ip.hl * 4:14 + ip.len])
                pseudo = ip.src + ip.dst + struct.pack("!BBH", 0, 6, len(seg))
                s = dpkt.in_cksum_add(0, pseudo + seg)
                if dpkt.in_cksum_done(s) != 0:
                    bad_l4_csum[rep] += 1
            if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
                key = (ip.src, l4.sport, ip.dst, l4.dport)
                flows_by_rep[rep].add(key)
                if unit_of_flow.setdefault(key, unit_of_packet[n - 1]) != unit_of_packet[n - 1]:
                    cross_unit.add(key)
    if n != meta["packets"]:
        failures.append(f"packets: read {n}, metadata says {meta['packets']}")
    common = (flows_by_rep[0] & flows_by_rep[1]) | (flows_by_rep[1] & flows_by_rep[2])
    if common:
        failures.append(f"{len(common)} IPv4 4-tuples shared between repetitions")
    if cross_unit:
        failures.append(f"{len(cross_unit)} IPv4 4-tuples shared between (repetition, file) units")
    if not all(len(s) == len(flows_by_rep[0]) for s in flows_by_rep):
        failures.append(f"distinct IPv4 4-tuples per repetition differ: {[len(s) for s in flows_by_rep]}")
    # Original checksums may already be wrong (offloading): rewritten IPv4 headers must be right, and TCP checksums
    # (adjusted incrementally) exactly as right or wrong as the corpus's.
    if any(bad_ip_csum):
        failures.append(f"IPv4 header checksum mismatches per repetition: {bad_ip_csum}")
    if not bad_l4_csum[0] == bad_l4_csum[1] == bad_l4_csum[2]:
        failures.append(f"TCP checksum mismatches per repetition: {bad_l4_csum}")
    def pyja3_keys(p: Path) -> tuple[int, set, Counter]:
        with open(p, "rb") as fh:
            res = pyja3.process_pcap(dpkt.pcap.Reader(fh), any_port=True)
        keys = {(r["source_ip"], r["source_port"], r["destination_ip"], r["destination_port"], r["ja3_digest"])
                for r in res}
        return len(res), keys, Counter(r["ja3_digest"] for r in res)

    one, _ = build_capture(corpus, out_dir / "selftest1", repeat=1, force=True)
    total1, keys1, hashes1 = pyja3_keys(one)
    total, keys, hashes = pyja3_keys(path)
    if total != 3 * total1:
        failures.append(f"pyja3: {total} ClientHellos in 3 repetitions, {total1} in one")
    if len(keys) != 3 * len(keys1):
        failures.append(f"pyja3: {len(keys)} distinct (4-tuple, ja3) in 3 repetitions, {len(keys1)} in one")
    if hashes != Counter({h: 3 * c for h, c in hashes1.items()}):
        failures.append("pyja3: JA3 hash counts are not 3x those of one repetition")
    print(f"selftest: {n:,} packets, {per_rep:,} per repetition; IPv4 header checksum mismatches per repetition "
          f"{bad_ip_csum}; TCP checksums checked {checked_l4:,}, mismatches per repetition {bad_l4_csum} (the corpus's "
          f"own offloaded/damaged checksums, kept)")
    print(f"selftest: IPv4 TCP/UDP 4-tuples per repetition {[len(s) for s in flows_by_rep]}, shared between "
          f"repetitions {len(common)}, between (repetition, file) units {len(cross_unit)}")
    print(f"selftest: pyja3 -a finds {total} ClientHellos in 3 repetitions ({total1} in one), {len(keys)} distinct "
          f"(4-tuple, JA3) ({len(keys1)} in one), {len(hashes)} distinct JA3")
    for f in failures:
        print("selftest FAIL:", f)
    print("selftest:", "OK" if not failures else "FAILED")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="?", choices=["pcap", "log", "both"], default="both")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--size-mb", type=float, default=100.0)
    ap.add_argument("--repeat", type=int, default=None, help="capture repetitions (overrides --size-mb)")
    ap.add_argument("--log-lines", type=int, default=1_000_000)
    ap.add_argument("--force", action="store_true", help="rebuild even when a cached file exists")
    ap.add_argument("--selftest", action="store_true", help="check the capture builder and exit")
    a = ap.parse_args(argv)
    if a.selftest:
        return selftest(a.corpus, a.out_dir)
    if a.what in ("pcap", "both"):
        _, meta = build_capture(a.corpus, a.out_dir, a.size_mb, a.repeat, a.force)
        print(json.dumps({k: v for k, v in meta.items() if k != "per_repetition"}, indent=2))
    if a.what in ("log", "both"):
        build_log(a.corpus, a.out_dir, a.log_lines, a.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
