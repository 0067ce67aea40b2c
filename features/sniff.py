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
    if b"\x00" in head[:4096]:
        return None  # binary, and not a capture we know
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"{"):
        first_line = text.split(b"\n", 1)[0]
        try:
            json.loads(first_line)
            return "jsonl"
        except ValueError:
            pass
        if b'"log"' in text[:4096] and b'"entries"' in head:
            return "har"
        return "har" if b'"log"' in text[:200] else "jsonl"
    lines = [ln for ln in text.split(b"\n")[:20] if ln.strip()]
    if lines and sum(bool(_LOG_START.match(ln)) for ln in lines) * 2 >= len(lines):
        return "log"
    return None


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
