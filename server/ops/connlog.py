"""The connection log (``stormguard serve --conn-log FILE``): one JSON line per request, in the record schema, so
``stormguard replay FILE`` reads the server's own traffic back as connection records (and ``train`` learns from it).

Each line holds the record columns the server knows: ``ts``/``ts_end`` (start and end, epoch seconds; a stream
ends when it closes), ``src_ip``/``src_port``, ``dst_port``, ``method``, ``path``, ``http_version``, ``status``,
``outcome`` (``ok``, ``refused``, ``error``), ``reject_reason`` (``layer:reason``), ``user_agent``, ``referer``,
``header_names`` (in wire order: the reader derives entropy and the order fingerprint, one definition),
``ja3``/``ja4``/``sni``/``alpn`` when known (trusted proxy headers or in-process TLS), ``bytes_out``, ``tenant``,
``transport``, ``proto``.

Written off the hot path: ``record`` appends to a bounded deque (a full queue drops and counts, never blocks); a
background task writes batches from a worker thread, and rotates the file by size (``FILE.1`` … ``FILE.N``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

from stormguard.server.context import SCOPE_KEY
from stormguard.server.tasks import cancel_tasks

log = logging.getLogger("stormguard.server.connlog")


class ConnLog:
    """Bounded, asynchronous, size-rotated JSON-lines writer of connection records."""

    def __init__(self, path: str, *, max_bytes: int = 100 << 20, backups: int = 5, max_queue: int = 100_000,
                 flush_interval: float = 0.5, on_drop: Callable[[], None] | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.max_queue = max_queue
        self.flush_interval = flush_interval
        self.on_drop = on_drop or (lambda: None)
        self._queue: deque[dict[str, Any]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._file: TextIO | None = None
        self._lock = threading.Lock()
        self.written = 0
        self.dropped = 0
        self.rotations = 0

    def record(self, row: dict[str, Any]) -> None:
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            self.on_drop()
            return
        self._queue.append(row)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stormguard-connlog")

    async def stop(self) -> None:
        await cancel_tasks(self._task)
        self._task = None
        if self._inflight is not None:
            with contextlib.suppress(OSError):
                await self._inflight
            self._inflight = None
        batch = list(self._queue)
        self._queue.clear()
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._write, batch)
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    async def _run(self) -> None:
        warned = False
        while True:
            await asyncio.sleep(self.flush_interval)
            if not self._queue:
                continue
            batch = list(self._queue)
            self._queue.clear()
            try:
                self._inflight = asyncio.ensure_future(asyncio.to_thread(self._write, batch))
                await asyncio.shield(self._inflight)
                self._inflight = None
            except OSError as exc:
                self.dropped += len(batch)
                if not warned:
                    warned = True
                    log.error("connection log %s: %s (records are dropped and counted)", self.path, exc)

    def _write(self, batch: list[dict[str, Any]]) -> None:
        if not batch:
            return
        lines = [json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in batch]
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across batches
            size = self._file.tell()
            chunk: list[str] = []
            for line in lines:  # a file never passes max_bytes (unless one line alone does)
                n = len(line.encode("utf-8"))
                if self.max_bytes and size + n > self.max_bytes and size > 0:
                    self._file.write("".join(chunk))
                    chunk = []
                    self._rotate()
                    size = 0
                chunk.append(line)
                size += n
            self._file.write("".join(chunk))
            self._file.flush()
            self.written += len(batch)

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        for i in range(self.backups - 1, 0, -1):
            src = f"{self.path}.{i}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i + 1}")
        if self.backups > 0:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self.rotations += 1


def request_row(scope: dict[str, Any], status: int, bytes_out: int, started: float, ended: float) -> dict[str, Any]:
    """The connection record of one finished request (see the module docstring for the fields)."""
    ctx = scope.get(SCOPE_KEY)
    client = scope.get("client") or ("", 0)
    server = scope.get("server") or ("", 0)
    names: list[str] = []
    ua = referer = None
    for raw_name, value in scope.get("headers", ()):
        name = raw_name.decode("latin-1")
        names.append(name)
        if raw_name == b"user-agent":
            ua = value.decode("latin-1")
        elif raw_name == b"referer":
            referer = value.decode("latin-1")
    qs = scope.get("query_string", b"")
    path = scope.get("path", "") + ("?" + qs.decode("latin-1") if qs else "")
    row: dict[str, Any] = {
        "ts": round(started, 6), "ts_end": round(ended, 6), "transport": "tcp",
        "proto": "https" if scope.get("scheme") == "https" else "http",
        "src_ip": client[0], "src_port": client[1], "dst_port": server[1] if server else None,
        "method": scope.get("method"), "path": path, "http_version": f"HTTP/{scope.get('http_version', '1.1')}",
        "status": status, "user_agent": ua, "referer": referer, "header_names": names, "bytes_out": bytes_out,
        "outcome": "ok" if 0 < status < 400 else "error" if status >= 500 or status == 0 else "refused",
    }
    if ctx is not None:
        ident = ctx.identity
        row["src_ip"] = ident.ip or row["src_ip"]
        for key in ("ja3", "ja4", "sni", "alpn"):
            value = getattr(ident, key, None)
            if value:
                row[key] = value
        if ctx.refused:
            row["outcome"] = "refused"
            row["reject_reason"] = f"{ctx.refused}:{ctx.extra.get('reject_reason', '')}".rstrip(":")
        tenant = ctx.extra.get("tenant")
        if tenant is not None:
            row["tenant"] = str(tenant)
    return row


async def logged(app: Any, conn_log: ConnLog, scope: Any, receive: Any, send: Any) -> None:
    """Run ``app`` for one HTTP request and record it in ``conn_log`` when it ends (whatever way it ends)."""
    started = time.time()
    status = 0
    sent = 0

    async def tracking_send(message: Any) -> None:
        nonlocal status, sent
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            sent += len(message.get("body", b""))
        await send(message)

    try:
        await app(scope, receive, tracking_send)
    except BaseException:
        status = status or 500
        raise
    finally:
        conn_log.record(request_row(scope, status, sent, started, time.time()))
