"""The baseline for ``bench/serve.py``: a bare sse-starlette app, no defence layers.

Run it under the same uvicorn settings as stormguard (one worker, uvloop + httptools, access log off)::

    uvicorn serve_bare:app --app-dir bench --loop uvloop --http httptools --no-access-log

* ``GET /events?topic=t`` — an ``EventSourceResponse`` (sse-starlette's own task group, pings every 15 s) whose
  first message is what stormguard's first message is: ``retry:`` plus an ``id:``; then it stays open and idle
  until the client leaves (the generator awaits an event that never fires, as a subscriber waiting for a publish).
* ``GET /hello`` — a trivial plain-text 200, the yardstick for stormguard's refusal rate.
* ``GET /feed?topic=t`` and ``POST /publish`` (``{"topic": t, "data": ...}``) — for ``bench/storm.py``: published
  events fanned out to the topic's open feeds (no history, no ``Last-Event-ID`` replay, no limits: what a bare SSE
  service does). ``/events`` stays the idle stream ``bench/serve.py`` measures.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

_never = None


async def _idle() -> None:
    global _never
    if _never is None:
        _never = asyncio.Event()
    await _never.wait()


async def events(request: Request) -> Response:
    topic = request.query_params.get("topic", "t")

    async def stream() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(id=f"{topic}:0@bare", retry=3000, sep="\n")
        await _idle()

    return EventSourceResponse(stream(), ping=15, sep="\n")


_subscribers: dict[str, set[asyncio.Queue[tuple[int, str]]]] = {}
_seq: dict[str, int] = {}


async def feed(request: Request) -> Response:
    topic = request.query_params.get("topic", "t")
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue(maxsize=1000)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        _subscribers.setdefault(topic, set()).add(queue)
        try:
            yield ServerSentEvent(id=f"{topic}:{_seq.get(topic, 0)}@bare", retry=3000, sep="\n")
            while True:
                seq, data = await queue.get()
                yield ServerSentEvent(id=f"{topic}:{seq}@bare", data=data, sep="\n")
        finally:
            _subscribers.get(topic, set()).discard(queue)

    return EventSourceResponse(stream(), ping=15, sep="\n")


async def publish(request: Request) -> Response:
    body = json.loads(await request.body())
    topic = str(body["topic"])
    _seq[topic] = seq = _seq.get(topic, 0) + 1
    data = json.dumps(body.get("data"))
    for q in list(_subscribers.get(topic, ())):
        if not q.full():
            q.put_nowait((seq, data))
    return PlainTextResponse("ok\n")


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello\n")


app = Starlette(routes=[Route("/events", events), Route("/hello", hello), Route("/feed", feed),
                        Route("/publish", publish, methods=["POST"])])
