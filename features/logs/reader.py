"""Web access logs → connection records (one record per request line).

Formats
-------
* ``combined`` — NCSA/nginx/Apache combined: ``host ident user [time] "request" status bytes "referer" "ua"``;
  extra trailing fields (nginx's default ``main`` format appends ``"$http_x_forwarded_for"``) are ignored.
* ``common`` — the same without referer and user agent.
* ``iliou`` (alias ``combined_session``) — combined with a session-id field between referer and user agent and
  the client address possibly blanked (the Iliou et al. web-bot-detection logs: ``- - [time] "GET / HTTP/1.1"
  200 1230 "-" sessid "ua"``). The session id goes to the ``session`` column; use ``key="session"`` for
  features, because ``src_ip`` is null there.
* ``jsonl`` — one JSON object per line; field names resolved through :data:`JSON_FIELDS` (overridable with
  ``fields={"ts": "my_time", ...}``; dotted names such as ``source.ip`` reach into nested objects). Any record
  column name is also accepted as is, so stormguard's own connection log reads back unchanged.
* a custom format: ``fmt`` may be a regular expression (string or compiled) with named groups out of
  ``src_ip time ts request method path http_version status bytes_out referer user_agent session duration
  duration_ms``; ``time`` is a CLF time, ``ts`` epoch seconds. :func:`register_format` adds a named one.

``fmt="auto"`` decides per file from its first 50 non-empty lines (JSON if they start with ``{``, else the
built-in pattern that matches most of them).

Field conventions
-----------------
``ts`` is the log time (with its own UTC offset) as epoch seconds; ``ts_end`` is ``ts`` plus the request
duration when the format has one, else ``ts`` (so every request of a duration-less log counts as short-lived; see
``vector.FEATURE_DOCS``). ``path`` is the request target as logged (query string included). ``"-"`` means null,
except for the Apache ``%b`` byte count where ``-`` means 0 bytes. Escapes (``\\"``, ``\\\\``, ``\\xhh``) are
decoded. Bytes that are not UTF-8 become U+FFFD.

Damaged lines
-------------
Nothing raises. A line the format's full pattern rejects is retried with a lenient pattern for the fixed prefix
(host, time, request, status, bytes): if that matches, the record is **kept** with the unreadable tail fields
left null (a truncated user agent is *dropped*, not kept partially — a cut-off UA would look like a distinct,
unknown client and pollute distinct-UA counts and UA clustering) and a ``note``; it is reported with
``stats.warn(..., line=n, field=..., reason="log line truncated (kept, field dropped)")``. A line whose prefix
cannot be read is skipped and reported with reason ``"log line unparseable (skipped)"``. A request line that is
not ``METHOD target HTTP/x`` (TLS bytes sent to a plain-HTTP port, ``-`` for a timed-out connection) is kept
with null method/path and a note.

Speed: one precompiled pattern per format; timestamps not parsed per line but split at fixed positions into a date
with zone and a clock, each looked up in a small cache (a log has a few dates, at most 86,400 clock values), with
:func:`parse_clf_time` (a fixed-layout routine instead of ``datetime.strptime``) as the fallback for anything
unusual; counters are added in bulk.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from stormguard.features.logs.clf import LOG_FORMATS, _read_generic, combined_batches, register_format
from stormguard.features.logs.clftime import parse_clf_time
from stormguard.features.logs.jsonl import JSON_FIELDS, _read_jsonl
from stormguard.features.logs.lines import unwrap_quoted

from stormguard.report import ReplayStats
from stormguard.schema import ColumnBatch

#: The log readers' public names, importable from here (the per-format modules hold their definitions).
__all__ = ["read_log", "read_log_chunks", "combined_batches", "register_format", "LOG_FORMATS", "JSON_FIELDS",
           "parse_clf_time", "detect_format"]


def detect_format(path: Path, sample: int = 200) -> str | None:
    """The format most of the first ``sample`` non-empty lines are in: ``jsonl`` or a built-in CLF format; None
    when no format has a line. A damaged or binary line among them (a corrupt first line) does not decide for the
    file: each line votes, and the reader later reports the lines its format does not match, with their numbers."""
    lines: list[str] = []
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if line.strip() and "\x00" not in line:
                lines.append(line[:65536])
                if len(lines) >= sample:
                    break
    if not lines:
        return None
    votes = {"jsonl": sum(1 for ln in lines if ln.lstrip("\ufeff \t").startswith("{"))}
    unwrapped = [unwrap_quoted(ln) or ln for ln in lines]  # a line wrapped in an extra pair of quotes votes too
    for name in ("combined", "iliou", "common"):
        votes[name] = sum(1 for ln in unwrapped if LOG_FORMATS[name].match(ln))
    best = max(votes, key=lambda k: votes[k])  # ties: jsonl, then combined, iliou, common
    return best if votes[best] else None


def read_log(path: Path, stats: ReplayStats, *, fmt: str | re.Pattern[str] = "auto",
             fields: Mapping[str, str] | None = None,
             progress: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """Yield one connection record per request line of the access log at ``path`` (see module docstring).

    ``progress`` is called with the number of bytes read since its previous call (``tqdm.update`` style, as
    the capture reader does), every 65,536 lines and at the end. ``stats.lines`` and ``stats.http_requests`` are updated as lines are read.
    """
    for item in read_log_chunks(path, stats, fmt=fmt, fields=fields, progress=progress):
        if isinstance(item, ColumnBatch):
            yield from item.rows()
        else:
            yield item


def read_log_chunks(path: Path, stats: ReplayStats, *, fmt: str | re.Pattern[str] = "auto",
                    fields: Mapping[str, str] | None = None, progress: Callable[[int], None] | None = None,
                    span: tuple[int, int] | None = None) -> Iterator[dict[str, Any] | ColumnBatch]:
    """:func:`read_log`'s records, where the format has a column fast path (combined) as
    :class:`~stormguard.schema.ColumnBatch` objects instead of one dict per line (what ``stormguard replay``
    writes from); other formats yield row dicts.

    ``span=(start, end)`` reads only the lines that begin in that byte range, which must start and end on line
    boundaries (see :func:`line_spans`); line numbers then count from the span's first line (the caller adds
    the lines before it)."""
    path = Path(path)
    name = path.name
    if isinstance(fmt, str) and fmt == "auto":
        detected = detect_format(path)
        if detected is None:
            stats.warn(name, "not a recognised access-log format (combined, common, iliou, jsonl)",
                       reason="log format not recognised")
            return
        fmt = detected
    if isinstance(fmt, str) and fmt == "jsonl":
        yield from _read_jsonl(path, stats, fields or {}, progress, span)
        return
    if isinstance(fmt, str) and fmt == "combined":
        yield from combined_batches(path, stats, progress, span=span)
        return
    if isinstance(fmt, str) and "(?P<" not in fmt:  # a format name; a pattern has named groups
        if fmt not in LOG_FORMATS:
            raise ValueError(f"unknown log format {fmt!r}; known: auto, jsonl, {', '.join(sorted(LOG_FORMATS))}")
        pattern, kind = LOG_FORMATS[fmt], f"log-{fmt}"
    else:
        pattern = re.compile(fmt) if isinstance(fmt, str) else fmt
        kind = "log-custom"
    yield from _read_generic(path, stats, pattern, kind, progress, span)
