"""Large captures read by several processes, each taking a share of the flows.

A capture cannot be cut into byte ranges (a TCP connection, a fragmented datagram, a QUIC handshake spans the
whole file), but its flows are independent: ``n`` forked readers each walk every packet and keep the flows whose
addresses hash to their share (:class:`~.capture.CaptureReader` with ``shard=(k, n)``). Walking a packet that
belongs to another share costs only its header decode (about a third of the per-packet cost), so the split pays
from three readers on (:data:`MIN_JOBS`); on two CPUs ``stormguard replay`` reads a capture in one process.

The parent merges the shares back into one stream: every row carries the frame number at which its reader
released it, readers also report the frame they have reached every 1,024 packets, and rows are passed on in
(frame, share) order as soon as every reader is past that frame — so the order is deterministic, memory holds
only the rows of the lag between readers, and a share with no rows at all never holds the others back. Counts add
up to a whole read: packet-level figures come from share 0 only. The flow hash is CRC-32 of the
address bytes, the same in every process (the Dask engine reads shares on other machines).
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from stormguard.report import ReplayStats

#: Readers needed before a split pays: each reader walks every packet, so on two CPUs (with the writer process
#: beside them) two readers took the same wall time as one and 1.5x its CPU (bench/replay.py, 2026-11-27).
MIN_JOBS = 3
#: Rows per message from a reader (a mark without rows is sent every few marks).
BATCH_ROWS = 512
#: Marks (of 1,024 packets each) a reader may pass without telling the parent.
MARKS_PER_MESSAGE = 8
_END = 1 << 62  # "frame" of rows released at the end of the file


def read_capture_split(path: Path, stats: ReplayStats, *, jobs: int = 2,
                       progress: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """The records of :func:`~.capture.read_capture`, read by ``jobs`` forked processes (see module docstring).

    Counts and problems of every reader are merged into ``stats``. A reader that dies (killed, out of memory)
    is reported as a problem naming its share, and the others' records are still delivered."""
    ctx = mp.get_context("fork")
    conns: list[Connection] = []
    procs = []
    for k in range(jobs):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_reader_main, args=(send, str(path), k, jobs), name=f"stormguard-share-{k}",
                           daemon=True)
        proc.start()
        send.close()
        conns.append(recv)
        procs.append(proc)
    queues: list[deque[tuple[int, dict[str, Any]]]] = [deque() for _ in range(jobs)]
    reached = [0] * jobs  # per reader: every row it releases before this frame has arrived
    live = dict(enumerate(conns))
    try:
        while live:
            for conn in wait(list(live.values())):
                k = conns.index(conn)  # type: ignore[arg-type]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    stats.warn(path.name, f"reader of flow share {k + 1}/{jobs} ended without finishing; its "
                               "remaining connections are missing from the output", reason="capture reader died")
                    msg = ("done", None, 0)
                kind, payload, nbytes = msg
                if progress is not None and nbytes:
                    progress(nbytes)
                if kind == "rows":
                    complete, rows = payload
                    queues[k].extend(rows)
                    reached[k] = complete
                else:  # done
                    if payload is not None:
                        stats.merge(payload)
                    reached[k] = _END + 1
                    del live[k]
            yield from _release(queues, min(reached))
        yield from _release(queues, _END + 1)
    finally:
        for conn in conns:
            conn.close()
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _release(queues: list[deque[tuple[int, dict[str, Any]]]], upto: int) -> Iterator[dict[str, Any]]:
    """Rows released before frame ``upto`` by every reader, in (frame, share) order."""
    while True:
        best = -1
        best_frame = upto
        for k, q in enumerate(queues):
            if q and q[0][0] < best_frame:
                best, best_frame = k, q[0][0]
        if best < 0:
            return
        q = queues[best]
        while q and q[0][0] == best_frame:
            yield q.popleft()[1]


def _reader_main(conn: Connection, path: str, k: int, n: int) -> None:
    from stormguard.features.capture.reader import CaptureReader

    stats = ReplayStats()
    read = [0]

    def count(nbytes: int) -> None:
        read[0] += nbytes

    reader = CaptureReader(Path(path), stats, progress=count if k == 0 else None, shard=(k, n), marks=True)
    rows: list[tuple[int, dict[str, Any]]] = []
    quiet = 0

    def send(complete: int) -> None:  # every row released before frame ``complete`` has now been sent
        conn.send(("rows", (complete, rows[:]), read[0]))
        rows.clear()
        read[0] = 0

    try:
        for row in reader:
            at = reader.at
            frame = _END if at is None else at
            if row is None:
                quiet += 1
                if rows or quiet >= MARKS_PER_MESSAGE:
                    send(frame + 1)
                    quiet = 0
                continue
            rows.append((frame, row))
            if len(rows) >= BATCH_ROWS:
                send(frame)  # rows of this frame may still follow
        send(_END + 1)
        conn.send(("done", stats, read[0]))
    except BaseException as exc:  # report, so the parent can say what happened, then end
        try:
            stats.warn(Path(path).name, f"reader of flow share {k + 1}/{n} failed: {type(exc).__name__}: {exc}",
                       reason="capture reader died")
            conn.send(("done", stats, 0))
        except (OSError, ValueError):
            pass
    finally:
        conn.close()
