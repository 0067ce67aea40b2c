"""The client feature vector in batch: connection records (a DataFrame) → one row per (client key, window).

Definitions live in :mod:`.vector` and are shared with :mod:`.online`; this module only vectorises them. The
work is a single sort by (key, window, ts) followed by segment reductions (``numpy.ufunc.reduceat``) over the
contiguous groups, so it scales to millions of records without a Python loop per row; the only per-value Python
calls (UA/JA4 classification, header fingerprints) run once per *distinct* value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from stormguard.features.clients import content as fc
from stormguard.features.clients import vector as fv

__all__ = ["client_features", "client_keys", "build_features", "features_frame", "write_features", "read_features"]


def _column(records: pd.DataFrame, name: str) -> pd.Series:
    if name in records.columns:
        return records[name]
    return pd.Series([None] * len(records), index=records.index, dtype="object")


@dataclass
class _Coded:
    """A column as integer codes (-1 = null) into ``uniques``: the distinct values as ``str``, sorted, so that
    code order is value order (the tie-break of every mode) and ``str`` is what the online side compares."""

    codes: np.ndarray
    uniques: np.ndarray

    def strings(self) -> pd.api.extensions.ExtensionArray:
        return pd.array(self.uniques, dtype="string")


def _coded(values: Any) -> _Coded:
    codes, found = pd.factorize(values, use_na_sentinel=True)
    codes = np.asarray(codes, dtype=np.int64)
    if len(found) == 0:
        return _Coded(codes, np.array([], dtype=object))
    as_str = np.array([str(u) for u in found], dtype=object)  # once per distinct value
    remap, final = pd.factorize(as_str, sort=True)  # merges values whose str() coincide, like the online side
    codes = np.where(codes >= 0, np.asarray(remap, dtype=np.int64)[np.maximum(codes, 0)], -1)
    return _Coded(codes, np.asarray(final, dtype=object))


def _key_codes(records: pd.DataFrame, key: str) -> _Coded:
    parts = fv.COMPOSITE_KEYS.get(key)
    if parts is None:
        if key not in records.columns:
            raise KeyError(f"key column {key!r} is not in the records (columns: {list(records.columns)})")
        return _coded(records[key])
    first, second = _coded(_column(records, parts[0])), _coded(_column(records, parts[1]))
    valid = first.codes >= 0
    width = len(second.uniques) + 1
    pairs = first.codes * width + (second.codes + 1)
    distinct, inverse = np.unique(pairs[valid], return_inverse=True)
    texts = np.array([f"{first.uniques[p // width]}{fv.KEY_SEP}{'' if p % width == 0 else second.uniques[p % width - 1]}"
                      for p in distinct], dtype=object)
    remap, final = pd.factorize(texts, sort=True)
    codes = np.full(len(pairs), -1, dtype=np.int64)
    codes[valid] = np.asarray(remap, dtype=np.int64)[inverse]
    return _Coded(codes, np.asarray(final, dtype=object))


def _float_array(series: pd.Series) -> np.ndarray:
    values = pd.to_numeric(series, errors="coerce").astype("float64").to_numpy(dtype="float64", na_value=np.nan)
    return np.array(values, dtype="float64", copy=True)  # writable, never a view of the caller's frame


def _flag(coded: _Coded, func: Callable[[str], bool]) -> np.ndarray:
    """``func`` of each row's value (False where null), called once per distinct value."""
    per_value = np.array([bool(func(u)) for u in coded.uniques] + [False], dtype=bool)
    return per_value[coded.codes]  # code -1 picks the trailing False


def _header_columns(records: pd.DataFrame) -> tuple[np.ndarray, _Coded]:
    """Per-row header entropy (own column, else from ``header_names``) and header-order fingerprint codes."""
    names = _coded(_column(records, "header_names"))
    entropy = _float_array(_column(records, "header_entropy"))
    need = np.isnan(entropy) & (names.codes >= 0)
    if need.any():
        per_name = np.array([fv.entropy_of_joined(u) for u in names.uniques], dtype="float64")
        entropy[need] = per_name[names.codes[need]]
    own = _coded(_column(records, "header_order"))
    derive = (own.codes < 0) & (names.codes >= 0)
    if not derive.any():
        return entropy, own
    derived = np.array([fv.order_of_joined(u) for u in names.uniques], dtype=object)
    remap, final = pd.factorize(np.concatenate([own.uniques, derived]), sort=True)
    remap = np.asarray(remap, dtype=np.int64)
    own_map, derived_map = remap[: len(own.uniques)], remap[len(own.uniques):]
    codes = np.where(own.codes >= 0, own_map[np.maximum(own.codes, 0)] if len(own_map) else -1,
                     np.where(derive, derived_map[np.maximum(names.codes, 0)], -1))
    return entropy, _Coded(np.asarray(codes, dtype=np.int64), np.asarray(final, dtype=object))


def client_features(records: pd.DataFrame, key: str = "src_ip",
                    window: float | None = fv.DEFAULT_WINDOW_S) -> pd.DataFrame:
    """Feature vectors (:data:`vector.FEATURE_COLUMNS`) per client ``key`` and tumbling ``window`` (seconds).

    ``key``: ``src_ip`` (default), ``ip_ua``, ``ip_ja3``, ``ip_ja4`` or any record column (e.g. ``session``).
    ``window``: seconds, or ``None`` for one window per key over the whole input. Records without a key value
    or without a finite ``ts`` are not counted. Rows come out sorted by key, then window start.
    """
    if window is not None and not window > 0:
        raise ValueError(f"window must be positive seconds or None, not {window!r}")
    if "conn_row" in records.columns:  # further rows of one connection are not connections (vector.py)
        conn_row = pd.to_numeric(records["conn_row"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        if np.any(conn_row > 0):
            records = records.loc[~(conn_row > 0)]
    keys = _key_codes(records, key)
    ts_all = _float_array(_column(records, "ts"))
    valid = (keys.codes >= 0) & np.isfinite(ts_all)
    if not valid.any():
        return features_frame([])
    rows = np.flatnonzero(valid)
    ts = ts_all[rows]
    if window is None:
        ws = np.full(len(ts), np.nan)
        order = np.lexsort((ts, keys.codes[rows]))
    else:
        ws = np.floor(ts / window) * window
        order = np.lexsort((ts, ws, keys.codes[rows]))
    perm = rows[order]  # record positions in (key, window, ts) order
    kc = keys.codes[perm]
    ts_s = ts[order]
    ws_s = ws[order]
    n_rows = len(ts_s)
    boundary = np.empty(n_rows, dtype=bool)
    boundary[0] = True
    boundary[1:] = kc[1:] != kc[:-1]
    if window is not None:
        boundary[1:] |= ws_s[1:] != ws_s[:-1]
    starts = np.flatnonzero(boundary)
    ends = np.append(starts[1:], n_rows)
    n_conn = (ends - starts).astype(np.int64)
    group_id = np.cumsum(boundary) - 1
    n_groups = len(starts)

    def seg_sum(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values.astype(np.int64) if values.dtype == bool else values, starts)

    # inter-arrivals inside each (key, window)
    gaps = np.full(n_rows, np.inf)
    gaps[1:] = ts_s[1:] - ts_s[:-1]
    gaps[boundary] = np.inf
    min_gap = np.minimum.reduceat(gaps, starts)
    reconnects = seg_sum(gaps <= fv.RECONNECT_GAP_S)
    first_ts = ts_s[starts]
    last_ts = ts_s[ends - 1]
    several = n_conn >= 2
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_gap = np.where(several, (last_ts - first_ts) / (n_conn - 1), np.nan)
    min_gap = np.where(several, min_gap, np.nan)
    if window is None:
        seconds = np.maximum(last_ts - first_ts, fv.MIN_SPAN_S)
    else:
        seconds = np.full(n_groups, float(window))

    # durations
    ts_end = _float_array(_column(records, "ts_end"))[perm]
    closed = ~np.isnan(ts_end)
    short = closed & ((ts_end - ts_s) <= fv.SHORT_LIVED_S)

    # headers
    entropy_all, header_order = _header_columns(records)
    entropy = entropy_all[perm]
    has_entropy = ~np.isnan(entropy)
    entropy_n = seg_sum(has_entropy)
    entropy_sum = np.add.reduceat(np.where(has_entropy, entropy, 0.0), starts)

    # UA / TLS claims
    ua = _coded(_column(records, "user_agent"))
    ja4 = _coded(_column(records, "ja4"))
    ja3 = _coded(_column(records, "ja3"))
    has_ua, has_ja4 = ua.codes[perm] >= 0, ja4.codes[perm] >= 0
    browser = _flag(ua, fv.ua_claims_browser)[perm]
    library = _flag(ja4, fv.tls_is_library)[perm]
    both = has_ua & has_ja4
    n_ua, n_ja4, n_both = seg_sum(has_ua), seg_sum(has_ja4), seg_sum(both)

    status = _float_array(_column(records, "status"))[perm]
    has_status = ~np.isnan(status)
    n_status = seg_sum(has_status)
    n_error = seg_sum(has_status & (status >= fv.ERROR_STATUS))

    with np.errstate(divide="ignore", invalid="ignore"):
        def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
            return np.where(den > 0, num / np.maximum(den, 1), np.nan)

        out: dict[str, Any] = {
            "key": keys.strings().take(kc[starts]),
            "window_start": ws_s[starts],
            "window_seconds": seconds,
            "first_ts": first_ts,
            "last_ts": last_ts,
            "n_conn": n_conn,
            "conn_rate_per_min": n_conn * 60 / seconds,
            "reconnects_10s": reconnects,
            "short_lived_2s": seg_sum(short),
            "n_closed": seg_sum(closed),
            "mean_interarrival": mean_gap,
            "min_interarrival": min_gap,
            "header_entropy_mean": ratio(entropy_sum, entropy_n),
            "ua_missing_share": (n_conn - n_ua) / n_conn,
            "ua_browser_share": ratio(seg_sum(has_ua & browser), n_ua),
            "tls_library_share": ratio(seg_sum(has_ja4 & library), n_ja4),
            "ua_tls_mismatch_share": ratio(seg_sum(both & browser & library), n_both),
            "error_share": ratio(n_error, n_status),
        }

    # timing regularity: two passes (mean gap per group, then squared deviations), as vector.interarrival_cv
    gap_ok = ~boundary
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_rep = mean_gap[group_id]
        dev = np.where(gap_ok, (np.where(gap_ok, gaps, 0.0) - np.nan_to_num(mean_rep)) ** 2, 0.0)
        var = np.add.reduceat(dev, starts) / np.maximum(n_conn - 1, 1)
        out["interarrival_cv"] = np.where((n_conn >= 3) & (mean_gap > 0), np.sqrt(var) / mean_gap, np.nan)
    out.update(_content_columns(records, perm, starts, group_id, n_groups, ua, status, has_status, seg_sum))
    checked, mismatch = _header_family(records, ua)
    n_checked = seg_sum(checked[perm])
    out["header_family_checked"] = n_checked
    with np.errstate(divide="ignore", invalid="ignore"):
        out["header_family_mismatch_share"] = np.where(n_checked > 0, seg_sum(mismatch[perm]) / np.maximum(n_checked, 1),
                                                       np.nan)

    referer = _coded(_column(records, "referer"))
    sources = {"header_order": header_order, "user_agent": ua, "ja3": ja3, "ja4": ja4, "referer": referer}
    for count_col, mode_col, source in fv.CATEGORICAL_FEATURES:
        coded = sources[source]
        distinct, mode_codes = _distinct_and_mode(coded.codes[perm], group_id, n_groups, len(coded.uniques))
        out[count_col] = distinct
        if mode_col is not None:
            out[mode_col] = coded.strings().take(mode_codes, allow_fill=True)
    return features_frame(out)


def _content_columns(records: pd.DataFrame, perm: np.ndarray, starts: np.ndarray, group_id: np.ndarray,
                     n_groups: int, ua: _Coded, status: np.ndarray, has_status: np.ndarray,
                     seg_sum: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """The request-content counts and means of :data:`vector.FEATURE_COLUMNS` (each classifier of
    :mod:`.content` called once per distinct value)."""
    out: dict[str, Any] = {"n_status": seg_sum(has_status)}
    st = np.where(has_status, status, 0).astype(np.int64)
    lo, hi = (int(st.min()), int(st.max())) if len(st) else (0, 0)
    table = np.array([-1 if (c := fc.status_class(v)) is None else c for v in range(lo, hi + 1)], dtype=np.int64)
    cls = np.where(has_status, table[st - lo], -1)
    for i, name in enumerate(fc.STATUS_CLASSES):
        out[f"status_{name}"] = seg_sum(cls == i)
    method = _coded(_column(records, "method"))
    mcls = np.array([fc.method_class(u) or "" for u in method.uniques] + [""], dtype=object)[method.codes[perm]]
    out["n_method"] = seg_sum(method.codes[perm] >= 0)
    for name in fc.METHOD_CLASSES:
        out[f"method_{name}"] = seg_sum(mcls == name)
    version = _coded(_column(records, "http_version"))
    out["n_version"] = seg_sum(version.codes[perm] >= 0)
    out["http10"] = seg_sum(_flag(version, fc.is_http10)[perm])
    path = _coded(_column(records, "path"))
    pc = path.codes[perm]
    has_path = pc >= 0
    n_path = seg_sum(has_path)
    out["n_path"] = n_path
    values = np.array([fc.path_evidence(u) for u in path.uniques] + [(0.0,) * len(fc.PATH_VALUES)],
                      dtype=np.float64).reshape(len(path.uniques) + 1, len(fc.PATH_VALUES))[pc]
    col = {name: values[:, i] for i, name in enumerate(fc.PATH_VALUES)}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, source in fv.PATH_MEANS.items():
            total = np.add.reduceat(col[source], starts)
            out[name] = np.where(n_path > 0, total / np.maximum(n_path, 1), np.nan)
    for name, source in fv.PATH_COUNTS.items():
        out[name] = seg_sum(col[source] > 0)
    out["attack_markers"] = seg_sum((col["attack_marker"] > 0) | _flag(ua, fc.ua_attack_marker)[perm])
    out["distinct_paths"], _ = _distinct_and_mode(pc, group_id, n_groups, len(path.uniques), fv.PATH_DISTINCT_CAP)
    referer = _coded(_column(records, "referer"))
    out["referer_absent"] = seg_sum(referer.codes[perm] < 0)
    return out


def _header_family(records: pd.DataFrame, ua: _Coded) -> tuple[np.ndarray, np.ndarray]:
    """Per record: checked (a verdict other than ``unknown``) and inconsistent, by :func:`vector.record_header_family`
    called once per distinct (header names, User-Agent, HTTP version) combination."""
    n = len(records)
    names = _coded(_column(records, "header_names"))
    checked, mismatch = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    candidate = (names.codes >= 0) & _flag(ua, fv.ua_claims_browser)  # other UAs claim no family: unknown
    if not candidate.any():
        return checked, mismatch
    version = _coded(_column(records, "http_version"))
    rows = np.flatnonzero(candidate)
    n_ua, n_version = len(ua.uniques), len(version.uniques) + 1  # version code -1 (null) -> 0
    combined = (names.codes[rows] * n_ua + ua.codes[rows]) * n_version + (version.codes[rows] + 1)
    inverse, combos = pd.factorize(combined)  # hashing, no sort: few distinct combinations
    combos = np.asarray(combos, dtype=np.int64)
    ver, rest = combos % n_version, combos // n_version
    verdicts = np.array([fv.record_header_family(names.uniques[a], ua.uniques[b],
                                                 version.uniques[c - 1] if c > 0 else None)
                         for a, b, c in zip(rest // n_ua, rest % n_ua, ver, strict=True)],
                        dtype=object)[np.asarray(inverse)]
    checked[rows] = verdicts != "unknown"
    mismatch[rows] = verdicts == "inconsistent"
    return checked, mismatch


def _distinct_and_mode(codes: np.ndarray, group_id: np.ndarray, n_groups: int,
                       n_values: int, cap: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Capped distinct count and mode code (ties → smallest code = smallest value; -1 = none) per group."""
    cap = fv.DISTINCT_CAP if cap is None else cap
    distinct = np.zeros(n_groups, dtype=np.int64)
    mode = np.full(n_groups, -1, dtype=np.int64)
    present = codes >= 0
    if not present.any():
        return distinct, mode
    pairs = group_id[present].astype(np.int64) * n_values + codes[present]
    unique_pairs, counts = np.unique(pairs, return_counts=True)
    pair_group, pair_value = unique_pairs // n_values, unique_pairs % n_values
    n_unique = np.bincount(pair_group, minlength=n_groups)
    distinct[:] = np.minimum(n_unique, cap)
    order = np.lexsort((pair_value, -counts, pair_group))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pair_group[order][1:] != pair_group[order][:-1]
    best = order[first]
    mode[pair_group[best]] = pair_value[best]
    mode[n_unique > cap] = -1
    return distinct, mode


def features_frame(data: dict[str, Any] | list[dict[str, Any]]) -> pd.DataFrame:
    """Columns of :data:`vector.FEATURE_COLUMNS` with their dtypes, from column arrays or online vectors.

    Extra columns (GeoIP, UA clusters added by other modules) are kept after the declared ones."""
    frame = pd.DataFrame(data) if not isinstance(data, list) or data else pd.DataFrame(columns=list(fv.FEATURE_COLUMNS))
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for col, dtype in fv.FEATURE_COLUMNS.items():
        series = frame[col].reset_index(drop=True) if col in frame.columns else pd.Series([None] * len(frame))
        if dtype == "string" and not isinstance(series.dtype, pd.StringDtype):
            series = series.astype("object").where(series.notna(), None)
        out[col] = series.astype(dtype)
    for col in frame.columns:
        if col not in out.columns:
            out[col] = frame[col].reset_index(drop=True)
    return out


def write_features(frame: pd.DataFrame, path: str | Path) -> None:
    """Write features as Parquet (``.parquet``/``.pq``, schema version in the metadata) or CSV."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[b"stormguard.feature_schema"] = str(fv.FEATURE_SCHEMA_VERSION).encode()
        pq.write_table(table.replace_schema_metadata(meta), path)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        raise ValueError(f"{path}: output must end in .parquet or .csv, not {suffix or 'nothing'!r}")


def read_features(path: str | Path) -> pd.DataFrame:
    """Read a file written by :func:`write_features` (or a folder of them, as ``--engine dask`` writes) back with
    the declared dtypes.

    A Parquet file written under another :data:`vector.FEATURE_SCHEMA_VERSION` is refused (its columns may mean
    something else); CSV carries no version, so only its columns are checked."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        import pyarrow.parquet as pq

        parts = sorted(path.glob("*.parquet")) if path.is_dir() else [path]  # a dataset folder: its parts
        meta = (pq.read_schema(parts[0]).metadata if parts else None) or {}
        version = meta.get(b"stormguard.feature_schema")
        if version is not None and version.decode() != str(fv.FEATURE_SCHEMA_VERSION):
            raise ValueError(f"{path}: feature schema {version.decode()}, this code reads "
                             f"{fv.FEATURE_SCHEMA_VERSION}; recompute the features")
        frame = pd.read_parquet(path)
    elif suffix == ".csv":
        frame = pd.read_csv(path, dtype={c: "string" for c, d in fv.FEATURE_COLUMNS.items() if d == "string"})
    else:
        raise ValueError(f"{path}: features must be .parquet or .csv")
    for col, value in fv.ADDED_COLUMNS.items():  # written before these columns existed: "not checked"
        if col not in frame.columns:
            frame[col] = value
    missing = [c for c in fv.FEATURE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a feature file (missing column(s) {missing})")
    return features_frame(frame)


def build_features(records_path: str | Path, out_path: str | Path | None, key: str = "src_ip",
                   window: float | None = fv.DEFAULT_WINDOW_S) -> pd.DataFrame:
    """CLI entry: read a record file (Parquet/CSV), compute :func:`client_features`, write ``out_path`` (by
    suffix; skipped when ``None``) and return the frame."""
    from stormguard.schema import read_records

    records = read_records(records_path)
    features = client_features(records, key=key, window=window)
    if out_path is not None:
        write_features(features, out_path)
    return features



def client_keys(records: pd.DataFrame, key: str = "src_ip") -> pd.Series:
    """Each record's client ``key`` as the text :func:`client_features` groups by (null where it has none): what
    a distributed engine partitions records by, so every record of a client meets in one partition."""
    coded = _key_codes(records, key)
    texts = np.append(coded.uniques, None).astype(object)[coded.codes]  # code -1 picks the trailing None
    return pd.Series(texts, index=records.index, dtype="string")
