"""The client feature vector, incrementally, one connection at a time (the live server's side).

Same definitions as :mod:`.windows` (both import :mod:`.vector`); the property tests check that the two agree
exactly on counts and to ``math.isclose`` on float means, for any order of arrival.

How the live server calls it::

    handle = features.open(event)          # when the connection is accepted: ts, src_ip, UA, JA4, headers…
    ...                                     # stream runs
    features.close(handle, ts_end, status)  # when it ends (status if it was not known at open)

A complete record (a replayed one, or a connection that is already over) goes through ``observe(record)``, which
is exactly ``open`` followed by ``close`` when ``ts_end`` is known. Every ~30 s the server calls
:meth:`OnlineClientFeatures.expire` with the current time, which hands back the vectors of the windows that have
ended and frees them.

Memory stays bounded: at most ``max_keys`` keys (least recently used evicted), at most ``max_windows_per_key``
windows per key, distinct-value counters capped at :data:`vector.DISTINCT_CAP` values, and per window one
8-byte float per connection start (needed to place out-of-order starts exactly; connections arrive roughly in
order, so insertion is almost always an append).

No pandas import here: this module is on the server's hot path.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from stormguard.features.clients import content as fc
from stormguard.features.clients import vector as fv

__all__ = ["OnlineClientFeatures", "ConnectionHandle"]


@dataclass(slots=True)
class ConnectionHandle:
    """What :meth:`OnlineClientFeatures.open` returns and :meth:`~OnlineClientFeatures.close` needs back."""

    key: str
    window_start: float | None
    ts: float
    status_counted: bool


@dataclass(slots=True)
class _Window:
    """Running state of one (key, window)."""

    starts: array = field(default_factory=lambda: array("d"))
    n_closed: int = 0
    short_lived: int = 0
    gaps_le_10: int = 0
    min_gap: float = math.inf
    entropy_sum: float = 0.0
    entropy_n: int = 0
    n_ua: int = 0
    n_ua_browser: int = 0
    n_ja4: int = 0
    n_ja4_library: int = 0
    n_ua_and_ja4: int = 0
    n_mismatch: int = 0
    n_status: int = 0
    n_error: int = 0
    content: dict[str, float] = field(default_factory=dict)
    paths: set[str] = field(default_factory=set)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    overflow: set[str] = field(default_factory=set)

    def add_start(self, ts: float) -> None:
        starts = self.starts
        i = bisect_right(starts, ts)
        before = starts[i - 1] if i > 0 else None
        after = starts[i] if i < len(starts) else None
        if before is not None and after is not None:  # the gap (after - before) is split in two
            self.gaps_le_10 -= (after - before) <= fv.RECONNECT_GAP_S
        for gap in ((ts - before) if before is not None else None, (after - ts) if after is not None else None):
            if gap is not None:
                self.gaps_le_10 += gap <= fv.RECONNECT_GAP_S
                if gap < self.min_gap:
                    self.min_gap = gap
        if after is None:
            starts.append(ts)
        else:
            starts.insert(i, ts)

    def add(self, name: str, value: float = 1.0) -> None:
        self.content[name] = self.content.get(name, 0) + value

    def count(self, name: str, value: str | None) -> None:
        if value is None:
            return
        counter = self.counters.setdefault(name, {})
        if value in counter:
            counter[value] += 1
        elif len(counter) < fv.DISTINCT_CAP:
            counter[value] = 1
        else:
            self.overflow.add(name)


class OnlineClientFeatures:
    """Per-key, per-window feature state fed one connection at a time.

    Parameters mirror :func:`stormguard.features.clients.windows.client_features`: ``key`` (``src_ip``, ``ip_ua``,
    ``ip_ja3``, ``ip_ja4`` or any record field) and ``window`` (seconds, or ``None`` for one window per key).
    ``grace`` is how long after a window's end :meth:`expire` still keeps it, so that closes of connections
    opened just before the end (short-lived ones close within 2 s) are still counted.
    """

    def __init__(self, key: str = "src_ip", window: float | None = fv.DEFAULT_WINDOW_S, *,
                 max_keys: int = 100_000, max_windows_per_key: int = 3, grace: float = 5.0) -> None:
        if window is not None and not window > 0:
            raise ValueError(f"window must be positive seconds or None, not {window!r}")
        self.key = key
        self.window = None if window is None else float(window)
        self.max_keys = max_keys
        self.max_windows_per_key = max_windows_per_key
        self.grace = grace
        self._keys: OrderedDict[str, dict[float | None, _Window]] = OrderedDict()
        self.evicted_keys = 0
        self.evicted_windows = 0
        self.ignored = 0  # events without key or ts

    # -- feeding -----------------------------------------------------------------------------------------------
    def observe(self, event: Mapping[str, Any]) -> ConnectionHandle | None:
        """Count one complete connection record (``open`` + ``close`` if ``ts_end`` is known)."""
        handle = self.open(event)
        if handle is not None:
            ts_end = fv.clean(event.get("ts_end"))
            if ts_end is not None:
                self.close(handle, float(ts_end))
        return handle

    def open(self, event: Mapping[str, Any]) -> ConnectionHandle | None:
        """Count a connection that has just started. Returns ``None`` (and counts ``ignored``) without a key or a
        finite ``ts``."""
        if not fv.is_connection_start(event.get("conn_row")):
            self.ignored += 1  # a further row of a connection already counted (vector.py)
            return None
        key = fv.key_of(event, self.key)
        ts = fv.clean(event.get("ts"))
        if key is None or ts is None or not math.isfinite(float(ts)):
            self.ignored += 1
            return None
        ts = float(ts)
        ws = None if self.window is None else fv.window_start_of(ts, self.window)
        win = self._window(key, ws, create=True)
        if win is None:  # older than every window this key still holds: already released
            self.ignored += 1
            return None
        win.add_start(ts)

        ua = fv.clean(event.get("user_agent"))
        ja4 = fv.clean(event.get("ja4"))
        names = fv.joined_names(event.get("header_names"))  # the live server hands over a list: joined once
        entropy = fv.record_entropy(names, event.get("header_entropy"))
        if entropy is not None:
            win.entropy_sum += entropy
            win.entropy_n += 1
        win.count("header_order", fv.record_header_order(names, event.get("header_order")))
        win.count("user_agent", None if ua is None else str(ua))
        ja3 = fv.clean(event.get("ja3"))
        win.count("ja3", None if ja3 is None else str(ja3))
        win.count("ja4", None if ja4 is None else str(ja4))
        browser = library = False
        if ua is not None:
            win.n_ua += 1
            browser = fv.ua_claims_browser(str(ua))
            win.n_ua_browser += browser
        if ja4 is not None:
            win.n_ja4 += 1
            library = fv.tls_is_library(str(ja4))
            win.n_ja4_library += library
        if ua is not None and ja4 is not None:
            win.n_ua_and_ja4 += 1
            win.n_mismatch += browser and library
        verdict = fv.record_header_family(names, ua, event.get("http_version"))
        if verdict != "unknown":
            win.add("header_family_checked")
            win.add("header_family_mismatch", verdict == "inconsistent")
        status = fv.clean(event.get("status"))
        if status is not None:
            self._count_status(win, int(status))
        self._count_content(win, event, None if ua is None else str(ua))
        return ConnectionHandle(key, ws, ts, status is not None)

    def close(self, handle: ConnectionHandle, ts_end: float, status: int | None = None) -> bool:
        """Record the end of a connection opened with :meth:`open`; ``False`` if its window is gone already."""
        win = self._window(handle.key, handle.window_start, create=False)
        if win is None:
            return False
        win.n_closed += 1
        if ts_end - handle.ts <= fv.SHORT_LIVED_S:
            win.short_lived += 1
        if status is not None and not handle.status_counted:
            self._count_status(win, int(status))
            handle.status_counted = True
        return True

    @staticmethod
    def _count_status(win: _Window, status: int) -> None:
        win.n_status += 1
        win.n_error += status >= fv.ERROR_STATUS
        cls = fc.status_class(status)
        if cls is not None:
            win.add(f"status_{fc.STATUS_CLASSES[cls]}")

    @staticmethod
    def _count_content(win: _Window, event: Mapping[str, Any], ua: str | None) -> None:
        """The request-content counts of :data:`vector.FEATURE_COLUMNS` (definitions in :mod:`.content`)."""
        method = fv.clean(event.get("method"))
        if method is not None:
            win.add("n_method")
            cls = fc.method_class(str(method))
            if cls is not None:
                win.add(f"method_{cls}")
        version = fv.clean(event.get("http_version"))
        if version is not None:
            win.add("n_version")
            win.add("http10", fc.is_http10(str(version)))
        target = fv.clean(event.get("path"))
        marker = ua is not None and fc.ua_attack_marker(ua)
        if target is not None:
            target = str(target)
            values = dict(zip(fc.PATH_VALUES, fc.path_evidence(target), strict=True))
            win.add("n_path")
            for name, source in fv.PATH_MEANS.items():
                win.add(name, values[source])
            for name, source in fv.PATH_COUNTS.items():
                win.add(name, values[source] > 0)
            marker = marker or values["attack_marker"] > 0
            if len(win.paths) < fv.PATH_DISTINCT_CAP:
                win.paths.add(target)
        win.add("attack_markers", marker)
        referer = fv.clean(event.get("referer"))
        if referer is None:
            win.add("referer_absent")
        win.count("referer", None if referer is None else str(referer))

    def _window(self, key: str, ws: float | None, *, create: bool) -> _Window | None:
        windows = self._keys.get(key)
        if windows is None:
            if not create:
                return None
            windows = self._keys[key] = {}
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
                self.evicted_keys += 1
        else:
            self._keys.move_to_end(key)
        win = windows.get(ws)
        if win is None and create:
            win = windows[ws] = _Window()
            if len(windows) > self.max_windows_per_key:
                oldest = min(windows, key=lambda w: -math.inf if w is None else w)
                del windows[oldest]
                self.evicted_windows += 1
                if oldest == ws:
                    return None
        return win

    # -- reading -----------------------------------------------------------------------------------------------
    def keys(self) -> Iterator[tuple[str, float | None]]:
        """(key, window_start) pairs currently held (window_start ``None`` in whole-input mode)."""
        for key, windows in self._keys.items():
            for ws in windows:
                yield key, ws

    def vector(self, key: str, window_start: float | None = None) -> dict[str, Any] | None:
        """The feature vector of ``key`` in the window starting at ``window_start`` (``None``: whole-input mode,
        or the key's latest window); ``None`` when that window is not held."""
        windows = self._keys.get(key)
        if not windows:
            return None
        if window_start is not None and isinstance(window_start, float) and math.isnan(window_start):
            window_start = None
        if window_start is None and self.window is not None:
            window_start = max(w for w in windows if w is not None)
        win = windows.get(window_start)
        if win is None:
            return None
        return self._vector(key, window_start, win)

    def _vector(self, key: str, ws: float | None, win: _Window) -> dict[str, Any]:
        starts = win.starts
        n = len(starts)
        first, last = starts[0], starts[-1]
        seconds = fv.rate_window_seconds(self.window, first, last)
        out: dict[str, Any] = {
            "key": key,
            "window_start": math.nan if ws is None else ws,
            "window_seconds": seconds,
            "first_ts": first,
            "last_ts": last,
            "n_conn": n,
            "conn_rate_per_min": n * 60 / seconds,
            "reconnects_10s": win.gaps_le_10,
            "short_lived_2s": win.short_lived,
            "n_closed": win.n_closed,
            "mean_interarrival": (last - first) / (n - 1) if n >= 2 else math.nan,
            "min_interarrival": win.min_gap if n >= 2 else math.nan,
            "header_entropy_mean": win.entropy_sum / win.entropy_n if win.entropy_n else math.nan,
        }
        for count_col, mode_col, source in fv.CATEGORICAL_FEATURES:
            counter = win.counters.get(source, {})
            out[count_col] = len(counter)
            if mode_col is not None:
                out[mode_col] = None if source in win.overflow else fv.mode_of(counter)
        out["ua_missing_share"] = fv.share(n - win.n_ua, n)
        out["ua_browser_share"] = fv.share(win.n_ua_browser, win.n_ua)
        out["tls_library_share"] = fv.share(win.n_ja4_library, win.n_ja4)
        out["ua_tls_mismatch_share"] = fv.share(win.n_mismatch, win.n_ua_and_ja4)
        out["error_share"] = fv.share(win.n_error, win.n_status)
        out["interarrival_cv"] = fv.interarrival_cv(starts)
        content = win.content
        out["n_status"] = win.n_status
        for col in ("n_method", "n_version", "http10", "n_path", "attack_markers", "referer_absent",
                    *(f"status_{c}" for c in fc.STATUS_CLASSES), *(f"method_{c}" for c in fc.METHOD_CLASSES),
                    *fv.PATH_COUNTS):
            out[col] = int(content.get(col, 0))
        n_path = out["n_path"]
        for col in fv.PATH_MEANS:
            out[col] = content.get(col, 0.0) / n_path if n_path else math.nan
        out["distinct_paths"] = len(win.paths)
        checked = int(content.get("header_family_checked", 0))
        out["header_family_checked"] = checked
        out["header_family_mismatch_share"] = fv.share(int(content.get("header_family_mismatch", 0)), checked)
        return {col: out[col] for col in fv.FEATURE_COLUMNS}

    def expire(self, now: float) -> list[dict[str, Any]]:
        """Release every window that ended more than ``grace`` seconds before ``now``; return their vectors.

        In whole-input mode nothing expires (only LRU eviction bounds memory)."""
        if self.window is None:
            return []
        done: list[dict[str, Any]] = []
        horizon = now - self.grace - self.window
        for key in list(self._keys):
            windows = self._keys[key]
            for ws in [w for w in windows if w is not None and w <= horizon]:
                done.append(self._vector(key, ws, windows.pop(ws)))
            if not windows:
                del self._keys[key]
        return done

    def __len__(self) -> int:
        return sum(len(w) for w in self._keys.values())

    @property
    def key_count(self) -> int:
        """Distinct keys held (bounded by ``max_keys``)."""
        return len(self._keys)
