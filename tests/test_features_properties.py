"""Property tests: batch (windows.client_features) and online (OnlineClientFeatures) compute the same vectors.

For random record sequences — random keys, timestamps (on and off window boundaries, small and epoch-sized),
durations, UAs, JA3/JA4, header lists, statuses, missing values everywhere — fed to the online side in a random
order, every (key, window) row must match: counts and exact-arithmetic floats exactly, float means to
``math.isclose``, NaN where the other is NaN, strings equal.
"""

from __future__ import annotations

import math
from typing import Any
from unittest.mock import patch

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stormguard.features.clients import vector as fv
from stormguard.features.clients.online import OnlineClientFeatures
from stormguard.features.clients.windows import client_features

from stormguard.schema import records_frame

CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
UAS = [None, CHROME, FIREFOX, "() { :; }; /bin/bash -c id", "curl/8.4.0", "python-requests/2.31", "Mozilla/5.0 (compatible; Googlebot/2.1)", "-x-"]
JA3S = [None, "e7d705a3286e19ea42f587b344ee6865", "6734f37431670b3ab4292b8f60f29984", "a"]
JA4S = [None, "t13d1516h2_8daaf6152771_e5627efa2ab1", "t13d311100_aaaaaaaaaaaa_bbbbbbbbbbbb",
        "t13d1516h1_8daaf6152771_e5627efa2ab1", "garbage"]
HEADERS = [None, "", "Host", "Host,User-Agent,Accept", "host,user-agent,accept,cookie",
           "Host,Connection,User-Agent,Accept,Accept-Encoding,Accept-Language,Referer",
           "Host,User-Agent,Accept,Accept-Language,Accept-Encoding,Connection"]
# floats exercised as-is (IEEE arithmetic is what both sides share)
EXACT = ("window_start", "window_seconds", "first_ts", "last_ts", "conn_rate_per_min", "mean_interarrival",
         "min_interarrival", "ua_missing_share", "ua_browser_share", "tls_library_share", "ua_tls_mismatch_share",
         "error_share", "header_family_mismatch_share")
CLOSE = ("header_entropy_mean", "interarrival_cv", "path_depth_mean", "query_length_mean", "query_entropy_mean")
# request targets: assets, pages, probes, payloads (encoded too), long ones, robots.txt
PATHS = [None, "/", "/index.html", "/css/site.css", "/img/a.png?v=3", "/wp-login.php", "/.git/config",
         "/admin/", "/backup.sql.gz", "/cgi-bin/test.cgi?x=%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/robots.txt",
         "/search?q=1%27%20union%20select%20null--", "/p?" + "a" * 250, "/index.php~", "/.well-known/x"]


@st.composite
def records(draw: st.DrawFn, max_size: int = 40) -> list[dict[str, Any]]:
    base = draw(st.sampled_from([0.0, 1_700_000_000.0]))
    timestamp = st.one_of(
        st.integers(min_value=0, max_value=30).map(float),  # bursts: gaps around the 10 s and 2 s thresholds
        st.floats(min_value=0, max_value=40, allow_nan=False, allow_infinity=False),
        st.floats(min_value=0, max_value=2000, allow_nan=False, allow_infinity=False),
        st.integers(min_value=0, max_value=40).map(lambda i: i * 60.0),  # on window boundaries
        st.integers(min_value=0, max_value=200).map(lambda i: i * 0.5),
    )
    record = st.fixed_dictionaries({
        "ts": st.one_of(st.none(), timestamp.map(lambda t: base + t)) if draw(st.booleans()) else
        timestamp.map(lambda t: base + t),
        "duration": st.one_of(st.none(), st.floats(min_value=0, max_value=10, allow_nan=False)),
        "src_ip": st.sampled_from([None, "10.0.0.1", "10.0.0.2", "2001:db8::1"]),
        "session": st.sampled_from([None, "s1", "s2"]),
        "user_agent": st.sampled_from(UAS),
        "ja3": st.sampled_from(JA3S),
        "ja4": st.sampled_from(JA4S),
        "header_names": st.sampled_from(HEADERS),
        "header_entropy": st.one_of(st.none(), st.none(), st.floats(min_value=0, max_value=5, allow_nan=False)),
        "status": st.sampled_from([None, 200, 204, 301, 401, 403, 404, 429, 500, 101]),
        "method": st.sampled_from([None, "GET", "POST", "HEAD", "OPTIONS", "CONNECT", "PROPFIND", "PUT"]),
        "path": st.sampled_from(PATHS),
        "http_version": st.sampled_from([None, "HTTP/1.1", "HTTP/1.0", "HTTP/2.0"]),
        "referer": st.sampled_from([None, "https://example.org/", "https://example.org/a"]),
        "conn_row": st.sampled_from([None, None, 0, 0, 1, 2]),  # >0: a further row of a counted connection
    })
    rows = draw(st.lists(record, min_size=0, max_size=max_size))
    out = []
    for row in rows:
        row = dict(row)
        duration = row.pop("duration")
        row["ts_end"] = None if duration is None or row["ts"] is None else row["ts"] + duration
        if row["header_names"] is None:
            row["header_entropy"] = None  # entropy without names happens only from readers that know it
        out.append(row)
    return out


def same(a: Any, b: Any, *, close: bool = False) -> bool:
    if a is None or b is None or a is pd.NA or b is pd.NA:
        return (a is None or a is pd.NA) and (b is None or b is pd.NA)
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) if close else a == b
    return a == b


def check_equal(rows: list[dict[str, Any]], order: list[int], key: str, window: float | None,
                as_frame: bool) -> None:
    frame = records_frame(rows) if as_frame else pd.DataFrame(rows, columns=list(rows[0]) if rows else ["ts"])
    if "src_ip" not in frame.columns:
        frame["src_ip"] = None
    if key not in fv.COMPOSITE_KEYS and key not in frame.columns:
        frame[key] = None
    batch = client_features(frame, key=key, window=window)
    online = OnlineClientFeatures(key=key, window=window, max_windows_per_key=10**9, max_keys=10**9)
    for i in order:
        online.observe(rows[i])
    held = sorted(((k, math.nan if ws is None else ws) for k, ws in online.keys()), key=lambda kw: (kw[0], kw[1]))
    from_batch = [(str(k), float(ws)) for k, ws in zip(batch["key"], batch["window_start"], strict=True)]
    assert len(held) == len(from_batch)
    assert all(h[0] == b[0] and same(h[1], b[1]) for h, b in zip(held, from_batch, strict=True))
    for row in batch.to_dict("records"):
        ws = None if math.isnan(row["window_start"]) else row["window_start"]
        vec = online.vector(row["key"], ws)
        assert vec is not None
        assert list(vec) == list(fv.FEATURE_COLUMNS)
        for col in fv.FEATURE_COLUMNS:
            assert same(row[col], vec[col], close=col in CLOSE), (col, row[col], vec[col], row["key"], ws)
            if fv.FEATURE_COLUMNS[col] == "int64":
                assert isinstance(vec[col], int) and int(row[col]) == vec[col]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=records(), key=st.sampled_from(["src_ip", "ip_ua", "ip_ja3", "ip_ja4", "session"]),
       window=st.sampled_from([None, 60.0, 300.0, 7.5]), as_frame=st.booleans(), data=st.data())
def test_batch_equals_online(rows: list[dict[str, Any]], key: str, window: float | None, as_frame: bool,
                             data: st.DataObject) -> None:
    order = data.draw(st.permutations(range(len(rows))))
    check_equal(rows, order, key, window, as_frame)


@settings(max_examples=100, deadline=None)
@given(rows=records(max_size=60), window=st.sampled_from([None, 60.0]), data=st.data())
def test_batch_equals_online_past_the_distinct_cap(rows: list[dict[str, Any]], window: float | None,
                                                   data: st.DataObject) -> None:
    """With a tiny cap, the capped counts and the null modes must agree too."""
    order = data.draw(st.permutations(range(len(rows))))
    with patch.object(fv, "DISTINCT_CAP", 2), patch.object(fv, "PATH_DISTINCT_CAP", 3):
        check_equal(rows, order, "src_ip", window, as_frame=True)


@settings(max_examples=100, deadline=None)
@given(rows=records(), data=st.data())
def test_online_is_order_independent(rows: list[dict[str, Any]], data: st.DataObject) -> None:
    first, second = (OnlineClientFeatures(max_windows_per_key=10**9) for _ in range(2))
    for row in rows:
        first.observe(row)
    for i in data.draw(st.permutations(range(len(rows)))):
        second.observe(rows[i])
    assert sorted(first.keys(), key=str) == sorted(second.keys(), key=str)
    for k, ws in first.keys():
        a, b = first.vector(k, ws), second.vector(k, ws)
        assert a is not None and b is not None
        assert all(same(a[c], b[c], close=c in CLOSE) for c in fv.FEATURE_COLUMNS)


@settings(max_examples=100, deadline=None)
@given(rows=records())
def test_batch_counts_are_consistent(rows: list[dict[str, Any]]) -> None:
    frame = client_features(records_frame(rows), window=60.0) if rows else None
    if frame is None or frame.empty:
        return
    counted = sum(1 for r in rows if r["ts"] is not None and r["src_ip"] is not None and not (r["conn_row"] or 0))
    assert frame["n_conn"].sum() == counted
    assert (frame["reconnects_10s"] <= frame["n_conn"] - 1).all()
    assert (frame["short_lived_2s"] <= frame["n_closed"]).all() and (frame["n_closed"] <= frame["n_conn"]).all()
    assert ((frame["first_ts"] >= frame["window_start"]) & (frame["last_ts"] < frame["window_start"] + 60)).all()
    several = frame["n_conn"] >= 2
    assert (frame.loc[several, "min_interarrival"] <= frame.loc[several, "mean_interarrival"] + 1e-9).all()
