"""Many inputs (captures, logs, folders) → one table of connection records.

Files are recognised by content (:mod:`.sniff`), never by name, so a capture called ``access.log`` is still read
as a capture. Every reader reports what it skipped to one :class:`~stormguard.report.ReplayStats`; nothing here
raises on bad input: a file that cannot be read is refused with a reason and the run goes on.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stormguard.features.http.headers import finish_row
from stormguard.features.logs.split import TablePart, default_jobs, spill_root
from stormguard.features.sniff import describe_refusal, sniff

from stormguard.report import ReplayStats
from stormguard.schema import ColumnBatch, RecordWriter, records_table, table_frame
from stormguard.sink import BackgroundRecordWriter

if TYPE_CHECKING:
    import pandas as pd

#: Rows per Arrow batch: large enough for fast conversion, small enough to keep memory flat on huge inputs.
BATCH_ROWS = 65536
#: Rows per message to the background writer: smaller, so that parsing and writing overlap well.
PIPE_BATCH_ROWS = 1024

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
    """Yield the records of one file, whatever its kind; refuse (with a reason) what is not an input.
    (One process; :func:`replay_to_file` and :func:`replay` can use several.)"""
    for item in read_file_chunks(path, stats, log_format=log_format, log_fields=log_fields, progress=progress):
        if isinstance(item, ColumnBatch):
            yield from item.rows()
        else:
            yield item


def sniff_or_refuse(path: Path, stats: ReplayStats) -> str | None:
    """The input kind of ``path`` (:func:`~.sniff.sniff`), or ``None`` after counting and reporting the refusal
    (unreadable, or neither a capture nor a log)."""
    try:
        kind = sniff(path)
    except OSError as exc:
        stats.files_refused += 1
        stats.warn(str(path), f"cannot read: {exc.strerror or exc}", reason="unreadable file")
        return None
    if kind is None:
        stats.files_refused += 1
        stats.warn(str(path), f"refused: {describe_refusal(path)}", reason="not a capture or log")
    return kind


def read_file_chunks(path: Path, stats: ReplayStats, *, log_format: str = "auto",
                     log_fields: Mapping[str, str] | None = None, progress: Progress | None = None,
                     jobs: int = 1, spill_dir: str | None = None
                     ) -> Iterator[dict[str, Any] | ColumnBatch | TablePart]:
    """:func:`read_file`'s records, with column batches where the reader has that fast form (combined logs).
    Row dicts come out finished (:func:`finish_row`); column batches hold no header columns to derive. With
    ``jobs`` ≥ 3, a large capture is read by that many processes, each taking a share of the flows
    (:mod:`.capsplit`); with ``jobs`` > 1, a large line-oriented log is parsed by that many processes by byte range and comes as
    :class:`~.logsplit.TablePart` objects (Arrow tables, in file order; see :mod:`.logsplit`)."""
    kind = sniff_or_refuse(path, stats)
    if kind is None:
        return
    stats.files += 1
    rows: Iterable[dict[str, Any] | ColumnBatch]
    if kind in ("pcap", "pcapng"):
        from stormguard.features.capture.split import MIN_JOBS
        from stormguard.features.logs.split import worth_splitting

        if worth_splitting(path, jobs, min_jobs=MIN_JOBS):
            from stormguard.features.capture.split import read_capture_split

            rows = read_capture_split(path, stats, jobs=jobs, progress=progress)
        else:
            from stormguard.features.capture.reader import read_capture

            rows = read_capture(path, stats, progress=progress)
    elif kind == "har":
        from stormguard.features.logs.har import read_har

        rows = read_har(path, stats, progress=progress)
    else:
        from stormguard.features.logs.reader import detect_format, read_log_chunks
        from stormguard.features.logs.split import read_log_parts, worth_splitting

        fmt = "jsonl" if kind == "jsonl" and log_format == "auto" else log_format
        if worth_splitting(path, jobs):
            resolved = detect_format(path) if fmt == "auto" else fmt
            if resolved is not None:  # (undetectable: the sequential reader says so, once)
                yield from read_log_parts(path, stats, fmt=resolved, fields=log_fields, jobs=jobs,
                                          progress=progress, spill_dir=spill_dir)
                return
        rows = read_log_chunks(path, stats, fmt=fmt, fields=log_fields, progress=progress)
    try:
        for row in rows:
            yield row if isinstance(row, ColumnBatch) else finish_row(row)
    except Exception as exc:  # a reader bug must not cost the other inputs: keep what came before, say where
        stats.warn(str(path), f"internal error while reading ({type(exc).__name__}: {exc}); records before it "
                   "are kept, the rest of this file is skipped — please report this", reason="reader error")


def iter_records(inputs: Iterable[str | Path], stats: ReplayStats, *, log_format: str = "auto",
                 log_fields: Mapping[str, str] | None = None, show_progress: bool | None = None
                 ) -> Iterator[dict[str, Any]]:
    """Every record of every input, file by file (folders in sorted order), as the readers yield them."""
    files = expand_inputs(inputs, stats)
    with _progress_bar(files, show_progress) as update:
        for path in files:
            yield from read_file(path, stats, log_format=log_format, log_fields=log_fields, progress=update)


def iter_chunks(inputs: Iterable[str | Path], stats: ReplayStats, *, log_format: str = "auto",
                log_fields: Mapping[str, str] | None = None, show_progress: bool | None = None,
                size: int = BATCH_ROWS, jobs: int = 1, spill_dir: str | None = None
                ) -> Iterator[list[dict[str, Any]] | ColumnBatch | TablePart]:
    """Every record of every input in input order, as lists of up to ``size`` row dicts, as the column
    batches of readers that have them, or (``jobs`` > 1, large logs) as table parts parsed by worker processes."""
    files = expand_inputs(inputs, stats)
    pending: list[dict[str, Any]] = []
    with _progress_bar(files, show_progress) as update:
        for path in files:
            for item in read_file_chunks(path, stats, log_format=log_format, log_fields=log_fields,
                                         progress=update, jobs=jobs, spill_dir=spill_dir):
                if isinstance(item, ColumnBatch | TablePart):
                    if pending:
                        yield pending
                        pending = []
                    yield item
                    continue
                pending.append(item)
                if len(pending) >= size:
                    yield pending
                    pending = []
    if pending:
        yield pending


def replay_to_file(inputs: Iterable[str | Path], output: str | Path, stats: ReplayStats | None = None, *,
                   log_format: str = "auto", log_fields: Mapping[str, str] | None = None,
                   show_progress: bool | None = None, background: bool | None = None, jobs: int | None = None
                   ) -> int:
    """Stream every input's records into ``output`` (.parquet or .csv) in bounded batches; returns the row count.

    With ``background`` (default: when there is a second core) a forked writer process converts and writes
    while this one parses (:mod:`stormguard.sink`). Rows keep input order (files as given, folders sorted; within a capture, connections roughly by the time
    they end), so memory stays flat however large the input is. ``jobs`` (default: the CPUs available, see
    :func:`~.logsplit.default_jobs`) worker processes parse large logs; 1 reads everything in this process.
    """
    stats = stats if stats is not None else ReplayStats()
    if background is None:
        background = BackgroundRecordWriter.available()
    writer: RecordWriter | BackgroundRecordWriter = (
        BackgroundRecordWriter(output) if background else RecordWriter(output))
    jobs = default_jobs() if jobs is None else max(1, int(jobs))
    # workers hand their tables to the writer process through files in a private RAM folder (see .logsplit)
    # (the folder outlives the writer: it is removed only after the writer has read every file)
    with tempfile.TemporaryDirectory(prefix="stormguard-", dir=spill_root() if background else None) as spill, \
            writer:
        for chunk in iter_chunks(inputs, stats, log_format=log_format, log_fields=log_fields,
                                 show_progress=show_progress, size=PIPE_BATCH_ROWS if background else BATCH_ROWS,
                                 jobs=jobs, spill_dir=spill if background else None):
            if isinstance(chunk, TablePart):
                writer.write_part(chunk)
            elif isinstance(chunk, ColumnBatch):
                writer.write_columns(chunk)
            else:
                writer.write(chunk)
    stats.records = writer.rows
    return writer.rows


def replay(inputs: Iterable[str | Path], stats: ReplayStats | None = None, *, log_format: str = "auto",
           log_fields: Mapping[str, str] | None = None, show_progress: bool | None = None, jobs: int = 1
           ) -> pd.DataFrame:
    """Read every input into one record DataFrame (schema :data:`stormguard.schema.RECORD_COLUMNS`), by time."""
    import pyarrow as pa

    from stormguard.schema import arrow_schema

    stats = stats if stats is not None else ReplayStats()
    tables = [chunk.table() if isinstance(chunk, ColumnBatch | TablePart) else records_table(chunk)
              for chunk in iter_chunks(inputs, stats, log_format=log_format, log_fields=log_fields,
                                       show_progress=show_progress, jobs=jobs)]
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
