"""The SSE wire: a hand-written streaming ASGI response (``/events``) and the publisher endpoint (``/publish``).

Why hand-written rather than sse-starlette: DESIGN.md measured 5 asyncio tasks and ~42 KB per idle stream for
sse-starlette vs 2 tasks and ~24.5 KB hand-written. Here a stream is the request task (which writes) plus one
task awaiting ``http.disconnect``; heartbeats and idle checks come from the hub's single ticker, and the send
queue is a plain deque with a capped length — a client that stops reading overflows it, blocks a send past
``send_timeout``, or is found stalled by the ticker asking its socket (:mod:`~stormguard.server.hub.backlog`), and is
dropped as a ``slow_reader`` (it resumes with ``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from stormguard.server.context import RequestContext, get_context
from stormguard.server.hub.backlog import SLOW_READER, reset, stream_socket
from stormguard.server.hub.history import Event, HistoryUnavailable
from stormguard.server.hub.topics import TOPIC_RE, format_id, parse_last_event_id
from stormguard.server.ops.settings import TierLimits

if TYPE_CHECKING:
    from stormguard.server.app import Runtime

PING = b": ping\n\n"
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_STREAM_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                   (b"x-accel-buffering", b"no")]
MAX_PUBLISH_BODY = 1 << 20
# the retry: handed out when the server ends a stream: a restart spreads the herd, a lifetime cap keeps it away
_FINAL_RETRY_REASON = {"shutdown": "shutdown", "lifetime": "quota"}


class Stream:
    """One open stream's state: positions per topic, a bounded mailbox and the waiter of its writer."""

    __slots__ = ("topics", "positions", "single", "epoch", "mailbox", "max_queue", "waiter", "close_reason",
                 "started", "last_write", "last_data", "limits", "ctx", "transport", "sock", "drained", "acked",
                 "pending", "stall_since")

    def __init__(self, topics: tuple[str, ...], epoch: str, max_queue: int, now: float, ctx: RequestContext,
                 limits: TierLimits | None, transport: Any = None) -> None:
        self.topics = topics
        self.single = len(topics) == 1
        self.epoch = epoch
        self.positions: dict[str, int] = {}
        self.mailbox: deque[Event | bytes] = deque()
        self.max_queue = max_queue
        self.waiter: asyncio.Future[None] | None = None
        self.close_reason: str | None = None
        self.started = self.last_write = self.last_data = now
        self.limits = limits
        self.ctx = ctx
        # the slow-reader check's view of the socket (backlog.SlowReaderGuard); no socket: not asked
        self.transport = transport
        self.sock = stream_socket(transport)
        self.drained = now
        self.acked: int | None = None
        self.pending = 0
        self.stall_since: float | None = None

    def frame(self, ev: Event) -> bytes:
        """Wire bytes for ``ev``; advances this stream's position in the event's topic."""
        self.positions[ev.topic] = ev.seq
        if self.single:
            return ev.frame(self.epoch)
        return f"id: {format_id(self.positions, self.topics, self.epoch)}\n{ev.body()}".encode()

    def push(self, item: Event | bytes) -> bool:
        """Queue an item; False when the queue is full (the caller drops the stream)."""
        if self.close_reason is not None:
            return True
        if len(self.mailbox) >= self.max_queue:
            return False
        self.mailbox.append(item)
        self._wake()
        return True

    def ping(self) -> None:
        if not self.mailbox:
            self.push(PING)

    def close(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            self._wake()

    def abort(self) -> None:
        """Reset the connection now, buffers and all (a slow reader would never drain them)."""
        reset(self.transport)

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


async def _send_body(send: Any, body: bytes, more: bool, timeout: float) -> bool:
    """One body chunk with a deadline: a client that does not read must not pin the writer forever."""
    try:
        async with asyncio.timeout(timeout):
            await send({"type": "http.response.body", "body": body, "more_body": more})
        return True
    except (TimeoutError, OSError):
        return False


RAW_SEND_KEY = "stormguard.send"


def raw_transport(scope: dict[str, Any]) -> Any:
    """The server's transport of this request, when the server is uvicorn and ``StormguardApp`` recorded its send."""
    return getattr(getattr(scope.get(RAW_SEND_KEY), "__self__", None), "transport", None)


async def abort_connection(scope: dict[str, Any]) -> None:
    """Drop the TCP connection now, without flushing: a client that does not read must not keep its buffers.

    ASGI has no "abort"; returning from the app makes uvicorn ``transport.close()``, which waits for the write
    buffer to drain — forever, for a peer advertising a zero window. So, when the server's own ``send`` was
    recorded in the scope (``StormguardApp`` does) and is uvicorn's (a bound method of the request cycle with a
    ``transport``), reset that connection (:func:`~stormguard.server.hub.backlog.reset`: the kernel's queue goes
    too). Elsewhere this is a no-op and the server's own close applies.
    """
    transport = raw_transport(scope)
    if transport is not None and hasattr(transport, "abort"):
        reset(transport)
        await asyncio.sleep(0)          # let connection_lost run, so the server sees a disconnect, not an error


async def _plain(send: Any, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class EventsEndpoint:
    """``GET /events?topic=a&topic=b`` — ASGI app mounted as a Starlette route."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        bind = getattr(runtime.hub.history, "bind_metrics", None)     # shared history: its outage metrics
        if bind is not None:
            bind(runtime.metrics.registry)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        rt = self.rt
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(send, 405, "method not allowed\n", [(b"allow", b"GET")])
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        topics = tuple(dict.fromkeys(v for k, v in query if k == "topic"))
        if not topics or len(topics) > rt.settings.max_topics_per_stream or not all(map(TOPIC_RE.match, topics)):
            await _plain(send, 400, f"need 1..{rt.settings.max_topics_per_stream} valid topic parameters\n")
            return
        ctx = get_context(scope)
        if rt.hub.closing:
            await rt.refuser.refuse(scope, send, layer="hub", reason="shutdown", enforce=True)
            return
        last_id = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"last-event-id"), None)
        if last_id is None:
            last_id = next((v for k, v in query if k == "last_event_id"), None)
        positions = None
        if last_id:
            positions = parse_last_event_id(last_id, rt.hub.history.epoch)
            if positions is None:
                rt.metrics.child(rt.metrics.malformed, "last-event-id").inc()
        await self._stream(scope, receive, send, ctx, topics, positions)

    async def _stream(self, scope: dict[str, Any], receive: Any, send: Any, ctx: RequestContext,
                      topics: tuple[str, ...], positions: dict[str, int] | None) -> None:
        rt, hub = self.rt, self.rt.hub
        clock = hub.clock
        settings = rt.settings
        stream = Stream(topics, hub.history.epoch, settings.send_queue_size, clock(), ctx,
                        ctx.extra.get("limits"), raw_transport(scope))
        try:
            replay = await hub.open(stream, positions)
        except HistoryUnavailable:
            # no replay, no position: pace the client (it comes back with its Last-Event-ID). Counted as a refusal
            # (layer hub, reason store), never as a breaker failure: a store outage is not this server failing
            await rt.refuser.refuse(scope, send, layer="hub", reason="store", enforce=True)
            return
        rt.stream_opened(stream)
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(self._watch(receive, stream))
        try:
            retry_ms = rt.retry.choose("stream", ctx.tier, rt.load(), ctx.degraded)
            head = b"retry: %d\nid: %s\n\n" % (retry_ms, format_id(stream.positions, topics, stream.epoch).encode())
            await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
            if scope["method"] == "HEAD":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            stream.last_write = clock()     # the replay is a write too: a reader that never takes it is checked
            if not await _send_body(send, head + b"".join(replay), True, settings.send_timeout):
                hub.evict(stream, SLOW_READER)
                await abort_connection(scope)
                return
            rt.emit("first_byte", ctx)
            mailbox = stream.mailbox
            while True:
                if stream.close_reason is None and not mailbox:
                    stream.waiter = loop.create_future()
                    await stream.waiter
                    stream.waiter = None
                if stream.close_reason is not None:
                    break
                parts: list[bytes] = []
                data = False
                positions = stream.positions
                while mailbox and len(parts) < 64:
                    item = mailbox.popleft()
                    if isinstance(item, Event):
                        if item.seq <= positions[item.topic]:
                            continue                        # replayed already (shared history: see hub.open)
                        parts.append(stream.frame(item))
                        data = True
                    else:
                        parts.append(item)
                if not parts:
                    continue
                now = clock()
                stream.last_write = now
                if data:
                    stream.last_data = now
                if not await _send_body(send, b"".join(parts), True, settings.send_timeout):
                    hub.evict(stream, SLOW_READER)
                    await abort_connection(scope)
                    return
            reason = stream.close_reason
            if reason == SLOW_READER:
                await abort_connection(scope)   # no final retry: it would wait for the window that is closed
            elif reason != "disconnect":
                ms = rt.retry.choose(_FINAL_RETRY_REASON.get(reason, "stream"), ctx.tier, rt.load(), ctx.degraded)
                timeout = min(settings.send_timeout, max(0.1, settings.shutdown_grace / 2))
                if not await _send_body(send, b"retry: %d\n: %s\n\n" % (ms, reason.encode()), False, timeout):
                    await abort_connection(scope)
        finally:
            watcher.cancel()
            hub.detach(stream)
            rt.stream_closed(stream)

    @staticmethod
    async def _watch(receive: Any, stream: Stream) -> None:
        """The stream's second task: notice the client leaving now, not at the next heartbeat."""
        with contextlib.suppress(Exception):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
        stream.close("disconnect")


class PublishEndpoint:
    """``POST /publish`` — JSON ``{"topic", "data", "id"?, "event"?}`` with ``Authorization: Bearer <token>``.

    ``id`` is the publisher's idempotency key (a retried publish is not delivered twice); the event's SSE id is
    always the hub's own sequence, which is what makes replay exact.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["method"] != "POST":
            await _plain(send, 405, "method not allowed\n", [(b"allow", b"POST")])
            return
        token = self.rt.settings.publish_token
        if not token:
            await _plain(send, 403, "publishing disabled: no publish token configured\n")
            return
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        given = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
        if not hmac.compare_digest(given, token.encode()):
            await _plain(send, 401, "bad or missing bearer token\n", [(b"www-authenticate", b"Bearer")])
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_PUBLISH_BODY:
                await _plain(send, 413, "body too large\n")
                return
            if not message.get("more_body"):
                break
        error, fields = self._parse(bytes(body))
        if error:
            await _plain(send, 400, error + "\n")
            return
        try:
            ev, duplicate = await self.rt.hub.publish_async(*fields)
        except HistoryUnavailable as exc:
            # the store's outage, not ours: marked refused so the breaker does not count this 503 (it would
            # otherwise open and keep refusing publishers for open_timeout after the store is back)
            get_context(scope).refused = "store"
            self.rt.metrics.reject("publish", "store")
            await _plain(send, 503, f"not published: {exc}; retry later (a repeated id is not published twice)\n",
                         [(b"retry-after", b"1")])
            return
        if not duplicate:
            self.rt.metrics.published.inc()
        out = json.dumps({"topic": ev.topic, "seq": ev.seq, "id": f"{ev.topic}:{ev.seq}@{self.rt.hub.history.epoch}",
                          "duplicate": duplicate}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out, "more_body": False})

    @staticmethod
    def _parse(body: bytes) -> tuple[str, tuple[str, str, str | None, str | None]]:
        try:
            doc = json.loads(body)
        except ValueError:
            return "body is not JSON", ("", "", None, None)
        if not isinstance(doc, dict):
            return "body must be a JSON object", ("", "", None, None)
        topic, data, event, pub_id = doc.get("topic"), doc.get("data"), doc.get("event"), doc.get("id")
        if not isinstance(topic, str) or not TOPIC_RE.match(topic):
            return "topic: 1-64 of [A-Za-z0-9_.-/]", ("", "", None, None)
        if data is None:
            return "data is required", ("", "", None, None)
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        if event is not None and (not isinstance(event, str) or not _EVENT_TYPE.match(event)):
            return "event: 1-64 of [A-Za-z0-9_.:-]", ("", "", None, None)
        if pub_id is not None:
            if isinstance(pub_id, int | float):
                pub_id = str(pub_id)
            if not isinstance(pub_id, str) or len(pub_id) > 128 or "\n" in pub_id or "\r" in pub_id:
                return "id: a string of at most 128 characters without newlines", ("", "", None, None)
        return "", (topic, text, event, pub_id)
