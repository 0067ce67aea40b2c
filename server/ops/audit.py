"""JSON-lines audit log of every refusal and eviction, written off the hot path.

``record()`` only appends to a bounded deque (no I/O, no lock, O(1)); a background task drains it in batches and
writes them in a worker thread. When the queue is full the record is dropped and counted — a storm must not turn
the audit log into the thing that takes the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

from stormguard.server.tasks import cancel_tasks


class AuditLog:
    """Bounded, asynchronous JSON-lines writer; ``path=None`` keeps records only for counting (disabled)."""

    def __init__(self, path: str | None, *, max_queue: int = 10000, flush_interval: float = 0.2,
                 on_drop: Callable[[], None] | None = None) -> None:
        self.path = path
        self.max_queue = max_queue
        self.flush_interval = flush_interval
        self.on_drop = on_drop or (lambda: None)
        self._queue: deque[dict[str, Any]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None  # the batch a worker thread is writing
        self._lock = threading.Lock()  # the drainer's thread and the final write never interleave
        self._file: TextIO | None = None
        self.written = 0
        self._warned = False

    def record(self, *, client: str, layer: str, reason: str, action: str, tier: str | None = None,
               score: float | None = None, **extra: Any) -> None:
        """Queue one record (time, client, tier, score, layer, reason, action); never blocks."""
        if self.path is None:
            return
        if len(self._queue) >= self.max_queue:
            self.on_drop()
            return
        rec = {"time": time.time(), "client": client, "tier": tier, "score": score, "layer": layer,
               "reason": reason, "action": action}
        if extra:
            rec.update(extra)
        self._queue.append(rec)

    def start(self) -> None:
        if self.path is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stormguard-audit")

    async def stop(self) -> None:
        """Stop the drainer and write what is left (called at lifespan shutdown)."""
        await cancel_tasks(self._task)
        self._task = None
        if self._inflight is not None:  # a cancelled drainer's thread may still be writing its batch: let it end
            with contextlib.suppress(OSError):
                await self._inflight
            self._inflight = None
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._write_batch, self._take())
        if self._file is not None and self._file is not sys.stderr:
            self._file.close()
        self._file = None

    def _take(self) -> list[dict[str, Any]]:
        batch = list(self._queue)
        self._queue.clear()
        return batch

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            if self._queue:
                try:
                    # shielded: cancelling the drainer must not forget a batch it already took off the queue
                    self._inflight = asyncio.ensure_future(asyncio.to_thread(self._write_batch, self._take()))
                    await asyncio.shield(self._inflight)
                    self._inflight = None
                except OSError as exc:          # disk full, bad path: count the loss, keep serving
                    self.on_drop()
                    if not self._warned:
                        self._warned = True
                        logging.getLogger("stormguard.audit").error("audit log %s: %s", self.path, exc)

    def _write_batch(self, batch: list[dict[str, Any]]) -> None:
        if not batch or self.path is None:
            return
        with self._lock:
            self._write_locked(batch)

    def _write_locked(self, batch: list[dict[str, Any]]) -> None:
        if self._file is None:
            self._file = sys.stderr if self.path == "-" else open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._file.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in batch))
        self._file.flush()
        self.written += len(batch)
