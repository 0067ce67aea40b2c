"""Asyncio raw-socket HTTP/1.1 clients for the storm test: an EventSource-like stream and a no-backoff hammer.

Raw sockets because the test needs exact control of the source address (one loopback address per client
identity) and of how a connection ends, and thousands of short connections without a client library's pools.
Every read has a timeout and every loop a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field


async def open_from(source: str, port: int, timeout: float = 5.0) -> tuple[asyncio.StreamReader,
                                                                          asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout)


def request(path: str, port: int, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream", "Cache-Control: no-cache"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_head(reader: asyncio.StreamReader, timeout: float) -> tuple[int, dict[str, str]]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k:
            headers[k.strip().lower()] = v.strip()
    return status, headers


def abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0): no TIME_WAIT pile-up on the client side, and a hard cut for the server."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def body_chunks(reader: asyncio.StreamReader, headers: dict[str, str], timeout: float):
    """The response body as it arrives (de-chunked; or up to Content-Length; or until EOF)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return
            data = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
            yield data[:-2]
    elif "content-length" in headers:
        n = int(headers["content-length"])
        if n:
            yield await asyncio.wait_for(reader.readexactly(n), timeout)
    else:
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                return
            yield data


@dataclass
class PoliteClient:
    """Behaves like a browser's EventSource: honours ``retry:``, resumes with ``Last-Event-ID``, stops on 204.

    ``cut_after``: drop the connection (RST) once after that many events, to exercise the resume path.
    """

    source: str
    port: int
    topic: str
    expected: int
    cut_after: int | None = None
    max_connects: int = 40
    read_timeout: float = 30.0
    received: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    retry_ms: int = 3000
    last_id: str | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: bool = False

    async def run(self) -> None:
        for _ in range(self.max_connects):
            if len(self.received) >= self.expected:
                return
            if await self._connect_once():
                return
            await asyncio.sleep(self.retry_ms / 1000.0)

    async def _connect_once(self) -> bool:
        """One connection; True when the client must stop (204, done)."""
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        try:
            reader, writer = await open_from(self.source, self.port)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(request(f"/events?topic={self.topic}", self.port, headers))
            status, head = await read_head(reader, self.read_timeout)
            self.statuses.append(status)
            if status == 204:
                self.stopped = True
                return True
            if status != 200:
                return False
            buf = b""
            async for chunk in body_chunks(reader, head, self.read_timeout):
                buf += chunk
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    self._message(block.decode())
                if self.cut_after is not None and len(self.received) >= self.cut_after:
                    self.cut_after = None
                    abort(writer)
                    return False
                if len(self.received) >= self.expected:
                    return True
            return False
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return False
        finally:
            writer.transport.abort()

    def _message(self, block: str) -> None:
        data: list[str] = []
        msg_id = None
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "retry" and value.isdigit():
                self.retry_ms = int(value)
            elif name == "id":
                msg_id = value
            elif name == "data":
                data.append(value)
        if msg_id is not None:
            self.last_id = msg_id
            self.connected.set()
        if data:
            self.received.append("\n".join(data))
            self.ids.append(msg_id or "")


@dataclass
class Hammer:
    """An aggressive client: ``attempts`` connections in a row, no backoff, each closed right after the head.

    Outcomes: ``open`` (admitted stream), ``pace`` (200 with a bounded body carrying ``retry:``), ``stop`` (204),
    ``status-<n>`` (other), ``error`` (connect/read failure).
    """

    source: str
    port: int
    topic: str
    attempts: int = 30
    timeout: float = 5.0
    outcomes: list[str] = field(default_factory=list)

    async def run(self) -> None:
        for _ in range(self.attempts):
            self.outcomes.append(await self._once())

    async def _once(self) -> str:
        try:
            reader, writer = await open_from(self.source, self.port, self.timeout)
        except (OSError, TimeoutError):
            return "error"
        try:
            writer.write(request(f"/events?topic={self.topic}", self.port))
            status, head = await read_head(reader, self.timeout)
            if status == 204:
                return "stop"
            if status == 200:
                return "pace" if "content-length" in head else "open"
            return f"status-{status}"
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return "error"
        finally:
            abort(writer)
