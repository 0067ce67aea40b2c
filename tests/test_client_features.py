"""The client feature vector with hand-computed values, batch (windows) and online side by side."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from stormguard.features.clients import vector as fv
from stormguard.features.clients.online import OnlineClientFeatures
from stormguard.features.clients.windows import build_features, client_features, features_frame, read_features
from stormguard.features.logs.reader import read_log

from stormguard.report import ReplayStats
from stormguard.schema import records_frame, write_records

CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
LIB_JA4 = "t13d311100_aaaaaaaaaaaa_bbbbbbbbbbbb"
BROWSER_JA4 = "t13d1516h2_8daaf6152771_e5627efa2ab1"


def online_vectors(records: list[dict[str, Any]], key: str = "src_ip", window: float | None = 300.0
                   ) -> dict[tuple[str, float | None], dict[str, Any]]:
    online = OnlineClientFeatures(key=key, window=window, max_windows_per_key=10**6)
    for rec in records:
        online.observe(rec)
    return {(k, ws): online.vector(k, ws) for k, ws in online.keys()}  # type: ignore[misc]


def both(records: list[dict[str, Any]], key: str = "src_ip", window: float | None = 300.0) -> pd.DataFrame:
    """Batch result, after checking the online implementation gives the same rows."""
    batch = client_features(pd.DataFrame(records), key=key, window=window)
    online = features_frame(list(online_vectors(records, key, window).values()))
    online = online.sort_values(["key", "window_start"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(batch, online, check_exact=False, rtol=1e-12)
    return batch


def test_six_connections_one_second_apart() -> None:
    recs = [{"ts": 1000.0 + i, "ts_end": 1000.0 + i + (0.5 if i % 2 else 30.0), "src_ip": "1.1.1.1"}
            for i in range(6)]
    row = both(recs).iloc[0]
    assert row["n_conn"] == 6
    assert row["reconnects_10s"] == 5
    assert row["short_lived_2s"] == 3 and row["n_closed"] == 6
    assert row["mean_interarrival"] == 1.0 and row["min_interarrival"] == 1.0
    assert row["window_start"] == 900.0 and row["window_seconds"] == 300.0
    assert row["conn_rate_per_min"] == pytest.approx(6 * 60 / 300)
    assert (row["first_ts"], row["last_ts"]) == (1000.0, 1005.0)


def test_gaps_and_reconnect_threshold() -> None:
    starts = [0.0, 10.0, 25.0, 26.5, 40.0]  # gaps 10 (counts: <= 10), 15, 1.5, 13.5
    frame = both([{"ts": t, "src_ip": "a"} for t in starts])
    row = frame.iloc[0]
    assert row["reconnects_10s"] == 2
    assert row["min_interarrival"] == 1.5
    assert row["mean_interarrival"] == 10.0
    assert row["n_closed"] == 0 and row["short_lived_2s"] == 0  # ts_end unknown: neither closed nor short


def test_single_connection_has_nan_interarrivals() -> None:
    row = both([{"ts": 5.0, "src_ip": "a", "ts_end": 5.0}]).iloc[0]
    assert math.isnan(row["mean_interarrival"]) and math.isnan(row["min_interarrival"])
    assert row["reconnects_10s"] == 0 and row["short_lived_2s"] == 1


def test_windows_are_epoch_aligned_and_tumbling() -> None:
    recs = [{"ts": t, "src_ip": "a"} for t in (598.0, 599.0, 600.0, 601.0)]
    frame = both(recs)
    assert frame["window_start"].tolist() == [300.0, 600.0]
    assert frame["n_conn"].tolist() == [2, 2]
    assert frame["reconnects_10s"].tolist() == [1, 1]  # 599 -> 600 crosses the boundary: not counted


def test_whole_input_window() -> None:
    recs = [{"ts": t, "src_ip": "a"} for t in (0.0, 100.0, 400.0)] + [{"ts": 7.0, "src_ip": "b"}]
    frame = both(recs, window=None)
    a, b = frame.iloc[0], frame.iloc[1]
    assert math.isnan(a["window_start"]) and a["window_seconds"] == 400.0 and a["n_conn"] == 3
    assert a["conn_rate_per_min"] == pytest.approx(3 * 60 / 400)
    assert b["window_seconds"] == fv.MIN_SPAN_S and b["conn_rate_per_min"] == 1.0


def test_shares_and_mismatch() -> None:
    recs = [
        {"ts": 1.0, "src_ip": "a", "user_agent": CHROME, "ja4": LIB_JA4, "status": 200},
        {"ts": 2.0, "src_ip": "a", "user_agent": CHROME, "ja4": BROWSER_JA4, "status": 429},
        {"ts": 3.0, "src_ip": "a", "user_agent": "curl/8", "ja4": LIB_JA4, "status": 500},
        {"ts": 4.0, "src_ip": "a", "user_agent": None, "ja4": LIB_JA4},
        {"ts": 5.0, "src_ip": "a", "user_agent": CHROME},
    ]
    row = both(recs).iloc[0]
    assert row["ua_missing_share"] == pytest.approx(1 / 5)
    assert row["ua_browser_share"] == pytest.approx(3 / 4)
    assert row["tls_library_share"] == pytest.approx(3 / 4)
    assert row["ua_tls_mismatch_share"] == pytest.approx(1 / 3)  # 3 have both; 1 claims browser over a library
    assert row["error_share"] == pytest.approx(2 / 3)
    assert row["distinct_uas"] == 2 and row["ua_mode"] == CHROME
    assert row["distinct_ja4"] == 2 and row["ja4_mode"] == LIB_JA4
    assert row["distinct_ja3"] == 0 and pd.isna(row["ja3_mode"])


def test_no_ua_no_tls_no_status_gives_nan_shares() -> None:
    row = both([{"ts": 1.0, "src_ip": "a"}]).iloc[0]
    assert row["ua_missing_share"] == 1.0
    for col in ("ua_browser_share", "tls_library_share", "ua_tls_mismatch_share", "error_share",
                "header_entropy_mean"):
        assert math.isnan(row[col]), col


def test_mode_ties_break_to_smallest_value() -> None:
    recs = [{"ts": float(i), "src_ip": "a", "ja3": j} for i, j in enumerate(["b", "a", "c", "b", "a"])]
    row = both(recs).iloc[0]
    assert row["ja3_mode"] == "a" and row["distinct_ja3"] == 3


def test_distinct_cap() -> None:
    n = fv.DISTINCT_CAP + 5
    recs = [{"ts": float(i), "src_ip": "a", "user_agent": f"ua{i:03d}"} for i in range(n)]
    row = both(recs).iloc[0]
    assert row["distinct_uas"] == fv.DISTINCT_CAP and pd.isna(row["ua_mode"])
    at_cap = both(recs[: fv.DISTINCT_CAP]).iloc[0]
    assert at_cap["distinct_uas"] == fv.DISTINCT_CAP and at_cap["ua_mode"] == "ua000"


def test_header_entropy_and_order_from_names() -> None:
    recs = [{"ts": 1.0, "src_ip": "a", "header_names": "Host,User-Agent,Accept"},
            {"ts": 2.0, "src_ip": "a", "header_names": "Host,User-Agent,Accept", "header_entropy": 1.0},
            {"ts": 3.0, "src_ip": "a"}]
    row = both(recs).iloc[0]
    from stormguard.features.http.headers import header_entropy, header_order_fingerprint

    names = ["Host", "User-Agent", "Accept"]
    assert row["header_entropy_mean"] == pytest.approx((header_entropy(names) + 1.0) / 2)
    assert row["header_order_mode"] == header_order_fingerprint(names) and row["distinct_header_orders"] == 1


def test_keys() -> None:
    recs = [
        {"ts": 1.0, "src_ip": "a", "user_agent": "u1", "ja3": "j1", "session": "s1"},
        {"ts": 2.0, "src_ip": "a", "user_agent": "u2", "ja3": None, "session": "s1"},
        {"ts": 3.0, "src_ip": None, "user_agent": "u2", "ja3": "j1", "session": None},
    ]
    assert both(recs)["key"].tolist() == ["a"]  # null key: not counted
    assert both(recs, key="ip_ua")["key"].tolist() == ["a|u1", "a|u2"]
    assert both(recs, key="ip_ja3")["key"].tolist() == ["a|", "a|j1"]
    assert both(recs, key="session")["n_conn"].tolist() == [2]
    with pytest.raises(KeyError):
        client_features(pd.DataFrame(recs), key="nope")


def test_missing_columns_and_empty_input() -> None:
    frame = client_features(pd.DataFrame({"ts": [1.0, 2.0], "src_ip": ["a", "a"]}))
    assert frame["n_conn"].tolist() == [2] and list(frame.columns) == list(fv.FEATURE_COLUMNS)
    empty = client_features(pd.DataFrame({"ts": [], "src_ip": []}))
    assert len(empty) == 0 and list(empty.columns) == list(fv.FEATURE_COLUMNS)
    assert dict(empty.dtypes.astype(str)) == {c: ("string" if d == "string" else d)
                                              for c, d in fv.FEATURE_COLUMNS.items()}


def test_record_frame_dtypes_are_accepted() -> None:
    recs = [{"ts": 1.0, "ts_end": 1.5, "src_ip": "a", "status": 404, "user_agent": CHROME},
            {"ts": 2.0, "src_ip": "a"}]
    frame = client_features(records_frame(recs))
    assert frame.loc[0, "error_share"] == 1.0 and frame.loc[0, "short_lived_2s"] == 1


def test_online_open_close_protocol() -> None:
    online = OnlineClientFeatures(window=60.0)
    h1 = online.open({"ts": 10.0, "src_ip": "a", "user_agent": CHROME})
    h2 = online.open({"ts": 11.0, "src_ip": "a"})
    assert h1 is not None and h2 is not None
    vec = online.vector("a")
    assert vec is not None and vec["n_conn"] == 2 and vec["n_closed"] == 0 and math.isnan(vec["error_share"])
    assert online.close(h1, 11.5, status=429)
    assert online.close(h2, 100.0, status=200)
    vec = online.vector("a", 0.0)
    assert vec is not None
    assert vec["short_lived_2s"] == 1 and vec["n_closed"] == 2 and vec["error_share"] == 0.5
    assert online.open({"ts": 1.0}) is None and online.ignored == 1  # no key
    assert online.open({"ts": math.inf, "src_ip": "a"}) is None and online.ignored == 2


def test_non_finite_ts_is_not_counted() -> None:
    frame = both([{"ts": math.inf, "src_ip": "a"}, {"ts": math.nan, "src_ip": "a"}, {"ts": 1.0, "src_ip": "a"}])
    assert frame["n_conn"].tolist() == [1]


def test_online_expire_and_bounds() -> None:
    online = OnlineClientFeatures(window=60.0, max_keys=2, max_windows_per_key=2, grace=5.0)
    for t in (1.0, 61.0, 121.0):
        online.observe({"ts": t, "src_ip": "a", "ts_end": t + 1})
    assert sorted(ws for _, ws in online.keys()) == [60.0, 120.0] and online.evicted_windows == 1
    online.observe({"ts": 2.0, "src_ip": "b"})
    online.observe({"ts": 3.0, "src_ip": "c"})  # evicts the least recently used key ("a")
    assert online.vector("a") is None and online.evicted_keys == 1
    done = online.expire(now=66.0)  # windows [0, 60) of b and c ended more than 5 s ago
    assert sorted(v["key"] for v in done) == ["b", "c"] and len(online) == 0
    stale = online.open({"ts": 130.0, "src_ip": "d"})
    assert stale is not None
    online.expire(now=1000.0)
    assert online.close(stale, 131.0) is False  # window already released


def test_online_has_no_pandas() -> None:
    import subprocess
    import sys

    code = ("import sys; import stormguard.features.clients.online as o; "
            "o.OnlineClientFeatures().observe({'ts': 1.0, 'src_ip': 'a', 'header_names': 'Host'}); "
            "sys.exit(1 if 'pandas' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_build_features_parquet_and_csv(tmp_path: Path) -> None:
    recs = [{"ts": float(i), "src_ip": "a" if i % 2 else "b", "ts_end": i + 0.5, "user_agent": "x"}
            for i in range(20)]
    write_records(records_frame(recs), tmp_path / "r.parquet")
    for suffix in (".parquet", ".csv"):
        out = tmp_path / f"f{suffix}"
        frame = build_features(tmp_path / "r.parquet", out, key="src_ip", window=60.0)
        assert out.exists() and frame["n_conn"].sum() == 20
    meta = pq.read_schema(tmp_path / "f.parquet").metadata
    assert meta[b"stormguard.feature_schema"] == str(fv.FEATURE_SCHEMA_VERSION).encode()
    for suffix in (".parquet", ".csv"):
        back = read_features(tmp_path / f"f{suffix}")
        pd.testing.assert_frame_equal(back, frame)
    with pytest.raises(ValueError, match="feature schema"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fv, "FEATURE_SCHEMA_VERSION", fv.FEATURE_SCHEMA_VERSION + 1)
            read_features(tmp_path / "f.parquet")
    with pytest.raises(ValueError):
        build_features(tmp_path / "r.parquet", tmp_path / "f.txt")


def test_feature_docs_cover_every_column() -> None:
    assert set(fv.FEATURE_DOCS) == set(fv.FEATURE_COLUMNS)


def test_elastic_log_features(corpus: Path) -> None:
    recs = list(read_log(corpus / "logs" / "elastic-examples-apache_logs.log", ReplayStats()))
    frame = both(recs, window=None)
    assert len(frame) == 1753 and frame["n_conn"].sum() == 10_000
    windowed = both(recs, window=300.0)
    assert windowed["n_conn"].sum() == 10_000


@pytest.mark.slow
def test_batch_one_million_records() -> None:
    """Scale, not speed (bench/train.py times it): a million records over 20,000 clients, nothing lost."""
    rng = np.random.default_rng(1)
    n = 1_000_000
    ts = np.sort(rng.uniform(0, 86_400, n))
    uas = np.array([CHROME, "curl/8", "python-requests/2", None], dtype=object)
    records = pd.DataFrame({
        "ts": ts, "ts_end": ts + rng.exponential(5, n), "src_ip": rng.integers(0, 20_000, n).astype(str),
        "user_agent": uas[rng.integers(0, 4, n)], "ja4": np.array([LIB_JA4, BROWSER_JA4], dtype=object)[
            rng.integers(0, 2, n)], "status": rng.choice([200, 404, 429], n),
        "header_names": np.array(["Host,User-Agent,Accept", "Host,Accept"], dtype=object)[rng.integers(0, 2, n)],
    })
    frame = client_features(records, window=300.0)
    assert frame["n_conn"].sum() == n
    assert frame["key"].nunique() <= 20_000 and len(frame) >= 20_000
