"""``stormguard replay --engine dask``: inputs → tasks on a Dask cluster → a partitioned Parquet record dataset.

Tasks
-----
Every input file is a task, read by the local engine's own code (:func:`~stormguard.features.replay.iter_chunks`
on that one file). A file of at least ``split_bytes`` is cut further:

* a line-oriented log (combined, common, iliou, JSON lines) into byte ranges that start and end on line
  boundaries (:func:`~stormguard.features.logs.lines.line_spans`), each parsed by
  :func:`~stormguard.features.logs.split.read_span_table`. Record ``line`` numbers stay absolute: a small
  counting task per range counts its lines, and the parse task of range *k* gets the sum over the ranges before
  it (a chain of additions on the cluster), so ranges are parsed in parallel and the numbers are those of a
  whole read;
* a pcap/pcapng capture into ``capture_shares`` flow shares (:class:`~stormguard.features.capture.reader.
  CaptureReader` with ``shard=(k, n)``: each task walks the whole file and keeps the flows whose addresses hash to
  its share). A capture cannot be cut at packet-record boundaries without cutting TCP connections, TLS
  handshakes and QUIC flights in two (a record would then differ from the local engine's); shares cost a header
  decode per packet of the other shares, and pay from three workers on (as the local ``--jobs`` split).

Each task writes its records to ``part-NNNNN.parquet`` (task order) in a temporary folder beside the output,
renamed into place when every task has finished, and returns its :class:`~stormguard.report.ReplayStats`; the
driver merges them in task order, so the summary, the skip counts and the located problems (file, line/offset)
are those of the local engine. A task that fails on the cluster (a worker killed, out of memory) is reported as
a problem naming its file and range, and the others' records are still written. Workers must see the inputs
under the same paths (a shared file system) and the output folder.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stormguard.report import ReplayStats

if TYPE_CHECKING:
    from distributed import Client

#: Files at least this large are split (logs into byte ranges, captures into flow shares).
SPLIT_BYTES = 16 << 20
#: Rows per record batch inside a task (bounds a worker's memory, whatever the file size).
TASK_BATCH_ROWS = 8192
#: Worker count from which a large capture is read in flow shares (see the module docstring).
MIN_SHARE_WORKERS = 3


@dataclass(frozen=True)
class ReadTask:
    """One unit of reading: a whole file, a byte range of a log (``span``, format ``fmt`` resolved) or a flow
    share of a capture (``share=(k, n)``)."""

    index: int
    path: str
    span: tuple[int, int] | None = None
    fmt: str | None = None
    share: tuple[int, int] | None = None

    def where(self) -> str:
        if self.span is not None:
            return f"bytes {self.span[0]}-{self.span[1]}"
        if self.share is not None:
            return f"flow share {self.share[0] + 1}/{self.share[1]}"
        return "whole file"


@dataclass
class TaskResult:
    index: int
    rows: int
    stats: ReplayStats


def plan_tasks(files: Iterable[Path], stats: ReplayStats, *, log_format: str = "auto",
               split_bytes: int = SPLIT_BYTES, capture_shares: int = 1
               ) -> tuple[list[ReadTask], dict[int, ReplayStats]]:
    """The read tasks for ``files`` (in order). What is not an input is refused here, with the local engine's
    report, and gets no task. A file that is split is counted as read here (its range and share tasks count only
    their lines, packets and records); a whole-file task counts its file itself. Returns the tasks and the
    refusals, keyed by the index of the task they come before (so reports keep the input order)."""
    from stormguard.features.logs.lines import line_spans
    from stormguard.features.logs.reader import detect_format
    from stormguard.features.replay import sniff_or_refuse

    tasks: list[ReadTask] = []

    def add(path: Path, **kw: Any) -> None:
        tasks.append(ReadTask(len(tasks), str(path.resolve()), **kw))

    refusals: dict[int, ReplayStats] = {}
    for path in files:
        own = ReplayStats()
        kind = sniff_or_refuse(path, own)  # refused here, as the local engine would: no task
        if kind is None:
            refusals.setdefault(len(tasks), ReplayStats()).merge(own)
            continue
        try:
            big = path.stat().st_size >= split_bytes
        except OSError:
            big = False  # (the task reports it)
        if not big:
            add(path)  # the task sniffs again and counts the file, as a local read does
            continue
        if kind in ("pcap", "pcapng") and capture_shares > 1:
            stats.files += 1
            for k in range(capture_shares):
                add(path, share=(k, capture_shares))
            continue
        if kind in ("log", "jsonl"):
            fmt = "jsonl" if kind == "jsonl" and log_format == "auto" else log_format
            resolved = detect_format(path) if fmt == "auto" else fmt
            if resolved is not None:  # (undetectable: the whole-file task says so, once)
                stats.files += 1
                for span in line_spans(path, split_bytes):
                    add(path, span=span, fmt=resolved)
                continue
        add(path)
    return tasks, refusals


def count_lines(path: str, span: tuple[int, int]) -> int:
    """Lines in bytes ``span`` of a log, as its readers count them (the same text stream)."""
    from stormguard.features.logs.lines import open_lines

    with open_lines(Path(path), span) as fh:
        return sum(1 for _ in fh)


def read_task(task: ReadTask, folder: str, log_format: str, log_fields: Mapping[str, str] | None,
              line_offset: int = 0) -> TaskResult:
    """Worker: read one task's records into ``folder/part-NNNNN.parquet`` (nothing when it has none)."""
    from stormguard.features.distributed.dataset import part_name

    from stormguard.schema import ColumnBatch, RecordWriter

    stats = ReplayStats()
    part = Path(folder) / part_name(task.index)
    with RecordWriter(part) as writer:
        if task.span is not None:
            import pyarrow as pa
            import pyarrow.compute as pc
            from stormguard.features.logs.split import iter_span_tables

            own = ReplayStats()
            for table in iter_span_tables(Path(task.path), task.span, task.fmt or "auto", dict(log_fields or {}),
                                          own, batch_rows=TASK_BATCH_ROWS):
                if line_offset and table.num_rows:
                    i = table.schema.get_field_index("line")
                    table = table.set_column(i, "line", pc.add(table.column(i), pa.scalar(line_offset, pa.int64())))
                writer.write_table(table)
            stats.merge(own, line_offset=line_offset)
        elif task.share is not None:
            _read_share(task, stats, writer)
        else:
            from stormguard.features.logs.split import TablePart
            from stormguard.features.replay import iter_chunks

            for chunk in iter_chunks([task.path], stats, log_format=log_format, log_fields=log_fields,
                                     show_progress=False, size=TASK_BATCH_ROWS, jobs=1):
                if isinstance(chunk, TablePart):  # (never with jobs=1)
                    writer.write_part(chunk)
                elif isinstance(chunk, ColumnBatch):
                    writer.write_columns(chunk)
                else:
                    writer.write(chunk)
        rows = writer.rows
    if rows == 0:
        part.unlink(missing_ok=True)
    stats.records = rows
    return TaskResult(task.index, rows, stats)


def _read_share(task: ReadTask, stats: ReplayStats, writer: Any) -> None:
    from stormguard.features.capture.reader import CaptureReader
    from stormguard.features.http.headers import finish_row

    path = Path(task.path)
    batch: list[dict[str, Any]] = []
    try:
        for row in CaptureReader(path, stats, shard=task.share):
            if row is None:
                continue
            batch.append(finish_row(row))
            if len(batch) >= TASK_BATCH_ROWS:
                writer.write(batch)
                batch = []
    except Exception as exc:  # a reader bug must not cost the other shares (as read_file_chunks)
        stats.warn(str(path), f"internal error while reading {task.where()} ({type(exc).__name__}: {exc}); "
                   "records before it are kept, the rest of this share is skipped — please report this",
                   reason="reader error")
    writer.write(batch)


def replay_dask(client: Client, inputs: Iterable[str | Path], output: str | Path,
                stats: ReplayStats | None = None, *, log_format: str = "auto",
                log_fields: Mapping[str, str] | None = None, split_bytes: int = SPLIT_BYTES,
                capture_shares: int | None = None, show_progress: bool | None = None) -> int:
    """Replay ``inputs`` on the cluster of ``client`` into the Parquet dataset folder ``output`` (replaced when it
    is a dataset written before; refused when it is anything else). Returns the record count; ``stats`` gets
    the merged counts and problems. ``capture_shares`` (default: the worker count from
    :data:`MIN_SHARE_WORKERS` workers on, else 1) flow shares per large capture."""
    from stormguard.features.distributed.cluster import as_completed_with_progress, worker_count
    from stormguard.features.distributed.dataset import check_dataset_target, part_name, partial_dataset
    from stormguard.features.replay import expand_inputs

    from stormguard.schema import RecordWriter

    stats = stats if stats is not None else ReplayStats()
    out = Path(output)
    check_dataset_target(out)  # before any work
    if capture_shares is None:
        workers = worker_count(client)
        capture_shares = workers if workers >= MIN_SHARE_WORKERS else 1
    files = expand_inputs(inputs, stats)
    tasks, refusals = plan_tasks(files, stats, log_format=log_format, split_bytes=split_bytes,
                       capture_shares=max(1, capture_shares))
    run = uuid.uuid4().hex[:12]  # task keys unique to this run (a long-lived scheduler may see many)
    with partial_dataset(out) as tmp:
        futures = []
        offset: Any = 0  # lines before the current range of the current file (an int, or a future)
        previous: str | None = None
        for task in tasks:
            if task.span is not None:
                if task.path != previous:
                    offset = 0
                futures.append(client.submit(read_task, task, str(tmp), log_format, log_fields, offset,
                                             pure=False, key=f"stormguard-read-{run}-{task.index}"))
                counted = client.submit(count_lines, task.path, task.span, pure=False, priority=10,
                                        key=f"stormguard-count-{run}-{task.index}")
                offset = client.submit(operator.add, offset, counted, pure=False, priority=10,
                                       key=f"stormguard-offset-{run}-{task.index}")
            else:
                futures.append(client.submit(read_task, task, str(tmp), log_format, log_fields,
                                             pure=False, key=f"stormguard-read-{run}-{task.index}"))
            previous = task.path
        results: dict[int, TaskResult] = {}
        failed: dict[int, BaseException] = {}
        by_key = {f.key: i for i, f in enumerate(futures)}
        for future in as_completed_with_progress(futures, "replay", show_progress):
            i = by_key[future.key]
            try:
                results[i] = future.result()
            except Exception as exc:  # the task (or its worker) failed: say which part is missing
                failed[i] = exc
            future.release()
        rows = 0
        for task in tasks:
            if task.index in refusals:
                stats.merge(refusals[task.index])
            if task.index in results:
                result = results[task.index]
                stats.merge(result.stats)
                rows += result.rows
            else:
                exc = failed[task.index]
                stats.warn(task.path, f"dask task for {task.where()} failed ({type(exc).__name__}: {exc}); "
                           "its records are missing from the output", reason="dask task failed")
        if len(tasks) in refusals:
            stats.merge(refusals[len(tasks)])
        stats.records = rows
        if rows == 0:  # an empty dataset still has the record schema
            with RecordWriter(tmp / part_name(0)):
                pass
    return rows
