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
* a pcap/pcapng capture into byte spans at packet-record (pcap) or block (pcapng) boundaries
  (:func:`~stormguard.features.capture.files.plan_spans`, a task that walks the record headers), one routing
  task per span that sends each packet to the flow share its addresses hash to
  (:func:`~stormguard.features.capture.routed.route_span`, packet files in a scratch folder beside the output),
  then one task per flow share that reads its packets of every span in order
  (:func:`~stormguard.features.capture.routed.read_routed`). Records of a flow depend on the whole flow (a TCP
  connection, a TLS handshake, a QUIC flight can run across spans), so they are made after this shuffle by
  flow, and each share's reader sees the other shares' packets as ticks: the records and counts are a whole
  read's (``tests/test_capture_spans.py``). The scratch folder holds about the capture's size while it runs.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stormguard.features.capture.files import Span
from stormguard.features.capture.routed import RoutedSpan, merge_unused

from stormguard.report import ReplayStats

if TYPE_CHECKING:
    from distributed import Client

#: Files at least this large are split (logs into byte ranges, captures into spans routed to flow shares).
SPLIT_BYTES = 16 << 20
#: Rows per record batch inside a task (bounds a worker's memory, whatever the file size).
TASK_BATCH_ROWS = 8192


@dataclass(frozen=True)
class ReadTask:
    """One unit of reading: a whole file; a byte range of a log (``span``, format ``fmt`` resolved); a span of a
    capture to route to flow shares (``capture_span``, number ``span_index``); or one flow share of a routed
    capture (``share=(k, n)`` of its ``spans`` spans). Routing tasks and share tasks of a capture share the
    ``scratch`` folder."""

    index: int
    path: str
    span: tuple[int, int] | None = None
    fmt: str | None = None
    capture_span: Span | None = None
    span_index: int = 0
    shares: int = 1
    share: tuple[int, int] | None = None
    spans: int = 0
    kind: str | None = None
    scratch: str | None = None

    def where(self) -> str:
        if self.span is not None:
            return f"bytes {self.span[0]}-{self.span[1]}"
        if self.capture_span is not None:
            stop = self.capture_span.stop
            return f"bytes {self.capture_span.start}-{'end' if stop is None else stop} (routing to flow shares)"
        if self.share is not None:
            return f"flow share {self.share[0] + 1}/{self.share[1]}"
        return "whole file"


@dataclass
class TaskResult:
    index: int
    rows: int
    stats: ReplayStats
    routed: RoutedSpan | None = None  # a routing task's decoder figures (counted once per capture, see merge)
    unused: int | None = None  # share 0 of a routed capture: packets sent to every share that stayed unusable


def plan_tasks(files: Iterable[Path], stats: ReplayStats, *, log_format: str = "auto",
               split_bytes: int = SPLIT_BYTES, capture_shares: int = 1, scratch: Path | None = None,
               plan_captures: Callable[[list[tuple[str, str]]], list[list[Span]]] | None = None
               ) -> tuple[list[ReadTask], dict[int, ReplayStats]]:
    """The read tasks for ``files`` (in order). What is not an input is refused here, with the local engine's
    report, and gets no task. A file that is split is counted as read here (its range, routing and share tasks
    count only their lines, packets and records); a whole-file task counts its file itself. Captures of at least
    ``split_bytes`` are routed to ``capture_shares`` flow shares (when more than one) through ``scratch``, cut by
    ``plan_captures`` (``(path, kind)`` pairs → their spans; default: here). Returns the tasks and the refusals,
    keyed by the index of the task they come before (so reports keep the input order)."""
    from stormguard.features.capture.files import plan_spans
    from stormguard.features.logs.lines import line_spans
    from stormguard.features.logs.reader import detect_format
    from stormguard.features.replay import sniff_or_refuse

    inputs: list[tuple[Path, str | None, bool, ReplayStats]] = []
    for path in files:
        own = ReplayStats()
        kind = sniff_or_refuse(path, own)  # refused here, as the local engine would: no task
        big = False
        if kind is not None:
            try:
                big = path.stat().st_size >= split_bytes
            except OSError:
                big = False  # (the task reports it)
        inputs.append((path, kind, big, own))
    routed = [(str(path.resolve()), kind) for path, kind, big, _ in inputs
              if big and kind in ("pcap", "pcapng") and capture_shares > 1 and scratch is not None]
    if plan_captures is None:
        def plan_captures(pairs: list[tuple[str, str]]) -> list[list[Span]]:
            return [plan_spans(p, k, split_bytes) for p, k in pairs]
    spans_of = dict(zip((p for p, _ in routed), plan_captures(routed), strict=True)) if routed else {}

    tasks: list[ReadTask] = []

    def add(path: Path, **kw: Any) -> None:
        tasks.append(ReadTask(len(tasks), str(path.resolve()), **kw))

    refusals: dict[int, ReplayStats] = {}
    for path, kind, big, own in inputs:
        if kind is None:
            refusals.setdefault(len(tasks), ReplayStats()).merge(own)
            continue
        if not big:
            add(path)  # the task sniffs again and counts the file, as a local read does
            continue
        spans = spans_of.get(str(path.resolve()), [])
        if len(spans) > 1 and scratch is not None:
            stats.files += 1
            folder = str(scratch / f"file-{len(tasks):05d}")
            for i, cspan in enumerate(spans):
                add(path, capture_span=cspan, span_index=i, shares=capture_shares, kind=kind, scratch=folder)
            for k in range(capture_shares):
                add(path, share=(k, capture_shares), spans=len(spans), kind=kind, scratch=folder)
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
              line_offset: int = 0, after: Any = None) -> TaskResult:
    """Worker: read one task's records into ``folder/part-NNNNN.parquet`` (nothing when it has none); a routing
    task writes packet files to its scratch folder instead. ``after``: what must be done first (a share task
    gets its capture's routing results, so the cluster runs it after them)."""
    from stormguard.features.distributed.dataset import part_name

    from stormguard.schema import ColumnBatch, RecordWriter

    if task.capture_span is not None:
        from stormguard.features.capture.routed import route_span

        assert task.kind is not None and task.scratch is not None
        Path(task.scratch).mkdir(parents=True, exist_ok=True)
        routed = route_span(task.path, task.kind, task.capture_span, task.span_index, task.shares,
                            task.scratch)
        return TaskResult(task.index, 0, routed.stats, routed=routed)
    stats = ReplayStats()
    unused = None
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
            unused = _read_share(task, stats, writer)
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
    return TaskResult(task.index, rows, stats, unused=unused)


def _read_share(task: ReadTask, stats: ReplayStats, writer: Any) -> int | None:
    """One flow share of a routed capture into ``writer``; returns share 0's count of unusable packets."""
    from stormguard.features.capture.routed import read_routed, unused_count
    from stormguard.features.http.headers import finish_row

    assert task.share is not None and task.kind is not None and task.scratch is not None
    k, n = task.share
    packet_stats = ReplayStats() if k == 0 else None
    batch: list[dict[str, Any]] = []
    for row in read_routed(task.path, task.kind, task.scratch, task.spans, k, n, stats, packet_stats):
        batch.append(finish_row(row))
        if len(batch) >= TASK_BATCH_ROWS:
            writer.write(batch)
            batch = []
    writer.write(batch)
    return unused_count(packet_stats) if packet_stats is not None else None


def replay_dask(client: Client, inputs: Iterable[str | Path], output: str | Path,
                stats: ReplayStats | None = None, *, log_format: str = "auto",
                log_fields: Mapping[str, str] | None = None, split_bytes: int = SPLIT_BYTES,
                capture_shares: int | None = None, show_progress: bool | None = None) -> int:
    """Replay ``inputs`` on the cluster of ``client`` into the Parquet dataset folder ``output`` (replaced when it
    is a dataset written before; refused when it is anything else). Returns the record count; ``stats`` gets
    the merged counts and problems. ``capture_shares``: flow shares per large capture (default: the worker
    count; 1 reads every capture as a whole-file task)."""
    import shutil

    from stormguard.features.capture.files import plan_spans
    from stormguard.features.distributed.cluster import as_completed_with_progress, worker_count
    from stormguard.features.distributed.dataset import check_dataset_target, part_name, partial_dataset
    from stormguard.features.replay import expand_inputs

    from stormguard.schema import RecordWriter

    stats = stats if stats is not None else ReplayStats()
    out = Path(output)
    check_dataset_target(out)  # before any work
    if capture_shares is None:
        capture_shares = worker_count(client)
    run = uuid.uuid4().hex[:12]  # task keys unique to this run (a long-lived scheduler may see many)

    def plan_captures(pairs: list[tuple[str, str]]) -> list[list[Span]]:
        """Each large capture's spans, planned on the cluster (a walk over its record headers), all at once."""
        planned = [client.submit(plan_spans, path, kind, split_bytes, pure=False, key=f"stormguard-plan-{run}-{i}")
                   for i, (path, kind) in enumerate(pairs)]
        spans = []
        for future in planned:
            try:
                spans.append(future.result())
            except Exception:  # cannot plan (unreadable, a worker lost): read it whole, the task reports why
                spans.append([Span(0, None)])
        return spans

    files = expand_inputs(inputs, stats)
    scratch = out.with_name(f".{out.name}.routing")
    shutil.rmtree(scratch, ignore_errors=True)
    tasks, refusals = plan_tasks(files, stats, log_format=log_format, split_bytes=split_bytes,
                                 capture_shares=max(1, capture_shares), scratch=scratch, plan_captures=plan_captures)
    with partial_dataset(out) as tmp:
        try:
            futures = []
            offset: Any = 0  # lines before the current range of the current file (an int, or a future)
            previous: str | None = None
            routing: dict[str, list[Any]] = {}  # a routed capture's scratch folder -> its routing tasks
            for task in tasks:
                key = f"stormguard-read-{run}-{task.index}"
                if task.span is not None:
                    if task.path != previous:
                        offset = 0
                    futures.append(client.submit(read_task, task, str(tmp), log_format, log_fields, offset,
                                                 pure=False, key=key))
                    counted = client.submit(count_lines, task.path, task.span, pure=False, priority=10,
                                            key=f"stormguard-count-{run}-{task.index}")
                    offset = client.submit(operator.add, offset, counted, pure=False, priority=10,
                                           key=f"stormguard-offset-{run}-{task.index}")
                elif task.share is not None:  # after every routing task of its capture
                    futures.append(client.submit(read_task, task, str(tmp), log_format, log_fields, 0,
                                                 routing[task.scratch or ""], pure=False, key=key))
                else:
                    futures.append(client.submit(read_task, task, str(tmp), log_format, log_fields, pure=False,
                                                 key=key))
                    if task.capture_span is not None:
                        routing.setdefault(task.scratch or "", []).append(futures[-1])
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
            routed: dict[str, list[RoutedSpan]] = {}
            for task in tasks:
                if task.index in refusals:
                    stats.merge(refusals[task.index])
                result = results.get(task.index)
                if task.share is not None and task.share[0] == 0:  # a routed capture's packet counts, once
                    unused = result.unused if result is not None and result.unused is not None else 0
                    merge_unused(routed.get(task.scratch or "", []), Path(task.path).name, stats, unused)
                if result is not None:
                    stats.merge(result.stats)
                    rows += result.rows
                    if result.routed is not None:
                        routed.setdefault(task.scratch or "", []).append(result.routed)
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
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return rows
