"""The baseline for ``bench/serve.py``: a bare sse-starlette app, no defence layers.

Run it under the same uvicorn settings as stormguard (one worker, uvloop + httptools, access log off)::

    uvicorn serve_bare:app --app-dir bench --loop uvloop --http httptools --no-access-log

* ``GET /events?topic=t`` — an ``EventSourceResponse`` (sse-starlette's own task group, pings every 15 s) whose
  first message is what stormguard's first message is: ``retry:`` plus an ``id:``; then it stays open and idle
  until the client leaves (the generator awaits an event that never fires, as a subscriber waiting for a publish).
* ``GET /hello`` — a trivial plain-text 200, the yardstick for stormguard's refusal rate.
"""

from __future__ import annotations

import asyncio
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


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello\n")


app = Starlette(routes=[Route("/events", events), Route("/hello", hello)])
