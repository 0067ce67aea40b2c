"""Many inputs (captures, logs, folders) → one table of connection records.

Files are recognised by content (:mod:`.sniff`), never by name, so a capture called ``access.log`` is still read
as a capture. Every reader reports what it skipped to one :class:`~stormguard.report.ReplayStats`; nothing here
raises on bad input: a file that cannot be read is refused with a reason and the run goes on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stormguard.report import ReplayStats
from stormguard.schema import HEADER_NAME_SEP, RecordWriter, records_table, table_frame
from stormguard.sink import BackgroundRecordWriter

from .headers import header_entropy, header_order_fingerprint
from .sniff import describe_refusal, sniff

if TYPE_CHECKING:
    import pandas as pd

#: Rows per Arrow batch: large enough for fast conversion, small enough to keep memory flat on huge inputs.
BATCH_ROWS = 65536
#: Rows per message to the background writer: smaller, so that parsing and writing overlap well.
PIPE_BATCH_ROWS = 8192

Progress = Callable[[int], None]


def expand_inputs(inputs: Iterable[str | Path], stats: ReplayStats) -> list[Path]:
    """Files named directly plus every regular file under named folders (recursively, sorted, hidden skipped)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            stats.files_refused += 1
            stats.warn(str(path), "no such file or folder", reason="input not found")
    return files


def read_file(path: Path, stats: ReplayStats, *, log_format: str = "auto",
              log_fields: Mapping[str, str] | None = None, progress: Progress | None = None
              ) -> Iterator[dict[str, Any]]:
    """Yield the records of one file, whatever its kind; refuse (with a reason) what is not an input."""
    try:
        kind = sniff(path)
    except OSError as exc:
        stats.files_refused += 1
        stats.warn(str(path), f"cannot read: {exc.strerror or exc}", reason="unreadable file")
        return
    if kind is None:
        stats.files_refused += 1
        stats.warn(str(path), f"refused: {describe_refusal(path)}", reason="not a capture or log")
        return
    stats.files += 1
    if kind in ("pcap", "pcapng"):
        from .capture import read_capture

        rows = read_capture(path, stats, progress=progress)
    elif kind == "har":
        from .har import read_har

        rows = read_har(path, stats, progress=progress)
    else:
        from .logs import read_log

        fmt = "jsonl" if kind == "jsonl" and log_format == "auto" else log_format
        rows = read_log(path, stats, fmt=fmt, fields=log_fields, progress=progress)
    try:
        for row in rows:
            yield finish_row(row)
    except Exception as exc:  # a reader bug must not cost the other inputs: keep what came before, say where
        stats.warn(str(path), f"internal error while reading ({type(exc).__name__}: {exc}); records before it "
                   "are kept, the rest of this file is skipped — please report this", reason="reader error")


def finish_row(row: dict[str, Any]) -> dict[str, Any]:
    """Derive the header columns every source shares, so each is defined in one place."""
    names = row.get("header_names")
    if names:
        split = names.split(HEADER_NAME_SEP) if isinstance(names, str) else list(names)
        row["header_names"] = HEADER_NAME_SEP.join(split)
        if row.get("header_entropy") is None:
            row["header_entropy"] = header_entropy(split)
        if row.get("header_order") is None:
            row["header_order"] = header_order_fingerprint(split)
    return row


def iter_records(inputs: Iterable[str | Path], stats: ReplayStats, *, log_format: str = "auto",
                 log_fields: Mapping[str, str] | None = None, show_progress: bool | None = None
                 ) -> Iterator[dict[str, Any]]:
    """Every record of every input, file by file (folders in sorted order), as the readers yield them."""
    files = expand_inputs(inputs, stats)
    with _progress_bar(files, show_progress) as update:
        for path in files:
            yield from read_file(path, stats, log_format=log_format, log_fields=log_fields, progress=update)


def iter_batches(rows: Iterable[dict[str, Any]], size: int = BATCH_ROWS) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def replay_to_file(inputs: Iterable[str | Path], output: str | Path, stats: ReplayStats | None = None, *,
                   log_format: str = "auto", log_fields: Mapping[str, str] | None = None,
                   show_progress: bool | None = None, background: bool | None = None) -> int:
    """Stream every input's records into ``output`` (.parquet or .csv) in bounded batches; returns the row count.

    With ``background`` (default: when there is a second core) a forked writer process converts and writes
    while this one parses (:mod:`stormguard.sink`). Rows keep input order (files as given, folders sorted; within a capture, connections roughly by the time
    they end), so memory stays flat however large the input is.
    """
    stats = stats if stats is not None else ReplayStats()
    rows = iter_records(inputs, stats, log_format=log_format, log_fields=log_fields, show_progress=show_progress)
    if background is None:
        background = BackgroundRecordWriter.available()
    writer: RecordWriter | BackgroundRecordWriter = (
        BackgroundRecordWriter(output) if background else RecordWriter(output))
    with writer:
        for batch in iter_batches(rows, BATCH_ROWS if not background else PIPE_BATCH_ROWS):
            writer.write(batch)
    stats.records = writer.rows
    return writer.rows


def replay(inputs: Iterable[str | Path], stats: ReplayStats | None = None, *, log_format: str = "auto",
           log_fields: Mapping[str, str] | None = None, show_progress: bool | None = None) -> pd.DataFrame:
    """Read every input into one record DataFrame (schema :data:`stormguard.schema.RECORD_COLUMNS`), by time."""
    import pyarrow as pa

    from stormguard.schema import arrow_schema

    stats = stats if stats is not None else ReplayStats()
    rows = iter_records(inputs, stats, log_format=log_format, log_fields=log_fields, show_progress=show_progress)
    tables = [records_table(batch) for batch in iter_batches(rows)]
    table = pa.concat_tables(tables) if tables else arrow_schema().empty_table()
    frame = table_frame(table)
    if len(frame):
        frame = frame.sort_values(["ts", "source", "frame", "line"], kind="stable", na_position="last")
        frame = frame.reset_index(drop=True)
    stats.records = len(frame)
    return frame


@contextmanager
def _progress_bar(files: list[Path], show: bool | None) -> Iterator[Progress | None]:
    """A tqdm bar over input bytes on a terminal, for inputs large enough to be worth watching."""
    if show is None:
        show = sys.stderr.isatty()
    total = 0
    for f in files:
        try:
            total += f.stat().st_size
        except OSError:
            pass
    if not show or total <= 8 * 1024 * 1024:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, desc="replay", file=sys.stderr, leave=False)
    try:
        yield bar.update
    finally:
        bar.close()
