"""CLF-style access logs (nginx/Apache ``combined`` and ``common``, ``iliou``, custom regexes): the
column-batch fast path for ``combined``, the generic named-group path, and salvage of damaged lines (see
:mod:`stormguard.features.logs.reader` for the field conventions)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from stormguard.features.logs.clftime import _TimeCache
from stormguard.features.logs.lines import (
    _PROGRESS_EVERY,
    _bulk,
    _field,
    _number,
    _Progress,
    _unescape,
    open_lines,
    unwrap_quoted,
)

from stormguard.report import ReplayStats
from stormguard.schema import ColumnBatch

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


def register_format(name: str, pattern: str | re.Pattern[str]) -> None:
    """Add a named custom format (a regex with the named groups listed in the module docstring)."""
    LOG_FORMATS[name] = re.compile(pattern) if isinstance(pattern, str) else pattern


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
                if m is None and line[:1] == '"' and (inner := unwrap_quoted(line)) is not None:
                    line = inner
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
                if m is None and line[:1] == '"' and (inner := unwrap_quoted(line)) is not None:
                    line = inner
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
#: Per distinct key list of a JSON line: candidate names per target, the (text target, names) and (integer target,
#: names) pairs that have any, and the passthrough columns present.
_Plan = tuple[dict[str, tuple[str, ...]], tuple[tuple[str, tuple[str, ...]], ...],
              tuple[tuple[str, tuple[str, ...]], ...], tuple[str, ...]]
