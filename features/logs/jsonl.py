"""JSON-lines access logs: one JSON object per line, field names resolved through :data:`JSON_FIELDS`
(overridable; dotted names reach into nested objects). Every record column is also accepted under its own name,
so stormguard's own connection log reads back unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stormguard.features.http.headers import header_entropy, header_order_fingerprint
from stormguard.features.logs.clf import _REQUEST, _Plan
from stormguard.features.logs.clftime import _TimeCache, parse_clf_time
from stormguard.features.logs.lines import _PROGRESS_EVERY, _bulk, _number, _Progress, open_lines

from stormguard.report import ReplayStats
from stormguard.schema import HEADER_NAME_SEP, RECORD_COLUMNS

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
                    stats.warn(name, f"invalid JSON ({getattr(exc, 'msg', exc)})", line=n,
                               reason="jsonl line invalid (skipped)")
                    continue
                except RecursionError:  # e.g. 100,000 '[': the decoder's nesting bound, not a reason to stop
                    stats.warn(name, "JSON nested too deeply", line=n, reason="jsonl line invalid (skipped)")
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
