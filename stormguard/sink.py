"""Write record batches from a helper process, so that output overlaps with parsing.

Parsing a capture is one core's work; turning rows into Arrow columns and Parquet pages (and, before that,
importing pyarrow — which imports pandas — about half a second) is another's. On a machine with a second core,
:class:`BackgroundRecordWriter` forks a writer process before those libraries are loaded: the parent parses and
sends each batch down a pipe (pickled: ``marshal`` would be faster but silently turns numpy scalars into bytes
through the buffer protocol), the child converts and writes with :class:`stormguard.schema.RecordWriter`. The pipe is the bound on memory: when the writer falls
behind, the parser waits.

Failure is loud and loses nothing silently: if the child cannot write (disk full, bad path), the parent's next
send or the final close raises :class:`SinkError` with the child's message, and the partial output is removed.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stormguard.features.logs.split import TablePart
    from stormguard.schema import ColumnBatch

_ROWS = b"R"
_COLUMNS = b"C"
_PART = b"P"
_END = b"E"
_ABORT = b"A"


class SinkError(RuntimeError):
    """The writer process failed; the message says why."""


def _paused_gc(fn: Any, arg: Any) -> bytes:
    """``fn(arg)`` without cyclic garbage collection: encoding creates thousands of short-lived tuples, and each
    collection they trigger would walk every live object of the parser (its open connections)."""
    if not gc.isenabled():
        return fn(arg)
    gc.disable()
    try:
        return fn(arg)
    finally:
        gc.enable()


def _encode(rows: list[Mapping[str, Any]]) -> bytes:
    """Rows as runs of (key names, value tuples): rows from one reader share their keys, so the names travel once
    per run, pickling tuples is about twice as fast as dicts, and the child gets its columns with one ``zip``."""
    runs: list[tuple[tuple[str, ...], list[tuple[Any, ...]]]] = []
    keys: tuple[str, ...] | None = None
    values: list[tuple[Any, ...]] = []
    for row in rows:
        k = tuple(row)
        if k != keys:
            values = []
            runs.append((k, values))
            keys = k
        values.append(tuple(row.values()))
    return _ROWS + pickle.dumps(runs, protocol=pickle.HIGHEST_PROTOCOL)


def _decode_tables(blob: bytes) -> list[Any]:
    """One Arrow table per message: runs are stitched column by column (a capture alternates key sets often)."""
    from stormguard.schema import columns_table

    if blob[:1] in (_COLUMNS, _PART):  # a ColumnBatch or a features.logsplit.TablePart: both know their table
        item = pickle.loads(blob[1:])
        table = item.table()
        return [table] if table.num_rows else []
    runs = pickle.loads(blob[1:])
    names = {name for keys, _ in runs for name in keys}
    columns: dict[str, list[Any]] = {name: [] for name in names}
    n = 0
    for keys, values in runs:
        count = len(values)
        if not count:
            continue
        given = dict(zip(keys, zip(*values, strict=True), strict=True))
        for name, column in columns.items():
            part = given.get(name)
            column.extend(part if part is not None else (None,) * count)
        n += count
    return [columns_table(columns, n)] if n else []


def _writer_main(conn: Connection, path: str) -> None:
    lean_arrow()  # this process only turns rows into Arrow and Parquet
    from stormguard.schema import RecordWriter, records_table

    writer = RecordWriter(path)
    try:
        with writer:
            # Warm up now, while the parent parses: the first Arrow conversion costs a few tenths of a second of
            # imports; done lazily it would land after a capture's last batch (few rows, all at the end).
            records_table([])
            while True:
                blob = conn.recv_bytes()
                kind = blob[:1]
                if kind == _END:
                    break
                if kind == _ABORT:
                    raise SinkError("aborted by the parser")
                for table in _decode_tables(blob):
                    writer.write_table(table)
    except SinkError:
        conn.send(("aborted", 0))
        return
    except BaseException as exc:  # report anything, then let the parent raise it
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        return
    conn.send(("ok", writer.rows))


class _Hidden:
    """A meta-path finder that makes importing the named top-level packages fail."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in self.names:
            raise ImportError(f"{name} is not used by this stormguard writer process")
        return None


def lean_arrow() -> None:
    """Import pyarrow for a process that only turns Python values into Arrow/Parquet: without pandas (pyarrow
    imports it on its first conversion when it can, ~0.5 s) and without numpy while pyarrow loads (~0.13 s of
    CPU; pyarrow works without it). numpy may still load later (a pickled numpy scalar needs it); pandas never."""
    import sys

    if "pyarrow" in sys.modules:
        return
    hidden = _Hidden(set() if "numpy" in sys.modules else {"numpy"})
    if "pandas" not in sys.modules:
        hidden.names.add("pandas")
    sys.meta_path.insert(0, hidden)
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    finally:
        hidden.names.discard("numpy")


class BackgroundRecordWriter:
    """Context manager with the :class:`~stormguard.schema.RecordWriter` interface, writing in a child process."""

    def __init__(self, path: str | Path) -> None:
        from stormguard.schema import _output_kind

        self.path = Path(path)
        _output_kind(self.path)  # refuse a bad suffix here, not in the child
        self.rows = 0
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe(duplex=True)
        self._child_conn = child
        self._proc = ctx.Process(target=_writer_main, args=(child, str(self.path)), name="stormguard-writer",
                                 daemon=True)

    @staticmethod
    def available() -> bool:
        """Worth it (and possible): a second core and the fork start method."""
        return (os.cpu_count() or 1) > 1 and "fork" in mp.get_all_start_methods()

    def __enter__(self) -> BackgroundRecordWriter:
        self._proc.start()
        self._child_conn.close()
        return self

    def write(self, rows: list[Mapping[str, Any]]) -> None:
        if rows:
            self._send(_paused_gc(_encode, rows))

    def write_columns(self, batch: ColumnBatch) -> None:
        """A column batch travels as it is: lists of plain values pickle fast and need no reshaping."""
        if len(batch):
            self._send(_COLUMNS + pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))

    def write_part(self, part: TablePart) -> None:
        self._send(_PART + pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL))

    def _send(self, blob: bytes) -> None:
        try:
            self._conn.send_bytes(blob)
        except (BrokenPipeError, ConnectionResetError, EOFError) as exc:
            raise SinkError(self._child_failure() or f"writer process gone ({exc})") from None

    def _child_failure(self) -> str | None:
        try:
            if self._conn.poll(5):
                status, detail = self._conn.recv()
                if status == "error":
                    return f"writing {self.path} failed: {detail}"
        except (EOFError, OSError):
            pass
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self._conn.send_bytes(_END if exc_type is None else _ABORT)
            status, detail = self._conn.recv()
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            status, detail = "error", "writer process ended unexpectedly"
        finally:
            self._proc.join(30)
            if self._proc.is_alive():
                self._proc.kill()
            self._conn.close()
        if exc_type is not None:
            return
        if status != "ok":
            raise SinkError(f"writing {self.path} failed: {detail}")
        self.rows = int(detail)
