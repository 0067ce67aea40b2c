"""The connection-record schema: one row per connection attempt, declared once.

Every reader (captures, access logs, HAR files, the live server) produces plain ``dict`` rows whose keys are a
subset of :data:`RECORD_COLUMNS`; :func:`records_frame` turns any iterable of them into a pandas DataFrame with
exactly these columns and dtypes, so that Parquet and CSV files written by ``stormguard replay`` and the frames the
feature code reads always look the same.

Conventions that the rest of the project relies on:

* ``ts`` / ``ts_end`` are epoch seconds (float64) of the first and last packet (or the log line's time; ``ts_end``
  is then ``ts`` plus the request duration when the log has one).
* ``header_names`` holds the HTTP request header names *in wire order*, as sent (case preserved), joined with
  ``","`` — a comma can never occur inside a header name (RFC 9110 ``token``), so the join is lossless.
* ``alpn`` holds the client's ALPN protocol list joined with ``","``; ``tls_versions`` the versions the client
  offered (supported_versions extension, else the legacy version) as hex (``0x0304``) joined with ``" "``.
* A connection may give several rows (a second ClientHello after a HelloRetryRequest, HTTP/1.1 keep-alive
  requests). ``conn_row`` numbers them (0 = the connection's first row); it is null where every row is a
  connection of its own (log lines). Connection-level features count only rows with ``conn_row`` null or 0.
* Missing values are nulls (``<NA>`` / NaN), never empty strings pretending to be values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

#: Schema version of connection records; bump when a column changes meaning.
RECORD_SCHEMA_VERSION = 1

#: Column name -> pandas dtype, in output order.
RECORD_COLUMNS: dict[str, str] = {
    "ts": "float64",
    "ts_end": "float64",
    "source": "string",  # file name (captures/logs) or "live"
    "source_kind": "string",  # pcap | pcapng | log-combined | log-common | jsonl | har | live
    "frame": "Int64",  # first packet (1-based) of the connection / ClientHello in a capture
    "line": "Int64",  # line number in a log file (1-based)
    "transport": "string",  # tcp | udp
    "proto": "string",  # tls | quic | dtls | http | other
    "src_ip": "string",
    "src_port": "Int32",
    "dst_ip": "string",
    "dst_port": "Int32",
    "ch_index": "Int16",  # index of the ClientHello within its connection (HelloRetryRequest -> 0, 1)
    "conn_row": "Int16",  # index of this row among its connection's rows (0 = first); null = one row per conn
    "ja3": "string",  # MD5 hex of ja3_string
    "ja3_string": "string",
    "ja4": "string",
    "ja4_r": "string",
    "sni": "string",
    "alpn": "string",
    "tls_versions": "string",
    "method": "string",
    "path": "string",
    "http_version": "string",
    "status": "Int32",
    "user_agent": "string",
    "referer": "string",
    "header_names": "string",
    "header_entropy": "float64",
    "header_order": "string",  # our own header-order fingerprint (see stormguard.features.headers)
    "bytes_in": "Int64",  # bytes from the client (payload), when known
    "bytes_out": "Int64",  # bytes to the client (payload / response size), when known
    "packets": "Int64",
    "tenant": "string",
    "session": "string",  # a session identifier when the source has one (some log formats, live cookies)
    "outcome": "string",  # e.g. closed, reset, timeout, open (capture ended), refused, ok
    "reject_reason": "string",
    "note": "string",  # anomalies noticed while parsing this connection (truncated hello, ...)
}

HEADER_NAME_SEP = ","
ALPN_SEP = ","
TLS_VERSION_SEP = " "


def records_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build a DataFrame with exactly :data:`RECORD_COLUMNS` (unknown keys are an error, missing ones null)."""
    rows = list(rows)
    unknown = {k for r in rows for k in r} - RECORD_COLUMNS.keys()
    if unknown:
        raise ValueError(f"unknown record field(s): {sorted(unknown)}")
    data = {col: [r.get(col) for r in rows] for col in RECORD_COLUMNS}
    frame = pd.DataFrame(data, columns=list(RECORD_COLUMNS))
    return conform(frame)


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with every record column present (nulls when absent) and cast to its dtype."""
    out = pd.DataFrame(index=frame.index)
    for col, dtype in RECORD_COLUMNS.items():
        if col in frame.columns:
            series = frame[col]
            if dtype == "string":
                series = series.astype("object").where(series.notna(), None)
            out[col] = series.astype(dtype)
        else:
            out[col] = pd.Series(pd.NA if dtype != "float64" else float("nan"), index=frame.index, dtype=dtype)
    return out


def write_records(frame: pd.DataFrame, path: str | Path) -> None:
    """Write records as Parquet (``.parquet``/``.pq``) or CSV (anything else ending ``.csv``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(conform(frame), preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[b"stormguard.record_schema"] = str(RECORD_SCHEMA_VERSION).encode()
        pq.write_table(table.replace_schema_metadata(meta), path)
    elif suffix == ".csv":
        conform(frame).to_csv(path, index=False)
    else:
        raise ValueError(f"{path}: output must end in .parquet or .csv, not {suffix or 'nothing'!r}")


def read_records(path: str | Path) -> pd.DataFrame:
    """Read records written by :func:`write_records` (Parquet or CSV) back with the declared dtypes."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        frame = pd.read_parquet(path)
    elif suffix == ".csv":
        frame = pd.read_csv(path, dtype={c: ("string" if d == "string" else None) for c, d in RECORD_COLUMNS.items()
                                        if d == "string"}, keep_default_na=True)
    else:
        raise ValueError(f"{path}: records must be .parquet or .csv")
    missing = [c for c in ("ts", "src_ip") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a connection-record file (missing column(s) {missing})")
    return conform(frame)
