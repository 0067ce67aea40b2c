"""Decide what an input file is from its first bytes, never from its name."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

Kind = Literal["pcap", "pcapng", "har", "jsonl", "log"]

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4",  # microseconds, little / big endian
    b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",  # nanoseconds
    b"\x34\xcd\xb2\xa1", b"\xa1\xb2\xcd\x34",  # Kuznetzov's modified pcap
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"

# An access-log line starts with a client address (or "-" / a host name) followed by identd and user fields.
_LOG_START = re.compile(rb"^(?:\S+ )?\S+ \S+ \[")
_HAR_START = re.compile(rb'^\{\s*"log"\s*:\s*\{')


def sniff(path: str | Path) -> Kind | None:
    """Return the input kind of ``path`` or ``None`` when it is neither a capture nor a log we can read."""
    with open(path, "rb") as fh:
        head = fh.read(65536)
    if not head:
        return None
    if head[:4] in PCAP_MAGICS:
        return "pcap"
    if head[:4] == PCAPNG_MAGIC:
        return "pcapng"
    if _HAR_START.match(head.lstrip(b"\xef\xbb\xbf \t\r\n")):
        return "har"  # HTTP Archive 1.2: one JSON document {"log": {"version": ..., "entries": [...]}}
    return _vote(head)


def _json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


#: Lines of the head that vote on a text file's kind; a few damaged or binary lines among them (a corrupt first
#: line, a NUL-padded write) do not decide for the whole file.
SNIFF_LINES = 200


def _vote(head: bytes) -> Kind | None:
    """Majority of the first :data:`SNIFF_LINES` non-empty lines: CLF-style log lines or JSON objects. The last
    line of a full 64 KiB head may be cut off, so it does not vote."""
    lines = head.split(b"\n")
    if len(head) >= 65536 and len(lines) > 1:
        lines = lines[:-1]
    lines = [ln.strip(b"\xef\xbb\xbf \t\r") for ln in lines]
    lines = [ln for ln in lines if ln][:SNIFF_LINES]
    if not lines:
        return None
    logs = sum(bool(_LOG_START.match(ln)) for ln in lines if b"\x00" not in ln)
    jsons = sum(ln.startswith(b"{") and _json_object(ln) for ln in lines if b"\x00" not in ln)
    best = max(logs, jsons)
    if best == 0 or best * 2 < len(lines):
        return None
    return "log" if logs >= jsons else "jsonl"


def describe_refusal(path: str | Path) -> str:
    """A one-line explanation for a file that :func:`sniff` rejected."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        return "empty file"
    if head[:2] == GZIP_MAGIC:
        return "gzip-compressed: decompress it first (e.g. gunzip -k)"
    return (f"neither a pcap/pcapng capture nor an access log / JSON-lines / HAR file "
            f"(starts with {head[:8].hex(' ')})")
