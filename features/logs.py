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

import calendar
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from stormguard.features.headers import header_entropy, header_order_fingerprint

from stormguard.report import ReplayStats
from stormguard.schema import HEADER_NAME_SEP, RECORD_COLUMNS, ColumnBatch

__all__ = ["read_log", "read_log_chunks", "combined_batches", "register_format", "LOG_FORMATS", "JSON_FIELDS", "parse_clf_time", "detect_format"]

_Q = r'"([^"\\]*(?:\\.[^"\\]*)*)"'  # a quoted field with backslash escapes
_REQ = r'"(?:([^ "\\]+) ([^ "\\]+)(?: (HTTP/[0-9.]+))?|([^"\\]*(?:\\.[^"\\]*)*))"'  # method, target, version | raw request

#: The fast path: positional groups host, ident, user, time, method, target, version, raw-request, status, bytes,
#: referer, user agent. The same language as ``_Q``/``_REQ`` spell, with possessive repeats (every one is followed
#: by a character it cannot match, so giving characters back could never help; the engine just skips the
#: bookkeeping — about 12 % faster).
_QP = r'"([^"\\]*+(?:\\.[^"\\]*+)*+)"'
_REQP = r'"(?:([^ "\\]++) ([^ "\\]++)(?: (HTTP/[0-9.]++))?|([^"\\]*+(?:\\.[^"\\]*+)*+))"'
_COMBINED = re.compile(rf"^(\S++) \S++ \S++ \[([^\]]++)\] {_REQP} (\d{{3}}|-) (\d++|-) {_QP} {_QP}(?: [^\r\n]*+)?\s*$")

#: Built-in formats as named-group patterns (the generic path; ``combined`` also has the fast path above).
LOG_FORMATS: dict[str, re.Pattern[str]] = {
    "combined": re.compile(
        r'^(?P<src_ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>[^"\\]*(?:\\.[^"\\]*)*)" '
        r'(?P<status>\d{3}|-) (?P<bytes_out>\d+|-) "(?P<referer>[^"\\]*(?:\\.[^"\\]*)*)" '
        r'"(?P<user_agent>[^"\\]*(?:\\.[^"\\]*)*)"(?: [^\r\n]*)?\s*$'),
    "iliou": re.compile(
        r'^(?:(?P<src_ip>\S+) )?\S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>[^"\\]*(?:\\.[^"\\]*)*)" '
        r'(?P<status>\d{3}|-) (?P<bytes_out>\d+|-) "(?P<referer>[^"\\]*(?:\\.[^"\\]*)*)" (?P<session>\S+) '
        r'"(?P<user_agent>[^"\\]*(?:\\.[^"\\]*)*)"\s*$'),
    "common": re.compile(
        r'^(?P<src_ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>[^"\\]*(?:\\.[^"\\]*)*)" '
        r"(?P<status>\d{3}|-) (?P<bytes_out>\d+|-)\s*$"),
}
LOG_FORMATS["combined_session"] = LOG_FORMATS["iliou"]
_COMBINED_TAIL = ("referer", "user_agent")

# The fixed prefix every CLF-style line starts with; used to salvage damaged lines.
_PREFIX = re.compile(
    r'^(?:(?P<src_ip>\S+) )?\S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>[^"\\]*(?:\\.[^"\\]*)*)" '
    r"(?P<status>\d{3}|-) (?P<bytes_out>\d+|-)(?P<rest>.*)$")
_TAIL_FIELD = re.compile(r'\s*(?:"([^"\\]*(?:\\.[^"\\]*)*)"|([^"\s]\S*))')
_REQUEST = re.compile(r"^(\S+) (\S+?)(?: (HTTP/[0-9.]+))?$")
_ESCAPE = re.compile(r'\\(["\\]|x[0-9a-fA-F]{2}|[nrt])')
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                        "Nov", "Dec"), start=1)}
_CLF_TIME = re.compile(r"^(\d{2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))? ([+-])(\d{2})(\d{2})$")

#: Record column → JSON field names tried in order (first present, non-empty scalar wins). ``duration`` is in
#: seconds, ``duration_ms`` in milliseconds, ``duration_ns`` in nanoseconds (ECS ``event.duration``).
JSON_FIELDS: dict[str, tuple[str, ...]] = {
    "ts": ("ts", "time", "timestamp", "@timestamp", "time_local", "time_iso8601", "msec", "date", "datetime"),
    "ts_end": ("ts_end",),
    "src_ip": ("src_ip", "remote_addr", "client_ip", "clientip", "ip", "remote_ip", "client", "source.ip",
               "client.ip"),
    "src_port": ("src_port", "remote_port", "client_port", "source.port", "client.port"),
    "dst_ip": ("dst_ip", "server_addr", "server_ip", "destination.ip"),
    "dst_port": ("dst_port", "server_port", "destination.port"),
    "request": ("request", "request_line"),
    "method": ("method", "request_method", "verb", "http_method", "http.request.method"),
    "path": ("path", "uri", "request_uri", "url", "url.original", "url.path"),
    "http_version": ("http_version", "server_protocol", "protocol", "httpversion", "http.version"),
    "status": ("status", "status_code", "response", "response_code", "http.response.status_code"),
    "bytes_out": ("bytes_out", "body_bytes_sent", "bytes", "bytes_sent", "size", "response_bytes",
                  "http.response.body.bytes"),
    "bytes_in": ("bytes_in", "request_length", "http.request.bytes"),
    "user_agent": ("user_agent", "http_user_agent", "ua", "agent", "useragent", "user_agent.original"),
    "referer": ("referer", "http_referer", "referrer", "http.request.referrer"),
    "duration": ("request_time", "duration", "elapsed", "response_time"),
    "duration_ms": ("duration_ms", "time_ms", "elapsed_ms", "response_time_ms"),
    "duration_ns": ("event.duration",),
    "headers": ("headers", "header_names", "request_headers"),
    "session": ("session", "session_id", "sid"),
}
# Every other record column is read under its own name (our own connection log).
_PASSTHROUGH = tuple(c for c in RECORD_COLUMNS if c not in JSON_FIELDS and c not in
                     {"source", "source_kind", "line", "header_names"})

_PROGRESS_EVERY = 65536


def register_format(name: str, pattern: str | re.Pattern[str]) -> None:
    """Add a named custom format (a regex with the named groups listed in the module docstring)."""
    LOG_FORMATS[name] = re.compile(pattern) if isinstance(pattern, str) else pattern


def parse_clf_time(text: str) -> float | None:
    """``10/Oct/2000:13:55:36 -0700`` → epoch seconds (float), or ``None`` if it is not that layout."""
    m = _CLF_TIME.match(text)
    if m is None:
        return None
    day, mon, year, hh, mm, ss, frac, sign, oh, om = m.groups()
    month = _MONTHS.get(mon)
    if month is None:
        return None
    try:
        epoch = calendar.timegm((int(year), month, int(day), int(hh), int(mm), int(ss), 0, 0, 0))
        datetime(int(year), month, int(day))  # rejects 31/Feb
    except ValueError:
        return None
    if int(hh) > 23 or int(mm) > 59 or int(ss) > 60:
        return None
    offset = int(oh) * 3600 + int(om) * 60
    value = float(epoch - offset if sign == "+" else epoch + offset)
    if frac:
        value += float("0." + frac)
    return value


class _TimeCache:
    """CLF time string → epoch seconds, as :func:`parse_clf_time` gives, without parsing each distinct string.

    The usual ``dd/Mon/yyyy:HH:MM:SS +zzzz`` layout is split at fixed positions into the date with its zone
    (``days``: ``"dd/Mon/yyyy:" + " +zzzz"`` → epoch of that local midnight, at most a few per log) and the clock
    (``clocks``: ``"HH:MM:SS"`` → seconds since midnight, at most 87,840 keys). Only valid keys are stored, and a
    valid day key pins the whole layout (11 date characters, ``:``, 8 clock characters, zone), so two hits give
    exactly :func:`parse_clf_time`'s value; readers inline those two lookups. Anything else (fractions, odd
    widths, non-ASCII digits, out-of-range values) goes through :meth:`learn` to :func:`parse_clf_time` (whole
    strings cached in ``other``, bounded so that a pathological log cannot grow it forever)."""

    __slots__ = ("clocks", "days", "other")

    def __init__(self) -> None:
        self.days: dict[str, float] = {}
        self.clocks: dict[str, int] = {}
        self.other: dict[str, float | None] = {}

    def __call__(self, text: str) -> float | None:
        day = self.days.get(text[:12] + text[20:])
        seconds = self.clocks.get(text[12:20])
        if day is None or seconds is None:
            return self.learn(text)
        return day + seconds

    def learn(self, text: str) -> float | None:
        """The slow path: store the day and clock keys of ``text`` when valid, else parse it whole."""
        key, clock = text[:12] + text[20:], text[12:20]
        day = self.days.get(key)
        if day is None and len(text) == 26:
            day = parse_clf_time(key[:12] + "00:00:00" + key[12:])
            if day is not None:
                if len(self.days) > 100_000:
                    self.days.clear()
                self.days[key] = day
        seconds = self.clocks.get(clock)
        if seconds is None:
            seconds = _clock_seconds(clock)
            if seconds is not None:
                self.clocks[clock] = seconds
        if day is not None and seconds is not None:
            return day + seconds
        value = self.other.get(text, -1.0)
        if value == -1.0:
            value = parse_clf_time(text)
            if len(self.other) > 10_000:
                self.other.clear()
            self.other[text] = value
        return value


def _clock_seconds(clock: str) -> int | None:
    """``HH:MM:SS`` (ASCII digits, in range as :func:`parse_clf_time` accepts) → seconds, else None."""
    if len(clock) != 8 or clock[2] != ":" or clock[5] != ":" or not clock.isascii():
        return None
    hh, mm, ss = clock[0:2], clock[3:5], clock[6:8]
    if not (hh.isdigit() and mm.isdigit() and ss.isdigit()):
        return None
    h, m, s = int(hh), int(mm), int(ss)
    if h > 23 or m > 59 or s > 60:
        return None
    return h * 3600 + m * 60 + s


def _unescape(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        s = m.group(1)
        if s[0] == "x":
            return chr(int(s[1:], 16))
        return {"n": "\n", "r": "\r", "t": "\t"}.get(s, s)

    return _ESCAPE.sub(repl, text)


def _field(text: str | None) -> str | None:
    """Log field → value: ``-``/empty → None, escapes decoded."""
    if text is None or text == "-" or text == "":
        return None
    return _unescape(text) if "\\" in text else text


def detect_format(path: Path, sample: int = 50) -> str | None:
    """The built-in format that matches most of the first ``sample`` non-empty lines, ``jsonl``, or None."""
    lines: list[str] = []
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if line.strip():
                lines.append(line)
                if len(lines) >= sample:
                    break
    if not lines:
        return None
    if lines[0].lstrip("\ufeff \t").startswith("{"):
        return "jsonl"
    best, best_n = None, 0
    for name in ("combined", "iliou", "common"):
        n = sum(1 for ln in lines if LOG_FORMATS[name].match(ln))
        if n > best_n:
            best, best_n = name, n
    return best


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


def open_lines(path: Path, span: tuple[int, int] | None = None) -> IO[str]:
    """The log as a text stream (UTF-8, a leading BOM dropped, undecodable bytes as U+FFFD, universal newlines);
    with ``span``, only bytes ``start:end`` of it (read at once: spans are a few megabytes)."""
    if span is None:
        return open(path, encoding="utf-8-sig", errors="replace")
    start, end = span
    with open(path, "rb") as raw:
        raw.seek(start)
        data = raw.read(max(0, end - start))
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig" if start == 0 else "utf-8", errors="replace")


def line_spans(path: Path, size: int) -> list[tuple[int, int]]:
    """Byte ranges of about ``size`` bytes that cover the file, each ending just after a ``\\n`` (or at the end of
    the file), so that every line lies in exactly one range and reading them in order reads the file."""
    total = path.stat().st_size
    spans: list[tuple[int, int]] = []
    start = 0
    with open(path, "rb") as fh:
        while start < total:
            target = start + max(1, size)
            if target >= total:
                spans.append((start, total))
                break
            fh.seek(target - 1)
            fh.readline()  # to just after the next newline (the byte before target may be one itself)
            end = min(fh.tell(), total)
            spans.append((start, end))
            start = end
    return spans


class _Progress:
    """Reports bytes consumed (``progress(n)`` with n bytes since the previous call, like the capture reader),
    read from the binary buffer under the text stream, so no per-line byte counting is needed."""

    __slots__ = ("callback", "fh", "sent", "total")

    def __init__(self, callback: Callable[[int], None] | None, path: Path) -> None:
        self.callback = callback
        self.fh: Any = None
        self.sent = 0
        try:
            self.total = path.stat().st_size
        except OSError:
            self.total = 0

    def tick(self) -> None:
        if self.callback is not None and self.fh is not None:
            try:
                pos = self.fh.buffer.tell()
            except (OSError, ValueError, AttributeError):
                return
            if pos > self.sent:
                self.callback(pos - self.sent)
                self.sent = pos

    def finish(self) -> None:
        if self.callback is not None and self.total > self.sent:
            self.callback(self.total - self.sent)
            self.sent = self.total


def _bulk(stats: ReplayStats, lines: int, requests: int, progress: _Progress) -> None:
    stats.lines += lines
    stats.http_requests += requests
    progress.tick()


#: Columns the combined-format fast path fills per line (the others are constants of the file, or null).
_COMBINED_COLUMNS = ("ts", "ts_end", "line", "src_ip", "method", "path", "http_version", "status", "bytes_out",
                     "user_agent", "referer", "note")
#: Lines per column batch of the fast path.
BATCH_LINES = 16384


def combined_batches(path: Path, stats: ReplayStats, progress: Callable[[int], None] | None = None,
                     size: int = BATCH_LINES, span: tuple[int, int] | None = None) -> Iterator[ColumnBatch]:
    """Fast path for the combined format (the bench target: ≥ 200k lines/s): records as column batches.

    Each line appends its fields to the batch's column lists (no dict per line; the writer turns the lists
    into Arrow arrays directly); the file name, source kind, transport and protocol are batch constants. The
    time is two inlined dict lookups (see :class:`_TimeCache`); requests are counted as lines minus the lines
    that gave no record. Salvaged lines (see the module docstring) join the batch through ``add_row``."""
    name = path.name
    match = _COMBINED.match
    to_ts = _TimeCache()
    day_of = to_ts.days.get
    clock_of = to_ts.clocks.get
    # int() of a short string costs several dict lookups; a log has few distinct statuses and byte counts
    statuses: dict[str, int | None] = {"-": None}
    sizes: dict[str, int] = {"-": 0}
    every = _PROGRESS_EVERY
    mark = n = lost = 0  # lost: lines since ``mark`` that gave no record
    tracker = _Progress(progress, path)
    constants = {"source": name, "source_kind": "log-combined", "transport": "tcp", "proto": "http"}

    def new_batch() -> tuple[ColumnBatch, list[Callable[[Any], None]]]:
        fresh = ColumnBatch(_COMBINED_COLUMNS, constants, sparse=("note",))
        return fresh, [fresh.columns[c].append for c in _COMBINED_COLUMNS]

    batch, appenders = new_batch()
    a_ts, a_end, a_line, a_ip, a_method, a_path, a_ver, a_status, a_bytes, a_ua, a_ref, a_note = appenders
    extras: list[tuple[Callable[[Any], None], Any]] = []
    left = size
    try:
        with open_lines(path, span) as fh:
            tracker.fh = fh
            for n, line in enumerate(fh, 1):
                m = match(line)
                if m is None:
                    record = _salvage(line, n, name, "log-combined", stats, to_ts, _COMBINED_TAIL)
                    if record is None:
                        lost += 1
                        continue
                    batch.add_row(record)
                    # a salvaged row may bring a column the fast rows do not fill (or turn a constant into a
                    # column): from now on fast rows pad it with null (or the former constant)
                    extras = [(batch.columns[c].append, constants.get(c)) for c in batch.columns
                              if c not in _COMBINED_COLUMNS]
                else:
                    host, when, method, target, version, raw, status, size_, referer, ua = m.groups()
                    day = day_of(when[:12] + when[20:])
                    seconds = clock_of(when[12:20])
                    if day is None or seconds is None:
                        ts = to_ts.learn(when)
                        if ts is None:
                            stats.warn(name, f"unreadable time {when!r}", line=n, field="time",
                                       reason="log line unparseable (skipped)")
                            lost += 1
                            continue
                    else:
                        ts = day + seconds
                    if method is None:  # escaped characters, or not an HTTP request line at all
                        rm = _REQUEST.match(_unescape(raw))
                        if rm is None:
                            note = f"request line not HTTP: {raw[:60]!r}"
                        else:
                            method, target, version = rm.groups()
                            note = None
                    else:
                        note = None
                    if "\\" in line:
                        ua = _unescape(ua)
                        referer = _unescape(referer)
                    try:
                        code = statuses[status]
                    except KeyError:
                        code = int(status)
                        if len(statuses) < 10_000:
                            statuses[status] = code
                    try:
                        body = sizes[size_]
                    except KeyError:
                        body = int(size_)
                        if len(sizes) < 100_000:
                            sizes[size_] = body
                    a_ts(ts)
                    a_end(ts)
                    a_line(n)
                    a_ip(None if host == "-" else host)
                    a_method(method)
                    a_path(target)
                    a_ver(version)
                    a_status(code)
                    a_bytes(body)
                    a_ua(ua if ua and ua != "-" else None)
                    a_ref(referer if referer and referer != "-" else None)
                    a_note(note)
                    if extras:
                        for pad, value in extras:
                            pad(value)
                left -= 1
                if not left:
                    yield batch
                    batch, appenders = new_batch()
                    a_ts, a_end, a_line, a_ip, a_method, a_path, a_ver, a_status, a_bytes, a_ua, a_ref, a_note = appenders
                    extras = []
                    left = size
                if n - mark >= every:
                    _bulk(stats, n - mark, n - mark - lost, tracker)
                    mark, lost = n, 0
        if len(batch):
            yield batch
    finally:
        _bulk(stats, n - mark, n - mark - lost, tracker)
        tracker.finish()


def _read_generic(path: Path, stats: ReplayStats, pattern: re.Pattern[str], kind: str,
                  progress: Callable[[int], None] | None, span: tuple[int, int] | None = None
                  ) -> Iterator[dict[str, Any]]:
    """Any named-group pattern (common, iliou, custom)."""
    name = path.name
    to_ts = _TimeCache()
    tail = _tail_fields(pattern)
    n = mark = requests_done = 0
    tracker = _Progress(progress, path)
    try:
        with open_lines(path, span) as fh:
            tracker.fh = fh
            for n, line in enumerate(fh, 1):
                m = pattern.match(line.rstrip("\r\n"))
                if m is None:
                    if not line.strip():
                        continue
                    record = _salvage(line, n, name, kind, stats, to_ts, tail)
                else:
                    record = _from_groups(m.groupdict(), n, name, kind, stats, to_ts)
                if record is not None:
                    requests_done += 1
                    yield record
                if n - mark >= _PROGRESS_EVERY:
                    _bulk(stats, n - mark, requests_done, tracker)
                    mark, requests_done = n, 0
    finally:
        _bulk(stats, n - mark, requests_done, tracker)
        tracker.finish()


def _from_groups(g: dict[str, str | None], n: int, name: str, kind: str, stats: ReplayStats,
                 to_ts: _TimeCache, note: str | None = None) -> dict[str, Any] | None:
    """Named groups of a matched line → record (``None`` and a warning when the time is unreadable)."""
    ts: float | None
    if g.get("time") is not None:
        ts = to_ts(g["time"] or "")
    elif g.get("ts") is not None:
        ts = _number(g["ts"])
    else:
        ts = None
    if ts is None:
        stats.warn(name, "unreadable or missing time", line=n, field="time", reason="log line unparseable (skipped)")
        return None
    method, target, version = (_field(g.get("method")), _field(g.get("path")), _field(g.get("http_version")))
    request = g.get("request")
    if request is not None and method is None:
        rm = _REQUEST.match(request)
        if rm is None:
            extra = f"request line not HTTP: {request[:60]!r}"
            note = extra if note is None else f"{note}; {extra}"
        else:
            method, target, version = rm.group(1), _field(rm.group(2)), rm.group(3)
    duration = _number(g.get("duration"))
    if duration is None and g.get("duration_ms") is not None:
        ms = _number(g.get("duration_ms"))
        duration = None if ms is None else ms / 1000.0
    status = g.get("status")
    size = g.get("bytes_out")
    return {
        "ts": ts, "ts_end": ts + duration if duration is not None else ts, "source": name, "source_kind": kind,
        "line": n, "transport": "tcp", "proto": "http", "src_ip": _field(g.get("src_ip")),
        "method": method, "path": target, "http_version": version,
        "status": int(status) if status and status.isdigit() else None,
        "bytes_out": int(size) if size and size.isdigit() else (0 if size == "-" else None),
        "user_agent": _field(g.get("user_agent")), "referer": _field(g.get("referer")),
        "session": _field(g.get("session")), "note": note,
    }


def _tail_fields(pattern: re.Pattern[str]) -> tuple[str, ...]:
    """The fields after the byte count, in line order, that a pattern has (for salvaging damaged lines)."""
    return tuple(g for g in sorted(pattern.groupindex, key=pattern.groupindex.__getitem__)
                 if g in ("referer", "session", "user_agent"))


def _salvage(line: str, n: int, name: str, kind: str, stats: ReplayStats, to_ts: _TimeCache,
             tail: tuple[str, ...]) -> dict[str, Any] | None:
    """A line the full pattern rejected: keep its readable prefix if it has one (see module docstring).

    ``tail`` names the fields expected after the byte count; complete fields are kept in that order, the first
    incomplete one and everything after it are dropped (left null) and named in the note."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    m = _PREFIX.match(text)
    if m is None:
        stats.warn(name, f"unparseable line: {text[:80]!r}", line=n, reason="log line unparseable (skipped)")
        return None
    groups: dict[str, str | None] = m.groupdict()
    rest = groups.pop("rest") or ""
    values: list[str] = []
    pos = 0
    while pos < len(rest) and len(values) < len(tail):
        fm = _TAIL_FIELD.match(rest, pos)
        if fm is None or fm.end() == pos:
            break
        values.append(fm.group(1) if fm.group(1) is not None else fm.group(2))
        pos = fm.end()
    for field_name, value in zip(tail, values, strict=False):
        groups[field_name] = value
    dropped = list(tail[len(values):])
    leftover = rest[pos:].strip()
    if dropped:
        note = f"truncated line: {', '.join(dropped)} dropped"
    elif leftover:
        note = f"unexpected trailing text: {leftover[:40]!r}"
    else:
        note = "line salvaged"
    record = _from_groups(groups, n, name, kind, stats, to_ts, note=note)
    if record is not None:
        stats.warn(name, f"{note}: {text[-60:]!r}", line=n, field=dropped[0] if dropped else None,
                   reason="log line truncated (kept, field dropped)")
    return record


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------------------
# JSON lines


def _lookup(obj: Mapping[str, Any], name: str) -> Any:
    if name in obj:
        return obj[name]
    if "." in name:
        cur: Any = obj
        for part in name.split("."):
            if not (isinstance(cur, dict) or isinstance(cur, Mapping)) or part not in cur:  # dict: fast check
                return None
            cur = cur[part]
        return cur
    return None


def _json_time(value: Any, cache: dict[str, float | None], clf: _TimeCache | None = None) -> float | None:
    """Epoch seconds from a number (s, ms or µs by magnitude) or a string (number, CLF time or ISO 8601;
    an ISO time without an offset is taken as UTC). ``clf`` parses CLF times (default :func:`parse_clf_time`)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        v = float(value)
        return v / 1e6 if v > 1e14 else v / 1e3 if v > 1e11 else v
    if not isinstance(value, str) or not value:
        return None
    if clf is not None and value[2:3] == "/":  # looks like CLF (never a number): no whole-string cache needed
        clf_value = clf(value)
        if clf_value is not None:
            return clf_value
    if value in cache:
        return cache[value]
    result: float | None
    try:
        result = _json_time(float(value), cache)
    except ValueError:
        result = parse_clf_time(value) if clf is None else clf(value)
        if result is None:
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                result = None
            else:
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=UTC)
                result = parsed.timestamp()
    if len(cache) > 200_000:
        cache.clear()
    cache[value] = result
    return result


def _header_names(value: Any) -> list[str] | None:
    """Header names in order from a list of names, of ``[name, value]`` pairs, of ``{"name": ..}`` objects, a
    dict (insertion order = log order) or a comma-joined string."""
    if isinstance(value, Mapping):
        return [str(k) for k in value]
    if isinstance(value, str):
        return [v.strip() for v in value.split(HEADER_NAME_SEP) if v.strip()]
    if isinstance(value, list):
        names: list[str] = []
        for item in value:
            if isinstance(item, str):
                names.append(item)
            elif isinstance(item, list | tuple) and item and isinstance(item[0], str):
                names.append(item[0])
            elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
                names.append(item["name"])
            else:
                return None
        return names
    return None


# What json.loads builds for objects and arrays (a concrete-type isinstance is far cheaper than one against the
# Mapping ABC).
_CONTAINERS = (dict, list)
_JSON_TEXT = ("src_ip", "dst_ip", "method", "path", "http_version", "user_agent", "referer", "session")
_JSON_INT = ("src_port", "dst_port", "status", "bytes_out", "bytes_in")
#: Per distinct key list of a JSON line: candidate names per target, the (text target, names) and (integer target,
#: names) pairs that have any, and the passthrough columns present.
_Plan = tuple[dict[str, tuple[str, ...]], tuple[tuple[str, tuple[str, ...]], ...],
              tuple[tuple[str, tuple[str, ...]], ...], tuple[str, ...]]


def _read_jsonl(path: Path, stats: ReplayStats, fields: Mapping[str, str],
                progress: Callable[[int], None] | None, span: tuple[int, int] | None = None
                ) -> Iterator[dict[str, Any]]:
    """JSON lines. The lines of one log share their field names, so which candidate names (see
    :data:`JSON_FIELDS`) can be present is worked out once per distinct key list (a *plan*), not tried per line."""
    name = path.name
    candidates = {target: ((fields[target],) if target in fields else names)
                  for target, names in JSON_FIELDS.items()}
    for target, source in fields.items():
        if target not in candidates:
            candidates[target] = (source,)
    passthrough = tuple(c for c in _PASSTHROUGH if c not in candidates)
    time_cache: dict[str, float | None] = {}
    clf = _TimeCache()
    plans: dict[tuple[str, ...], _Plan] = {}
    loads = json.loads
    n = mark = requests_done = 0

    def plan_for(keys: tuple[str, ...]) -> _Plan:
        """Per target, the candidate names that can be found in an object with these top-level keys (a dotted
        name needs its first part), in order; the text and integer targets that have any; passthrough columns."""
        present = set(keys)
        names = {target: tuple(f for f in options if f in present or ("." in f and f.partition(".")[0] in present))
                 for target, options in candidates.items()}
        plan = (names, tuple((t, names[t]) for t in _JSON_TEXT if names.get(t)),
                tuple((t, names[t]) for t in _JSON_INT if names.get(t)),
                tuple(c for c in passthrough if c in present))
        if len(plans) > 1000:
            plans.clear()
        plans[keys] = plan
        return plan

    def pick(obj: Mapping[str, Any], options: tuple[str, ...], nested: bool = False) -> Any:
        for field_name in options:
            value = obj[field_name] if field_name in obj else _lookup(obj, field_name)
            if value is not None and value != "" and value != "-" and (
                    nested or not isinstance(value, _CONTAINERS)):
                return value
        return None

    tracker = _Progress(progress, path)
    try:
        with open_lines(path, span) as fh:
            tracker.fh = fh
            for n, line in enumerate(fh, 1):
                if n - mark >= _PROGRESS_EVERY:
                    _bulk(stats, n - mark, requests_done, tracker)
                    mark, requests_done = n, 0
                try:
                    obj = loads(line)
                except ValueError as exc:
                    if not line.strip():
                        continue
                    stats.warn(name, f"invalid JSON ({exc.msg})", line=n, reason="jsonl line invalid (skipped)")
                    continue
                if not isinstance(obj, dict):
                    stats.warn(name, "JSON line is not an object", line=n, reason="jsonl line invalid (skipped)")
                    continue
                keys = tuple(obj)
                plan = plans.get(keys)
                if plan is None:
                    plan = plan_for(keys)
                names, texts, ints, extra = plan
                ts = _json_time(pick(obj, names["ts"]), time_cache, clf)
                if ts is None:
                    stats.warn(name, "no readable time field", line=n, field="ts",
                               reason="jsonl line without time (skipped)")
                    continue
                note = None
                record: dict[str, Any] = {"ts": ts, "source": name, "source_kind": "jsonl", "line": n,
                                          "transport": "tcp", "proto": "http", "src_ip": None, "dst_ip": None,
                                          "method": None, "path": None, "http_version": None, "user_agent": None,
                                          "referer": None, "session": None}
                for target, options in texts:
                    value = pick(obj, options)
                    if value is not None:
                        record[target] = value if type(value) is str else str(value)
                for target, options in ints:
                    value = _number(pick(obj, options))
                    if value is not None and value.is_integer():
                        record[target] = int(value)
                if names["request"] and (record["method"] is None or record["path"] is None):
                    request = pick(obj, names["request"])
                    if isinstance(request, str):
                        rm = _REQUEST.match(request)
                        if rm is None:
                            note = f"request line not HTTP: {request[:60]!r}"
                        else:
                            record["method"] = record["method"] or rm.group(1)
                            record["path"] = record["path"] or rm.group(2)
                            record["http_version"] = record["http_version"] or rm.group(3)
                ts_end = _json_time(pick(obj, names["ts_end"]), time_cache, clf) if names["ts_end"] else None
                if ts_end is None:
                    duration = _number(pick(obj, names["duration"])) if names["duration"] else None
                    if duration is None:
                        ms = _number(pick(obj, names["duration_ms"])) if names["duration_ms"] else None
                        ns = _number(pick(obj, names["duration_ns"])) if names["duration_ns"] else None
                        duration = ms / 1e3 if ms is not None else ns / 1e9 if ns is not None else None
                    ts_end = ts + duration if duration is not None else ts
                record["ts_end"] = ts_end
                headers = pick(obj, names["headers"], True) if names["headers"] else None
                if headers is not None:
                    header_list = _header_names(headers)
                    if header_list is None:
                        note = "headers field not understood" if note is None else f"{note}; headers field not understood"
                    else:
                        record["header_names"] = HEADER_NAME_SEP.join(header_list)
                        record["header_entropy"] = header_entropy(header_list)
                        record["header_order"] = header_order_fingerprint(header_list)
                for column in extra:
                    value = obj[column]
                    if value is not None and not isinstance(value, _CONTAINERS) and column not in record:
                        record[column] = value
                if note is not None:
                    record["note"] = note
                requests_done += 1
                yield record
    finally:
        _bulk(stats, n - mark, requests_done, tracker)
        tracker.finish()
