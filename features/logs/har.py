"""HAR files (HTTP Archive 1.2, as saved by browsers and WebPageTest) → connection records, one per entry.

What a HAR gives us that access logs do not: the request header names *in the order the browser sent them* and
the request timing, i.e. real browser header orders for the header-order fingerprint and entropy.

Decisions:

* ``ts`` = ``startedDateTime`` (ISO 8601 with offset), ``ts_end`` = ``ts + time / 1000`` (``time`` is the
  entry's total elapsed milliseconds; a negative or missing ``time`` leaves ``ts_end = ts`` with a note).
* ``path`` = the URL's request target (path plus ``?query``), ``dst_ip`` = ``serverIPAddress`` (or WebPageTest's
  ``_ip_addr``), ``dst_port`` from the URL (default 80/443 by scheme), ``src_port`` = WebPageTest's
  ``_client_port`` when present.
* HTTP/2 and SPDY pseudo-headers (``:method``, ``:authority`` …) are **not** put in ``header_names``: they are
  not header fields, an HTTP/1.1 request has none, and keeping them would make the same browser fingerprint
  differently per protocol. Their order *is* characteristic of the browser, so it is kept in ``note`` as
  ``pseudo=:method,:authority,:scheme,:path``.
* ``connection`` (HAR) or ``_socket`` (WebPageTest) goes to ``note`` as ``conn=<id>``: it identifies a TCP
  connection, not a client session, so it does not belong in ``session``.
* ``http_version`` is normalised (``1.1``/``http/1.1``/``HTTP/1.1`` → ``HTTP/1.1``; ``h2``/``HTTP/2.0`` →
  ``HTTP/2``; ``spdy/3.1`` → ``SPDY/3.1``); anything else (WebPageTest writes garbage such as ``ori``) becomes
  null with a note.
* ``src_ip`` is null (a HAR is recorded on the client); group a HAR's records by ``source`` when needed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stormguard.features.http.headers import header_entropy, header_order_fingerprint

from stormguard.report import ReplayStats
from stormguard.schema import HEADER_NAME_SEP

__all__ = ["read_har", "normalise_http_version"]

_VERSION = re.compile(r"^(?:(http|spdy)/)?(\d(?:\.\d)?)$", re.IGNORECASE)


def normalise_http_version(text: Any) -> str | None:
    """HAR ``httpVersion`` spellings → ``HTTP/1.0``, ``HTTP/1.1``, ``HTTP/2``, ``HTTP/3``, ``SPDY/x``; else None."""
    if not isinstance(text, str):
        return None
    value = text.strip()
    lowered = value.lower()
    if lowered in ("h2", "h2c"):
        return "HTTP/2"
    if lowered in ("h3", "http/3", "http/3.0") or lowered.startswith("h3-"):
        return "HTTP/3"
    m = _VERSION.match(value)
    if m is None:
        return None
    scheme, number = (m.group(1) or "http").lower(), m.group(2)
    if scheme == "spdy":
        return f"SPDY/{number}"
    if number in ("2", "2.0"):
        return "HTTP/2"
    if number in ("3", "3.0"):
        return "HTTP/3"
    if number in ("1.0", "1.1", "0.9"):
        return f"HTTP/{number}"
    return None


def _timestamp(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def read_har(path: Path, stats: ReplayStats,
             progress: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """Yield one connection record per ``log.entries[]`` item of the HAR file at ``path``.

    Never raises on bad input: an unreadable file or an entry without a usable start time / request is reported
    through ``stats.warn`` (with the entry index as ``line``, 1-based) and skipped. ``progress`` is called once
    with the file's size in bytes after it has been parsed (a HAR is one JSON document).
    """
    path = Path(path)
    name = path.name
    try:
        with open(path, encoding="utf-8-sig") as fh:
            doc = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        stats.warn(name, f"not a readable HAR file: {exc}", reason="har file unreadable")
        return
    log = doc.get("log") if isinstance(doc, Mapping) else None
    entries = log.get("entries") if isinstance(log, Mapping) else None
    if not isinstance(entries, list):
        stats.warn(name, "no log.entries list: not a HAR file", reason="har file unreadable")
        return
    if progress is not None:  # the file is parsed in one go: report all its bytes now
        try:
            progress(path.stat().st_size)
        except OSError:
            pass
    for index, entry in enumerate(entries, 1):
        record = _entry_record(entry, index, name, stats)
        if record is not None:
            stats.http_requests += 1
            yield record


def _entry_record(entry: Any, index: int, name: str, stats: ReplayStats) -> dict[str, Any] | None:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("request"), Mapping):
        stats.warn(name, "entry without a request object", line=index, reason="har entry invalid (skipped)")
        return None
    ts = _timestamp(entry.get("startedDateTime"))
    if ts is None:
        stats.warn(name, f"unreadable startedDateTime {entry.get('startedDateTime')!r}", line=index,
                   field="startedDateTime", reason="har entry invalid (skipped)")
        return None
    request: Mapping[str, Any] = entry["request"]
    response = entry.get("response") if isinstance(entry.get("response"), Mapping) else {}
    notes: list[str] = []

    elapsed = entry.get("time")
    if isinstance(elapsed, int | float) and not isinstance(elapsed, bool) and elapsed >= 0:
        ts_end = ts + elapsed / 1000.0
    else:
        ts_end = ts
        notes.append(f"no usable time {elapsed!r}")

    names: list[str] = []
    pseudo: list[str] = []
    user_agent = referer = None
    headers = request.get("headers")
    has_headers = isinstance(headers, list)
    if isinstance(headers, list):
        for header in headers:
            if not isinstance(header, Mapping) or not isinstance(header.get("name"), str):
                continue
            hname = header["name"]
            if hname.startswith(":"):
                pseudo.append(hname)
                continue
            names.append(hname)
            lowered = hname.lower()
            if lowered == "user-agent" and user_agent is None:
                user_agent = header.get("value") or None
            elif lowered == "referer" and referer is None:
                referer = header.get("value") or None
    if pseudo:
        notes.append("pseudo=" + ",".join(pseudo))

    url = request.get("url") if isinstance(request.get("url"), str) else ""
    target = None
    dst_port = None
    if url:
        try:
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            dst_port = parts.port or {"https": 443, "http": 80}.get(parts.scheme.lower())
        except ValueError:
            notes.append("unreadable url")

    raw_version = request.get("httpVersion")
    version = normalise_http_version(raw_version)
    if version is None and raw_version:
        notes.append(f"unknown httpVersion {str(raw_version)[:20]!r}")

    server_ip = entry.get("serverIPAddress") or entry.get("_ip_addr") or None
    if isinstance(server_ip, str) and server_ip.startswith("[") and server_ip.endswith("]"):
        server_ip = server_ip[1:-1]
    connection = entry.get("connection") or entry.get("_socket")
    if connection not in (None, ""):
        notes.append(f"conn={connection}")

    status = _int(response.get("status"))
    body = response.get("bodySize")
    content = response.get("content") if isinstance(response.get("content"), Mapping) else {}
    size = _int(body) if _int(body) is not None and _int(body) >= 0 else _int(content.get("size"))
    method = request.get("method") if isinstance(request.get("method"), str) else None

    return {
        "ts": ts, "ts_end": ts_end, "source": name, "source_kind": "har", "line": index,
        "transport": "udp" if version == "HTTP/3" else "tcp", "proto": "http",
        "dst_ip": server_ip if isinstance(server_ip, str) else None, "dst_port": dst_port,
        "src_port": _int(entry.get("_client_port")),
        "method": method, "path": target, "http_version": version,
        "status": status if status else None,  # HAR uses 0 for "no response" (blocked, aborted)
        "user_agent": user_agent, "referer": referer,
        "header_names": HEADER_NAME_SEP.join(names) if has_headers else None,
        "header_entropy": header_entropy(names) if has_headers else None,
        "header_order": header_order_fingerprint(names) if has_headers else None,
        "bytes_out": size if size is not None and size >= 0 else None,
        "outcome": "ok" if status else "no-response",
        "note": "; ".join(notes) or None,
    }
