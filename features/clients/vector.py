"""The client feature vector — defined once, here; computed by :mod:`.windows` (batch) and :mod:`.online`.

A *client key* groups connection records (default ``src_ip``; see :func:`key_of`) and a *window* is a tumbling
interval ``[window_start, window_start + window)`` with ``window_start = floor(ts / window) * window`` (aligned
to epoch multiples, so windows from different runs and machines line up). A connection belongs to the window
of its start time ``ts``. ``window=None`` means "whole input": one window per key, ``window_start`` is NaN.

Everything a feature needs is a function of the records *inside* one (key, window): inter-arrivals are taken
between consecutive start times inside the window (the first connection of a window has no predecessor). That is
what lets the online implementation release a window's state when it ends and still agree exactly with the
batch implementation.

Features describe *connections*: a record whose ``conn_row`` is 1 or more (a second ClientHello after a
HelloRetryRequest, a further keep-alive request on one TCP connection) belongs to a connection already counted and
is left out (:func:`is_connection_start`); the connection's fingerprint, UA and headers are those of its first row.

Distinct counters are exact up to :data:`DISTINCT_CAP` and then report ``DISTINCT_CAP`` ("that many or more");
the corresponding most-frequent value is null once the cap is exceeded (the online side stops tracking new
values, so it could not name the mode exactly). Batch applies the same rule, so both always agree.

Ties for "most frequent" are broken by the smallest value in code-point order, so the result never depends on
input order.

No pandas here: the live server imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from stormguard.features.clients.content import LONG_URL_CHARS, METHOD_CLASSES, STATUS_CLASSES
from stormguard.features.http.families import header_family_verdict
from stormguard.features.http.headers import (
    header_entropy,
    header_order_fingerprint,
    is_browser_ua,
    split_header_names,
    tls_client_class,
)

from stormguard.schema import HEADER_NAME_SEP

#: Bump when a feature's meaning, name or dtype changes (model bundles record it and refuse a mismatch).
FEATURE_SCHEMA_VERSION = 2

#: Columns appended within schema 2, with the value a file written before them is read with: the header-family
#: columns mean "not checked" there (0 checked, share NaN), which is what such a window was. No model bundle reads
#: them as inputs (the content model's named rule does, and finds no evidence), so bundles stay valid.
ADDED_COLUMNS: dict[str, float] = {"header_family_checked": 0, "header_family_mismatch_share": math.nan}

#: Distinct-value counters stop counting here (see module docstring).
DISTINCT_CAP = 32

#: Distinct request targets are counted up to this many (a scanner asks for thousands; a page load for tens).
PATH_DISTINCT_CAP = 1024

#: Gap (seconds) between consecutive connection starts of one key that counts as a reconnect.
RECONNECT_GAP_S = 10.0

#: A connection that ended at most this many seconds after it opened is "short-lived".
SHORT_LIVED_S = 2.0

#: Status codes from this value up count as errors.
ERROR_STATUS = 400

#: Whole-input mode: the rate's denominator is the key's active span, but never less than this (seconds), so a
#: single burst does not read as an infinite rate.
MIN_SPAN_S = 60.0

#: Default tumbling-window length (seconds).
DEFAULT_WINDOW_S = 300.0

#: Key specs besides plain column names: composite keys.
COMPOSITE_KEYS: dict[str, tuple[str, str]] = {
    "ip_ua": ("src_ip", "user_agent"),
    "ip_ja3": ("src_ip", "ja3"),
    "ip_ja4": ("src_ip", "ja4"),
}

#: Separator between the parts of a composite key; a missing second part is the empty string.
KEY_SEP = "|"

#: Feature name -> pandas dtype, in output order. ``string`` columns are nullable strings, ``int64`` never null.
FEATURE_COLUMNS: dict[str, str] = {
    "key": "string",
    "window_start": "float64",
    "window_seconds": "float64",
    "first_ts": "float64",
    "last_ts": "float64",
    "n_conn": "int64",
    "conn_rate_per_min": "float64",
    "reconnects_10s": "int64",
    "short_lived_2s": "int64",
    "n_closed": "int64",
    "mean_interarrival": "float64",
    "min_interarrival": "float64",
    "header_entropy_mean": "float64",
    "header_order_mode": "string",
    "distinct_header_orders": "int64",
    "distinct_uas": "int64",
    "ua_mode": "string",
    "distinct_ja3": "int64",
    "ja3_mode": "string",
    "distinct_ja4": "int64",
    "ja4_mode": "string",
    "ua_missing_share": "float64",
    "ua_browser_share": "float64",
    "tls_library_share": "float64",
    "ua_tls_mismatch_share": "float64",
    "error_share": "float64",
    # request content (features/clients/content.py): counts over the window's requests
    "n_status": "int64",
    **{f"status_{c}": "int64" for c in STATUS_CLASSES},
    "n_method": "int64",
    **{f"method_{c}": "int64" for c in METHOD_CLASSES},
    "n_version": "int64",
    "http10": "int64",
    "n_path": "int64",
    "distinct_paths": "int64",
    "path_depth_mean": "float64",
    "query_length_mean": "float64",
    "query_entropy_mean": "float64",
    "static_assets": "int64",
    "script_ext_paths": "int64",
    "backup_ext_paths": "int64",
    "dotfile_paths": "int64",
    "admin_paths": "int64",
    "long_urls": "int64",
    "robots_txt": "int64",
    "attack_markers": "int64",
    "referer_absent": "int64",
    "distinct_referers": "int64",
    "interarrival_cv": "float64",
    # header set/order vs the browser family the UA claims (features/http/families.py)
    "header_family_checked": "int64",
    "header_family_mismatch_share": "float64",
}

#: Window mean column -> :data:`content.PATH_VALUES` name (sum over requests with a path / ``n_path``).
PATH_MEANS: dict[str, str] = {"path_depth_mean": "path_depth", "query_length_mean": "query_length",
                              "query_entropy_mean": "query_entropy"}
#: Window count column -> :data:`content.PATH_VALUES` flag (requests whose target has it).
PATH_COUNTS: dict[str, str] = {"static_assets": "static_asset", "script_ext_paths": "script_ext",
                               "backup_ext_paths": "backup_ext", "dotfile_paths": "dotfile",
                               "admin_paths": "admin_root", "long_urls": "long_url", "robots_txt": "robots_txt"}

#: Feature name -> definition (the docs the CLI and notebooks show).
FEATURE_DOCS: dict[str, str] = {
    "key": "client key value (src_ip, src_ip|user_agent, src_ip|ja3, or any record column)",
    "window_start": "start of the tumbling window, epoch s (floor(ts/window)*window); NaN for whole input",
    "window_seconds": "window length used for rates: the window, or for whole input max(last_ts-first_ts, 60)",
    "first_ts": "earliest connection start in the window",
    "last_ts": "latest connection start in the window",
    "n_conn": "connections (records) started in the window",
    "conn_rate_per_min": "reconnect rate: n_conn * 60 / window_seconds (connections per minute)",
    "reconnects_10s": "connections that started <= 10 s after the previous start of the same key in the window",
    "short_lived_2s": "connections with ts_end known and ts_end - ts <= 2 s (log lines without a duration count: "
                      "their ts_end equals ts)",
    "n_closed": "connections with ts_end known",
    "mean_interarrival": "(last_ts - first_ts) / (n_conn - 1), seconds; NaN if n_conn < 2",
    "min_interarrival": "smallest gap between consecutive starts, seconds; NaN if n_conn < 2",
    "header_entropy_mean": "mean header_entropy over connections whose header names are known; NaN if none",
    "header_order_mode": "most frequent header-order fingerprint (ties: smallest); null if none or > cap distinct",
    "distinct_header_orders": "distinct header-order fingerprints, capped at DISTINCT_CAP",
    "distinct_uas": "distinct non-null User-Agents, capped at DISTINCT_CAP",
    "ua_mode": "most frequent User-Agent (ties: smallest); null if none or > cap distinct",
    "distinct_ja3": "distinct JA3 hashes, capped at DISTINCT_CAP",
    "ja3_mode": "most frequent JA3 hash (ties: smallest); null if none or > cap distinct",
    "distinct_ja4": "distinct JA4 fingerprints, capped at DISTINCT_CAP",
    "ja4_mode": "most frequent JA4 (ties: smallest); null if none or > cap distinct",
    "ua_missing_share": "share of connections without a User-Agent",
    "ua_browser_share": "share of connections with a UA whose UA claims a browser (headers.is_browser_ua); "
                        "NaN if no UA",
    "tls_library_share": "share of connections with a JA4 whose TLS looks like a library "
                         "(headers.tls_client_class); NaN if no JA4",
    "ua_tls_mismatch_share": "share of connections having both UA and JA4 where the UA claims a browser and the "
                             "TLS looks like a library; NaN if none has both",
    "error_share": "share of connections with a known status whose status >= 400; NaN if no status known",
    "n_status": "requests with a known status",
    **{f"status_{c}": f"requests whose status is {c.replace('_', ' or ')} (content.status_class)"
       for c in STATUS_CLASSES},
    "n_method": "requests with a known method",
    **{f"method_{c}": f"requests with method {c.upper()} (content.method_class; OTHER = not a well-known method)"
       for c in METHOD_CLASSES},
    "n_version": "requests with a known HTTP version",
    "http10": "requests over HTTP/1.0 or 0.9",
    "n_path": "requests with a known target (path and query)",
    "distinct_paths": "distinct request targets, capped at PATH_DISTINCT_CAP",
    "path_depth_mean": "mean number of path segments over requests with a target; NaN if none",
    "query_length_mean": "mean query-string length (characters); NaN if no target",
    "query_entropy_mean": "mean character entropy of the query string (bits/char); NaN if no target",
    "static_assets": "requests for a static asset (css, js, image, font: content.STATIC_EXTENSIONS)",
    "script_ext_paths": "requests for a server-side script extension (content.SCRIPT_EXTENSIONS)",
    "backup_ext_paths": "requests for a backup/config/data/archive extension (content.BACKUP_EXTENSIONS)",
    "dotfile_paths": "requests with a dot-file segment (.git, .env, ...; not .well-known)",
    "admin_paths": "requests with an admin/CMS/management root segment (content.ADMIN_SEGMENTS)",
    "long_urls": f"requests whose target is longer than {LONG_URL_CHARS} characters",
    "robots_txt": "requests for /robots.txt",
    "attack_markers": "requests with a payload marker (traversal, injection, shellshock, remote include...) in the "
                      "decoded target or the User-Agent (content.ATTACK_MARKERS)",
    "referer_absent": "requests without a Referer",
    "distinct_referers": "distinct Referer values, capped at DISTINCT_CAP",
    "interarrival_cv": "coefficient of variation (population std / mean) of the gaps between consecutive starts; "
                       "NaN if n_conn < 3 or the mean gap is 0 (scripts are regular, people are not)",
    "header_family_checked": "connections whose header names are known and whose UA claims a browser family with "
                             "header rules (families.header_family_verdict is not 'unknown')",
    "header_family_mismatch_share": "share of the checked connections whose header set or order contradicts the "
                                    "browser family their UA claims (a script copying a browser UA); NaN if none "
                                    "was checked (no headers recorded, no browser UA)",
}

#: (count column, mode column or None, record-derived value name) for the distinct/mode features.
CATEGORICAL_FEATURES: tuple[tuple[str, str | None, str], ...] = (
    ("distinct_header_orders", "header_order_mode", "header_order"),
    ("distinct_uas", "ua_mode", "user_agent"),
    ("distinct_ja3", "ja3_mode", "ja3"),
    ("distinct_ja4", "ja4_mode", "ja4"),
    ("distinct_referers", None, "referer"),
)

#: Record columns the feature code reads (others may be absent).
INPUT_COLUMNS: tuple[str, ...] = (
    "conn_row", "ts", "ts_end", "src_ip", "user_agent", "ja3", "ja4", "status", "header_names", "header_entropy",
    "header_order", "method", "path", "http_version", "referer",
)


def is_connection_start(conn_row: Any) -> bool:
    """True when a record opens a connection (``conn_row`` null or 0), false for its further rows."""
    value = clean(conn_row)
    return value is None or int(value) == 0


def key_columns(key: str) -> tuple[str, ...]:
    """The record columns a key spec reads."""
    return COMPOSITE_KEYS.get(key, (key,))


def _present(value: Any) -> bool:
    """Null test that works for None, NaN, pandas.NA (without importing pandas)."""
    if value is None:
        return False
    if isinstance(value, float):
        return not math.isnan(value)
    try:
        return not bool(value != value)  # NaN-like objects; pandas.NA raises TypeError here
    except TypeError:
        return False


def clean(value: Any) -> Any:
    """``value`` or ``None`` when it is a null of any flavour."""
    return value if _present(value) else None


def key_of(record: Mapping[str, Any], key: str) -> str | None:
    """The client key of a record, or ``None`` when it has none (such records are not counted).

    Composite keys (``ip_ua``, ``ip_ja3``, ``ip_ja4``) need ``src_ip``; a missing second part becomes ``""``
    (``"1.2.3.4|"``) so that "no UA" is a client identity of its own rather than a dropped record.
    """
    parts = COMPOSITE_KEYS.get(key)
    if parts is None:
        value = clean(record.get(key))
        return None if value is None else str(value)
    first = clean(record.get(parts[0]))
    if first is None:
        return None
    second = clean(record.get(parts[1]))
    return f"{first}{KEY_SEP}{'' if second is None else second}"


def window_start_of(ts: float, window: float | None) -> float:
    """Start of the tumbling window holding ``ts``; NaN in whole-input mode (``window=None``)."""
    if window is None:
        return math.nan
    return float(math.floor(ts / window) * window)


def joined_names(header_names: Any) -> str | None:
    """A ``header_names`` value as the record column holds it (names joined with ``","``): the live server hands
    over a list of names, records hold the joined text; ``None`` for a null of any flavour."""
    if isinstance(header_names, list | tuple):
        return HEADER_NAME_SEP.join(str(n) for n in header_names)
    names = clean(header_names)
    return None if names is None else str(names)


def record_entropy(header_names: str | Sequence[str] | None, header_entropy_value: Any) -> float | None:
    """A record's header entropy: its own ``header_entropy`` column, else computed from ``header_names``."""
    value = clean(header_entropy_value)
    if value is not None:
        return float(value)
    names = joined_names(header_names)
    if names is None:
        return None
    return entropy_of_joined(names)


def record_header_order(header_names: str | Sequence[str] | None, header_order_value: Any) -> str | None:
    """A record's header-order fingerprint: its ``header_order`` column, else computed from ``header_names``."""
    value = clean(header_order_value)
    if value is not None:
        return str(value)
    names = joined_names(header_names)
    if names is None:
        return None
    return order_of_joined(names)


def record_header_family(header_names: str | Sequence[str] | None, ua: Any, http_version: Any) -> str:
    """A record's :func:`families.header_family_verdict`: ``consistent``, ``inconsistent`` or ``unknown``."""
    ua_text, version = clean(ua), clean(http_version)
    return header_family_verdict(joined_names(header_names), None if ua_text is None else str(ua_text),
                                 None if version is None else str(version))[0]


@lru_cache(maxsize=16384)
def entropy_of_joined(joined: str) -> float:
    """:func:`headers.header_entropy` of a ``header_names`` column value (cached: few distinct values)."""
    return header_entropy(split_header_names(joined))


@lru_cache(maxsize=16384)
def order_of_joined(joined: str) -> str:
    """:func:`headers.header_order_fingerprint` of a ``header_names`` column value (cached)."""
    return header_order_fingerprint(split_header_names(joined))


def ua_claims_browser(ua: str | None) -> bool:
    """Feature-side name for :func:`headers.is_browser_ua` (kept here so both implementations share it)."""
    return is_browser_ua(ua)


def tls_is_library(ja4: str | None) -> bool:
    """True when :func:`headers.tls_client_class` says ``library``."""
    return tls_client_class(ja4) == "library"


def mode_of(counts: Mapping[str, int]) -> str | None:
    """Most frequent value; ties → the smallest value (code-point order); ``None`` when empty."""
    best: str | None = None
    best_n = 0
    for value, n in counts.items():
        if n > best_n or (n == best_n and best is not None and value < best):
            best, best_n = value, n
    return best


def share(numerator: int, denominator: int) -> float:
    """``numerator / denominator`` or NaN when the denominator is 0 (both implementations use this)."""
    return numerator / denominator if denominator else math.nan


def rate_window_seconds(window: float | None, first_ts: float, last_ts: float) -> float:
    """The denominator (seconds) of ``conn_rate_per_min``: see :data:`FEATURE_DOCS`."""
    if window is not None:
        return float(window)
    return max(last_ts - first_ts, MIN_SPAN_S)


def interarrival_cv(starts: Sequence[float]) -> float:
    """:data:`FEATURE_DOCS` ``interarrival_cv`` of sorted start times (two passes: mean gap, then squares)."""
    n = len(starts)
    if n < 3:
        return math.nan
    mean = (starts[-1] - starts[0]) / (n - 1)
    if not mean > 0:
        return math.nan
    var = sum((starts[i + 1] - starts[i] - mean) ** 2 for i in range(n - 1)) / (n - 1)
    return math.sqrt(var) / mean
