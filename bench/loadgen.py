"""A cheap SSE load generator for ``bench/serve.py``: asyncio protocols (run it on uvloop), preformatted requests.

Why not httpx/aiohttp: on a 2-core machine the generator competes with the server for CPU, so each session must
cost the generator as little as possible — one preformatted ``GET``, a byte search for the end of the first SSE
message, ``close()``. Every session binds its own source address from a rotating pool of loopback addresses
(``127.A.B.C``): distinct clients for per-address limits, and ~28k ephemeral ports per address instead of per host.

Everything is bounded: a count of sessions, a wall-clock deadline, and a per-session timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


def source_addresses(first_octet: int = 1, count: int = 16384) -> list[str]:
    """``count`` loopback addresses ``127.<first_octet>.b.c`` (c in 1..254), never 127.0.0.1."""
    out: list[str] = []
    for b in range(256):
        for c in range(1, 255):
            out.append(f"127.{first_octet}.{b}.{c}")
            if len(out) >= count:
                return out
    return out


def sse_request(port: int, path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
            f"Cache-Control: no-cache\r\n\r\n").encode()


class _FirstEvent(asyncio.Protocol):
    """Sends the request; resolves ``done`` with (status, first message bytes) once the first SSE message arrived."""

    __slots__ = ("request", "done", "buf", "transport", "head_end", "status")

    def __init__(self, request: bytes, done: asyncio.Future[tuple[int, bytes]]) -> None:
        self.request = request
        self.done = done
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.head_end = -1
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.buf += data
        if self.head_end < 0:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            self.head_end = i + 4
            try:
                self.status = int(self.buf[9:12])
            except ValueError:
                self.status = -1
            if self.status != 200:
                self.done.set_result((self.status, b""))
                return
        j = self.buf.find(b"\n\n", self.head_end)
        if j < 0:
            j = self.buf.find(b"\n\r\n", self.head_end)      # an event ended by CRLF CRLF
        if j >= 0:
            self.done.set_result((self.status, self.buf[self.head_end:j + 2]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result((self.status or -2, b""))


@dataclass
class ChurnResult:
    sessions: int = 0                  # completed: 200 and a first message that is a stream head (has an id:)
    failures: int = 0                  # anything else (refused, reset, timeout)
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)   # seconds, connect start -> first message
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.sessions / self.wall if self.wall else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _open(port: int, source: str, request: bytes, timeout: float
                ) -> tuple[asyncio.Transport | None, int, bytes, float]:
    """One session up to its first message: (transport or None, status, first message, seconds)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[int, bytes]] = loop.create_future()
    t0 = time.perf_counter()
    transport = None
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(lambda: _FirstEvent(request, done), "127.0.0.1", port,
                                                        local_addr=(source, 0))
            status, first = await done
    except (OSError, TimeoutError):
        if transport is not None:
            transport.abort()
        return None, -3, b"", time.perf_counter() - t0
    return transport, status, first, time.perf_counter() - t0


def _ok(status: int, first: bytes) -> bool:
    return status == 200 and b"id:" in first


async def churn(port: int, path: str, *, sessions: int, concurrency: int, sources: list[str],
                deadline_s: float = 60.0, timeout: float = 10.0) -> ChurnResult:
    """``sessions`` × (connect, receive the first message, close), ``concurrency`` at a time, bounded in time."""
    request = sse_request(port, path)
    res = ChurnResult()
    addr: Iterator[str] = itertools.cycle(sources)
    remaining = sessions
    start = time.perf_counter()
    stop_at = start + deadline_s

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() < stop_at:
            remaining -= 1
            transport, status, first, dt = await _open(port, next(addr), request, timeout)
            if transport is not None:
                transport.close()
            res.statuses[status] = res.statuses.get(status, 0) + 1
            if _ok(status, first):
                res.sessions += 1
                res.latencies.append(dt)
            else:
                res.failures += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    res.wall = time.perf_counter() - start
    return res


class IdleStreams:
    """Hold ``count`` open streams (each has received its first message); ``close()`` releases them."""

    def __init__(self) -> None:
        self.transports: list[asyncio.Transport] = []
        self.failures = 0
        self.statuses: dict[int, int] = {}

    async def open(self, port: int, path: str, count: int, *, concurrency: int, sources: list[str],
                   deadline_s: float = 60.0, timeout: float = 15.0) -> None:
        request = sse_request(port, path)
        addr = itertools.cycle(sources)
        remaining = count
        stop_at = time.perf_counter() + deadline_s

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0 and time.perf_counter() < stop_at:
                remaining -= 1
                transport, status, first, _ = await _open(port, next(addr), request, timeout)
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if transport is not None and _ok(status, first):
                    self.transports.append(transport)
                else:
                    self.failures += 1
                    if transport is not None:
                        transport.close()

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def close(self) -> None:
        for t in self.transports:
            t.close()
        self.transports.clear()
        await asyncio.sleep(0.2)


async def probe(port: int, path: str, *, source: str = "127.0.0.1", headers: str = "",
                timeout: float = 5.0) -> tuple[int, bytes]:
    """One request; (status, first up to 4 KB of the response). For sanity checks of the paths being measured."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)),
                                            timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
        data = b""
        async with asyncio.timeout(timeout):
            while len(data) < 4096:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                if not sep:
                    continue
                m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if (m and len(body) >= int(m.group(1))) or b"\n\n" in body or b" 204 " in head[:16]:
                    break
    except TimeoutError:
        pass
    finally:
        writer.close()
    status = int(data[9:12]) if len(data) >= 12 and data[9:12].isdigit() else -1
    return status, data[:4096]
