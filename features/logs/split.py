"""Large line-oriented logs read by several processes at once.

Every access-log line stands alone, so a big log splits into byte ranges on line boundaries
(:func:`~.logs.line_spans`). Forked workers parse the ranges with the very same readers (``span=``) and turn their
records into Arrow tables; the caller gets the tables back in file order as :class:`TablePart` objects, and the
workers' counts and located problems are merged into the caller's :class:`~stormguard.report.ReplayStats` with
absolute line numbers, exactly as if one process had read the file. At most ``jobs + 1`` ranges are in flight, so
memory stays bounded however large the log is.

Worth it for logs of tens of megabytes on a machine with a second core (:func:`worth_splitting`); on one core,
without ``fork``, for small files, or when the format cannot be detected up front, the caller reads sequentially.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stormguard.report import ReplayStats

if TYPE_CHECKING:
    import re

    import pyarrow as pa

#: Bytes per range handed to a worker (about 35,000 combined-format lines).
SPAN_BYTES = 8 << 20
#: Logs smaller than this are read by one process: forking and importing Arrow would not pay off.
MIN_BYTES = 24 << 20


def spill_root() -> str | None:
    """A RAM-backed folder for spill files when the system has one with room (``/dev/shm`` with 1 GB free; a
    container's default 64 MB is not enough), else ``None`` (the temp folder)."""
    import shutil

    try:
        if os.access("/dev/shm", os.W_OK) and shutil.disk_usage("/dev/shm").free >= 1 << 30:
            return "/dev/shm"
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class TablePart:
    """Records of one range of a log as an Arrow IPC stream — in memory (``ipc``) or spilled to a file
    (``spill``, which :meth:`table` reads and removes) — and the lines of the file before the range."""

    ipc: bytes | None
    spill: str | None
    line_offset: int
    rows: int

    def table(self) -> pa.Table:
        """The records with absolute line numbers (a spill file is memory-mapped, then removed)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.spill is not None:
            with pa.memory_map(self.spill) as source:
                table = pa.ipc.open_stream(source).read_all()
            os.unlink(self.spill)
        else:
            table = pa.ipc.open_stream(self.ipc).read_all()
        if self.line_offset and table.num_rows:
            i = table.schema.get_field_index("line")
            table = table.set_column(i, "line", pc.add(table.column(i), pa.scalar(self.line_offset, pa.int64())))
        return table


def default_jobs() -> int:
    """Worker processes for a split read: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def worth_splitting(path: Path, jobs: int, min_bytes: int | None = None, min_jobs: int = 2) -> bool:
    """Split ``path`` over ``jobs`` processes? (At least ``min_jobs`` jobs, ``fork`` available, at least
    ``min_bytes``, default :data:`MIN_BYTES`.)"""
    if jobs < min_jobs or "fork" not in mp.get_all_start_methods():
        return False
    try:
        return path.stat().st_size >= (MIN_BYTES if min_bytes is None else min_bytes)
    except OSError:
        return False


def read_log_parts(path: Path, stats: ReplayStats, *, fmt: str | re.Pattern[str],
                   fields: Mapping[str, str] | None = None, jobs: int = 2, span_bytes: int | None = None,
                   progress: Any = None, spill_dir: str | Path | None = None) -> Iterator[TablePart]:
    """The records of the log at ``path`` (format already resolved, not ``"auto"``) as table parts in file
    order, parsed by ``jobs`` forked workers. ``progress(n)`` gets the bytes of each range as it is delivered.

    With ``spill_dir`` (best on a RAM file system), workers write their tables there instead of sending them
    through a pipe (one copy instead of four, for a consumer in yet another process); the consumer's
    :meth:`TablePart.table` removes each file, and no more than ``2 * jobs + 2`` unread files are left
    waiting: past that, this generator waits for the consumer. The caller owns (and finally removes) the folder.
    """
    from stormguard.features.logs.lines import line_spans

    spans = line_spans(path, SPAN_BYTES if span_bytes is None else span_bytes)
    ctx = mp.get_context("fork")
    pending: deque[tuple[tuple[int, int], Any]] = deque()
    offset = 0
    with ctx.Pool(jobs, initializer=_worker_init) as pool:
        todo = iter(spans)
        spill = None if spill_dir is None else str(spill_dir)

        def submit(span: tuple[int, int]) -> None:
            target = None if spill is None else os.path.join(spill, f"part-{os.getpid()}-{span[0]}.arrow")
            pending.append((span, pool.apply_async(_read_span, ((str(path), span, fmt, dict(fields or {}),
                                                                  target),))))

        for span in todo:
            submit(span)
            if len(pending) > jobs:
                break
        while pending:
            span, result = pending.popleft()
            if spill is not None:
                _wait_for_consumer(spill, 2 * jobs + 2)
            nxt = next(todo, None)
            if nxt is not None:
                submit(nxt)
            ipc, target, rows, part_stats = result.get()
            stats.merge(part_stats, line_offset=offset)
            if rows:
                yield TablePart(ipc, target, offset, rows)
            elif target is not None:
                os.unlink(target)
            offset += part_stats.lines
            if progress is not None:
                progress(span[1] - span[0])


def _wait_for_consumer(folder: str, limit: int) -> None:
    import time

    waited = 0.0
    while waited < 600.0:  # the consumer removes what it has read
        try:
            if len(os.listdir(folder)) <= limit:
                return
        except OSError:  # no folder: parts come through the pipe
            return
        time.sleep(0.005)
        waited += 0.005


def _worker_init() -> None:
    from stormguard.sink import lean_arrow

    lean_arrow()  # Arrow conversion only: no pandas (nor numpy while pyarrow loads) in every worker


def iter_span_tables(path: Path, span: tuple[int, int], fmt: str | re.Pattern[str], fields: Mapping[str, str],
                     stats: ReplayStats, batch_rows: int = 65536) -> Iterator[pa.Table]:
    """The records of the lines in bytes ``span`` of the log at ``path`` (format resolved, not ``"auto"``) as Arrow
    record tables of up to about ``batch_rows`` rows, in line order; line numbers (in the tables and in ``stats``)
    count from the span's first line. A reader error is reported (with the range) and ends the range."""
    from stormguard.features.http.headers import finish_row
    from stormguard.features.logs.reader import read_log_chunks

    from stormguard.schema import ColumnBatch, records_table

    rows: list[dict[str, Any]] = []
    try:
        for item in read_log_chunks(path, stats, fmt=fmt, fields=fields, span=span):
            if isinstance(item, ColumnBatch):
                if rows:
                    yield records_table(rows)
                    rows = []
                yield item.table()
            else:
                rows.append(finish_row(item))
                if len(rows) >= batch_rows:
                    yield records_table(rows)
                    rows = []
    except Exception as exc:  # a reader bug: keep what was read, say where
        stats.warn(path.name, f"internal error while reading bytes {span[0]}-{span[1]} ({type(exc).__name__}: "
                   f"{exc}); records before it are kept, the rest of this range is skipped — please report this",
                   offset=span[0], reason="reader error")
    if rows:
        yield records_table(rows)


def read_span_table(path: Path, span: tuple[int, int], fmt: str | re.Pattern[str], fields: Mapping[str, str],
                    stats: ReplayStats) -> pa.Table:
    """:func:`iter_span_tables` as one table."""
    import pyarrow as pa

    from stormguard.schema import arrow_schema

    tables = list(iter_span_tables(path, span, fmt, fields, stats))
    return pa.concat_tables(tables) if tables else arrow_schema().empty_table()


def _read_span(task: tuple[str, tuple[int, int], Any, dict[str, str], str | None]
               ) -> tuple[bytes | None, str | None, int, ReplayStats]:
    """Worker: one range → (Arrow IPC stream of its records, or the file it was written to; row count; its
    stats with span-relative line numbers)."""
    import pyarrow as pa

    name, span, fmt, fields, target = task
    stats = ReplayStats()
    table = read_span_table(Path(name), span, fmt, fields, stats)
    if target is not None:
        try:
            with pa.OSFile(target, "wb") as out, pa.ipc.new_stream(out, table.schema) as writer:
                writer.write_table(table)
            return None, target, table.num_rows, stats
        except OSError:  # no room in the spill folder: send this part through the pipe instead
            try:
                os.unlink(target)
            except OSError:
                pass
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes(), None, table.num_rows, stats
