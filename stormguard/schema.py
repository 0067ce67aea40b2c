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

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas and pyarrow load lazily: the capture parser and the live server never need pandas
    import pandas as pd
    import pyarrow as pa

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
    "header_order": "string",  # our own header-order fingerprint (see stormguard.features.http.headers)
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


_ARROW_TYPES = {"float64": "float64", "string": "string", "Int64": "int64", "Int32": "int32", "Int16": "int16"}


def arrow_schema() -> pa.Schema:
    """The record schema as an Arrow schema (the on-disk form of Parquet outputs)."""
    import pyarrow as pa

    fields = [pa.field(col, getattr(pa, _ARROW_TYPES[dtype])()) for col, dtype in RECORD_COLUMNS.items()]
    return pa.schema(fields, metadata={b"stormguard.record_schema": str(RECORD_SCHEMA_VERSION).encode()})


def check_fields(rows: Iterable[Mapping[str, Any]]) -> set[str]:
    """The keys the rows use; ``ValueError`` naming any that is not a record column (a reader bug)."""
    used: set[str] = set().union(*rows)
    unknown = used - RECORD_COLUMNS.keys()
    if unknown:
        raise ValueError(f"unknown record field(s): {sorted(unknown)}")
    return used


def records_table(rows: list[Mapping[str, Any]]) -> pa.Table:
    """Rows → an Arrow table with exactly the record columns (absent keys are null).

    Built column by column, and only for the columns the rows use (the others are typed all-null arrays),
    which is about twice as fast as Arrow's row-wise converter. No pandas needed.
    """
    used = check_fields(rows)
    return columns_table({name: [r.get(name) for r in rows] for name in used}, len(rows))


def columns_table(columns: Mapping[str, Sequence[Any]], n: int) -> pa.Table:
    """Columns (record column → ``n`` values) → an Arrow record table; absent columns are null.

    A column holding a value of the wrong Python type (a reader handing over ``"443"`` for a port, a numpy
    scalar) is converted value by value instead (:func:`_coerce`), so one odd value never fails the batch.
    """
    import pyarrow as pa

    unknown = columns.keys() - RECORD_COLUMNS.keys()
    if unknown:
        raise ValueError(f"unknown record field(s): {sorted(unknown)}")
    schema = arrow_schema()
    arrays = []
    for f in schema:
        values = columns.get(f.name)
        if values is None:
            arrays.append(pa.nulls(n, f.type))
            continue
        try:
            arrays.append(pa.array(values, type=f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
            arrays.append(pa.array([_coerce(v, RECORD_COLUMNS[f.name]) for v in values], type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


class ColumnBatch:
    """Records of one reader held as columns: the fast form for readers that emit many similar rows (log lines).

    ``columns`` maps record columns to equally long lists (a reader's hot loop appends to them directly);
    ``constants`` are columns with one value for every row of the batch (the file name, the source kind), and
    the default of a row that does not name them. Rows that do not fit the usual shape (a salvaged log line with a
    ``note``) go through :meth:`add_row`, which adds any new column (earlier rows null) and turns a constant into
    a real column when a row differs from it; a reader appending directly must then pad such columns (with the
    constant's value, or null). ``sparse`` columns are left out of :meth:`rows` dicts when null, as a reader
    building dicts would.
    """

    __slots__ = ("columns", "constants", "defaults", "sparse")

    def __init__(self, names: Iterable[str], constants: Mapping[str, Any] | None = None,
                 sparse: Iterable[str] = ()) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in names}
        self.defaults: dict[str, Any] = dict(constants or {})
        self.constants: dict[str, Any] = dict(self.defaults)
        self.sparse = frozenset(sparse)

    def __len__(self) -> int:
        for values in self.columns.values():
            return len(values)
        return 0

    def add_row(self, row: Mapping[str, Any]) -> None:
        n = len(self)
        for name, value in list(self.constants.items()):
            if name in row and row[name] != value:
                self.columns[name] = [value] * n  # this row differs: the constant becomes a column
                del self.constants[name]
        for name in row.keys() - self.columns.keys() - self.constants.keys():
            self.columns[name] = [self.defaults.get(name)] * n
        defaults = self.defaults
        for name, values in self.columns.items():
            values.append(row.get(name, defaults.get(name)))

    def rows(self) -> list[dict[str, Any]]:
        """The batch as row dicts (the reader interface every consumer accepts)."""
        names = list(self.columns)
        consts = self.constants
        out = []
        sparse = [name for name in names if name in self.sparse]
        for values in zip(*self.columns.values(), strict=True):
            row = dict(zip(names, values, strict=True))
            for name in sparse:
                if row[name] is None:
                    del row[name]
            row.update(consts)
            out.append(row)
        return out

    def table(self) -> pa.Table:
        """The batch as an Arrow record table (:func:`columns_table`)."""
        n = len(self)
        columns: dict[str, Sequence[Any]] = dict(self.columns)
        for name, value in self.constants.items():
            columns[name] = [value] * n
        return columns_table(columns, n)

    def __getstate__(self) -> tuple[Any, ...]:
        return self.columns, self.constants, self.defaults, self.sparse

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.columns, self.constants, self.defaults, self.sparse = state


_INT_RANGE = {"Int16": 1 << 15, "Int32": 1 << 31, "Int64": 1 << 63}


def _coerce(value: Any, dtype: str) -> Any:
    """One value to the column's type, or null when it cannot be one (``"443"`` → 443, ``"x"`` → null)."""
    if value is None:
        return None
    try:
        if dtype == "string":
            return value if isinstance(value, str) else str(value)
        number = float(value)
        if number != number:  # NaN
            return None
        if dtype == "float64":
            return number
        if not number.is_integer() or abs(number) >= _INT_RANGE[dtype]:
            return None
        return int(number)
    except (TypeError, ValueError, OverflowError):
        return None


def _frame_from_rows(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    rows = list(rows)
    data = {col: [r.get(col) for r in rows] for col in RECORD_COLUMNS}
    return pd.DataFrame(data, columns=list(RECORD_COLUMNS))


def table_frame(table: pa.Table) -> pd.DataFrame:
    """An Arrow record table → a pandas DataFrame with the declared nullable dtypes."""
    import pandas as pd
    import pyarrow as pa

    mapping = {pa.string(): pd.StringDtype(), pa.large_string(): pd.StringDtype(), pa.int64(): pd.Int64Dtype(),
               pa.int32(): pd.Int32Dtype(), pa.int16(): pd.Int16Dtype()}
    return conform(table.to_pandas(types_mapper=mapping.get))


def records_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build a DataFrame with exactly :data:`RECORD_COLUMNS` (unknown keys are an error, missing ones null)."""
    return table_frame(records_table(list(rows)))


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with every record column present (nulls when absent) and cast to its dtype."""
    import pandas as pd

    out = pd.DataFrame(index=frame.index)
    for col, dtype in RECORD_COLUMNS.items():
        if col in frame.columns:
            series = frame[col]
            if str(series.dtype) == dtype:
                out[col] = series
                continue
            if dtype == "string":
                series = series.astype("object").where(series.notna(), None)
            elif dtype != "float64":
                series = pd.to_numeric(series, errors="coerce")
            out[col] = series.astype(dtype)
        else:
            out[col] = pd.Series(pd.NA if dtype != "float64" else float("nan"), index=frame.index, dtype=dtype)
    return out


def _output_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"{path}: output must end in .parquet or .csv, not {suffix or 'nothing'!r}")


class RecordWriter:
    """Stream record batches to Parquet or CSV without holding the whole output in memory.

    Use as a context manager; :meth:`write` takes a list of row dicts (one batch). The file is written to a
    temporary name and renamed into place on a clean close, so an interrupted run never leaves a half file
    under the requested name.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.kind = _output_kind(self.path)
        self.rows = 0
        self._tmp = self.path.with_name(f".{self.path.name}.partial")
        self._writer: Any = None
        self._schema = arrow_schema()

    def __enter__(self) -> RecordWriter:
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(self._tmp, self._schema)
        else:
            import pyarrow.csv as pacsv

            self._writer = pacsv.CSVWriter(self._tmp, self._schema)
        return self

    def write(self, rows: list[Mapping[str, Any]]) -> None:
        if rows:
            self.write_table(records_table(rows))

    def write_columns(self, batch: ColumnBatch) -> None:
        if len(batch):
            self.write_table(batch.table())

    def write_part(self, part: Any) -> None:
        """A :class:`stormguard.features.logs.split.TablePart` (records parsed by a worker process)."""
        self.write_table(part.table())

    def write_table(self, table: pa.Table) -> None:
        self._writer.write_table(table)
        self.rows += table.num_rows

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._writer.close()
        if exc_type is None:
            self._tmp.replace(self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def write_records(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a record DataFrame as Parquet (``.parquet``/``.pq``) or CSV (``.csv``)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(conform(frame), schema=arrow_schema(), preserve_index=False)
    with RecordWriter(path) as writer:
        writer.write_table(table)


def read_records(path: str | Path) -> pd.DataFrame:
    """Read records written by :func:`write_records` or ``stormguard replay`` back with the declared dtypes."""
    import pandas as pd

    path = Path(path)
    kind = _output_kind(path) if path.suffix.lower() in {".parquet", ".pq", ".csv"} else None
    if kind == "parquet":
        frame = pd.read_parquet(path)
    elif kind == "csv":
        strings = {c: "string" for c, d in RECORD_COLUMNS.items() if d == "string"}
        frame = pd.read_csv(path, dtype=strings, keep_default_na=True)
    else:
        raise ValueError(f"{path}: records must be .parquet or .csv")
    missing = [c for c in ("ts", "src_ip") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a connection-record file (missing column(s) {missing})")
    return conform(frame)
