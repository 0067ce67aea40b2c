"""The client side of one request: HTTP/1.1 over an asyncio protocol, Server-Sent Events parsed as they arrive.

Why by hand: a storm generator shares the machine with the server it tests, so a session must cost it little —
one preformatted request, a byte search for the response head, an incremental chunked decoder and an SSE line
splitter; no per-session client object from an HTTP library. Every session binds its own source address, so a
class of clients can stand on its own range of loopback addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_ENDED = (7, 8)                     # TCP_CLOSE (reset), TCP_CLOSE_WAIT (the server sent FIN)
#: How often a client that does not read checks whether the server has ended its stream.
PAUSED_CHECK_S = 0.25

#: How a session ended when it did not open a stream (``Session.refusal``).
REFUSALS = ("pace", "stop", "429", "503", "403", "404", "4xx", "5xx", "closed", "connect", "timeout")


@dataclass(slots=True)
class Session:
    """What one request saw."""

    started: float = 0.0
    status: int = 0                    # HTTP status; 0 when no head arrived
    opened: bool = False               # a stream head (an ``id:``) arrived
    refusal: str | None = None         # see REFUSALS; None for an opened stream or a plain 2xx/3xx answer
    reason: str | None = None          # the server's ``: reason`` comment on a pace or a close
    retry_ms: int | None = None        # the last ``retry:`` the server sent
    retry_after: float | None = None   # the ``Retry-After`` header of a 429/503/403
    last_id: str | None = None
    numbers: list[int] = field(default_factory=list)   # the publisher's sequence number of each event received
    ended: float = 0.0
    evicted: bool = False              # the server ended the open stream without a final ``retry:`` (or as a
                                       # ``slow_reader``): the client did not close it and was not paced


def request_bytes(host: str, path: str, headers: dict[str, str], *, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Chunked:
    """Incremental ``Transfer-Encoding: chunked`` decoder."""

    __slots__ = ("buf", "left", "skip", "done")

    def __init__(self) -> None:
        self.buf = b""
        self.left = 0       # data bytes left in the current chunk (0: a size line comes next)
        self.skip = 0       # bytes of the chunk's trailing CRLF still to skip
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = []
        while self.buf and not self.done:
            if self.skip:
                n = min(self.skip, len(self.buf))
                self.buf, self.skip = self.buf[n:], self.skip - n
                continue
            if self.left == 0:
                i = self.buf.find(b"\r\n")
                if i < 0:
                    self.done = len(self.buf) > 1024   # no size line in 1 KiB: not chunked data
                    break
                try:
                    size = int(self.buf[:i].split(b";", 1)[0], 16)
                except ValueError:
                    self.done = True
                    break
                self.buf = self.buf[i + 2:]
                if size == 0:
                    self.done = True
                    break
                self.left = size
                continue
            take = self.buf[:self.left]
            out.append(take)
            self.buf = self.buf[len(take):]
            self.left -= len(take)
            if self.left == 0:
                self.skip = 2
        return b"".join(out)


class SessionProtocol(asyncio.Protocol):
    """Sends one request and reads the response; for an event stream, every message as it arrives."""

    def __init__(self, request: bytes, session: Session, done: asyncio.Future[Session], *,
                 on_open: Callable[[SessionProtocol], None] | None = None) -> None:
        self.request = request
        self.session = session
        self.done = done
        self.on_open = on_open
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.head_done = False
        self.chunked: _Chunked | None = None
        self.sse = False
        self.text = ""
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self.head_done:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self._finish("closed")
                return
            body = self.head[end + 4:]
            self._parse_head(self.head[:end])
            self.head_done = True
            if not self.sse:
                self._finish(self._status_refusal())
                return
            data = body
        if self.chunked is not None:
            data = self.chunked.feed(data)
        if data:
            self._events(data.decode("utf-8", "replace"))

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        try:
            self.session.status = int(parts[1])
        except (IndexError, ValueError):
            self.session.status = -1
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "retry-after" in headers:
            try:
                self.session.retry_after = float(headers["retry-after"])
            except ValueError:
                pass
        self.sse = self.session.status == 200 and headers.get("content-type", "").startswith("text/event-stream")
        if self.sse and "chunked" in headers.get("transfer-encoding", "").lower():
            self.chunked = _Chunked()

    def _status_refusal(self) -> str | None:
        s = self.session.status
        if s == 204:
            return "stop"
        if s in (429, 503, 403, 404):
            return str(s)
        if 400 <= s < 500:
            return "4xx"
        if s >= 500:
            return "5xx"
        return None if s > 0 else "closed"

    def _events(self, text: str) -> None:
        self.text += text.replace("\r\n", "\n")
        while True:
            i = self.text.find("\n\n")
            if i < 0:
                return
            block, self.text = self.text[:i], self.text[i + 2:]
            self._message(block)

    def _message(self, block: str) -> None:
        s = self.session
        data: list[str] = []
        comment = None
        msg_id = None
        for line in block.split("\n"):
            if line.startswith(":"):
                comment = line[1:].strip()
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                msg_id = value
            elif name == "data":
                data.append(value)
            elif name == "retry" and value.isdigit():
                s.retry_ms = int(value)
        if msg_id is not None:
            s.last_id = msg_id
            if not s.opened:
                s.opened = True
                if self.on_open is not None:
                    self.on_open(self)
        elif comment and not s.opened:
            s.reason = comment        # a pace: retry + reason, then close
        elif comment and s.opened and s.retry_ms is not None and not data:
            s.reason = comment        # the server ending the stream (eviction, shutdown)
        if data:
            try:
                payload = json.loads("\n".join(data))
            except ValueError:
                return
            if isinstance(payload, dict) and isinstance(payload.get("n"), int):
                s.numbers.append(payload["n"])

    def _finish(self, refusal: str | None) -> None:
        if not self.done.done():
            self.session.refusal = refusal
            self.session.ended = time.monotonic()
            self.done.set_result(self.session)
        if self.transport is not None and not self.closing:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        s = self.session
        if not self.head_done:
            refusal: str | None = "closed"
        elif self.sse and not s.opened:
            refusal = "pace" if s.retry_ms is not None else "closed"
        else:
            refusal = None
            s.evicted = s.opened and not self.closing and (s.reason is None or s.reason == "slow_reader")
        self._finish(refusal)

    def peer_closed(self) -> bool:
        """The server reset or closed the connection while this side does not read (reading paused: the event
        loop does not watch the socket, so ``connection_lost`` would not come): the kernel's TCP state says so."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None or _TCP_INFO is None:
            return False
        with contextlib.suppress(OSError, ValueError):
            return sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 8)[0] in _TCP_ENDED
        return True                     # the socket is gone

    def end_evicted(self) -> None:
        """End a paused session the server has ended (see :meth:`peer_closed`)."""
        self.session.evicted = True
        self._finish(None)


async def _connect(loop: asyncio.AbstractEventLoop, proto: SessionProtocol, host: str, port: int, source: str,
                   rcvbuf: int) -> None:
    if not rcvbuf:
        await loop.create_connection(lambda: proto, host, port, local_addr=(source, 0))
        return
    # the receive buffer is set before connecting: the window scale is agreed in the handshake
    sock = socket.socket(socket.AF_INET6 if ":" in source else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        sock.bind((source, 0))
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    await loop.create_connection(lambda: proto, sock=sock)


async def _wait_paused(proto: SessionProtocol, done: asyncio.Future[Session], hold: float | None) -> None:
    """Wait for the end of a session that does not read: its own ``hold``, or the server ending it."""
    loop = asyncio.get_running_loop()
    until = None if hold is None else loop.time() + hold
    while not done.done():
        left = PAUSED_CHECK_S if until is None else min(PAUSED_CHECK_S, until - loop.time())
        if left <= 0:
            raise TimeoutError
        await asyncio.wait({done}, timeout=left)
        if not done.done() and proto.peer_closed():
            proto.end_evicted()


async def run_session(host: str, port: int, source: str, request: bytes, *, timeout: float,
                      hold: float | None = None, slow: bool = False, rcvbuf: int = 0,
                      on_event: Callable[[Session], None] | None = None) -> Session:
    """One request from ``source``. A stream stays open until the server ends it, or ``hold`` seconds after it
    opened (the client closes), whichever comes first; ``slow`` stops reading once the stream is open (and
    ``rcvbuf`` > 0 sets the socket's receive buffer)."""
    loop = asyncio.get_running_loop()
    session = Session(started=time.monotonic())
    done: asyncio.Future[Session] = loop.create_future()
    opened = asyncio.Event()

    def on_open(proto: SessionProtocol) -> None:
        opened.set()
        if slow and proto.transport is not None:
            proto.transport.pause_reading()

    proto = SessionProtocol(request, session, done, on_open=on_open)
    waiter = asyncio.ensure_future(opened.wait())
    try:
        async with asyncio.timeout(timeout):
            await _connect(loop, proto, host, port, source, rcvbuf)
            await asyncio.wait({done, waiter}, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        proto.close()
        session.refusal = session.refusal or ("timeout" if not session.opened else None)
        session.ended = time.monotonic()
        return session
    except OSError:
        session.refusal = "connect"
        session.ended = time.monotonic()
        return session
    finally:
        waiter.cancel()
    if done.done():
        return done.result()
    try:
        if slow:
            await _wait_paused(proto, done, hold)
        elif hold is None:
            await done
        else:
            await asyncio.wait_for(asyncio.shield(done), hold)
    except TimeoutError:
        proto.close()
        await asyncio.wait({done}, timeout=1.0)
    except asyncio.CancelledError:
        proto.close()
        raise
    if not done.done():
        session.ended = time.monotonic()
    return session
