"""``stormguard proxy --upstream http://HOST:PORT``: every defence layer in front of any HTTP service.

A Starlette app with one catch-all route that forwards each request to the upstream with httpx and streams the
answer back as it arrives (SSE and chunked responses are never buffered), mounted behind the same stack as
``stormguard serve`` (:func:`stormguard.server.mount.protect`). The proxy sets ``X-Forwarded-For``,
``X-Forwarded-Proto`` and ``Forwarded`` from the client identity stormguard believed (a client's own copies of those
headers are dropped), removes hop-by-hop headers both ways, and answers an unreachable upstream with 502 and a
timeout with 504, each with a one-line body saying which.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from stormguard.server.context import SCOPE_KEY
from stormguard.server.ops.settings import ServerSettings

#: RFC 9110 §7.6.1 hop-by-hop headers, plus the forwarding headers the proxy sets itself.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "proxy-connection"}
#: Answers up to this size with a Content-Length are read whole and sent in one write; others stream.
SMALL_BODY = 256 * 1024
#: The proxy's own endpoints (everything else goes upstream, /healthz and /metrics included).
OWN_HEALTHZ, OWN_METRICS = "/_stormguard/healthz", "/_stormguard/metrics"
FORWARDING = {"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip"}


def _request_headers(request: Request, upstream_host: str) -> list[tuple[str, str]]:
    listed = {v.strip().lower() for v in request.headers.get("connection", "").split(",") if v.strip()}
    out = [(k, v) for k, v in request.headers.items()
           if k not in HOP_BY_HOP and k not in FORWARDING and k not in listed and k != "host"]
    ctx = request.scope.get(SCOPE_KEY)
    client = ctx.identity.ip if ctx is not None else (request.client.host if request.client else "")
    proto = request.url.scheme
    node = f'"[{client}]"' if ":" in client else client
    out += [("host", upstream_host), ("x-forwarded-for", client), ("x-forwarded-proto", proto),
            ("forwarded", f"for={node};proto={proto};host={request.headers.get('host', '')}")]
    return out


def _response_headers(resp: httpx.Response) -> list[tuple[str, str]]:
    listed = {v.strip().lower() for v in resp.headers.get("connection", "").split(",") if v.strip()}
    return [(k, v) for k, v in resp.headers.multi_items()
            if k.lower() not in HOP_BY_HOP and k.lower() not in listed and k.lower() != "content-length"]


def proxy_app(upstream: str, settings: ServerSettings | None = None, *, timeout: float = 30.0,
              sse_paths: tuple[str, ...] = ("/events",), store: str | None = None, model: Any = None) -> Starlette:
    """The proxy app for ``upstream`` (``http://HOST:PORT``), protected by stormguard's layers."""
    parts = urlsplit(upstream)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--upstream must be http://HOST:PORT, got {upstream!r}")
    base = f"{parts.scheme}://{parts.netloc}"
    # read timeout: none for streams (an SSE upstream may stay quiet); connect and first bytes are bounded
    client_timeout = httpx.Timeout(timeout, read=None)
    state: dict[str, httpx.AsyncClient] = {}

    async def forward(request: Request) -> Response:
        client = state["client"]
        url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        req = client.build_request(request.method, url, headers=_request_headers(request, parts.netloc),
                                   content=request.stream() if has_body else None)
        try:
            resp = await client.send(req, stream=True)
        except httpx.TimeoutException:
            return PlainTextResponse(f"stormguard proxy: upstream {base} timed out\n", status_code=504)
        except httpx.HTTPError as exc:
            return PlainTextResponse(f"stormguard proxy: upstream {base} unreachable ({type(exc).__name__})\n",
                                     status_code=502)

        length = resp.headers.get("content-length", "")
        if (length.isdigit() and int(length) <= SMALL_BODY
                and not resp.headers.get("content-type", "").startswith("text/event-stream")):
            try:  # a small, framed answer: one write instead of a stream (cheaper, and no per-chunk round trips)
                content = await resp.aread()
            except httpx.HTTPError:
                await resp.aclose()
                return PlainTextResponse(f"stormguard proxy: upstream {base} broke off its answer\n", status_code=502)
            await resp.aclose()
            return Response(content, status_code=resp.status_code, headers=dict(_response_headers(resp)))

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            except httpx.HTTPError:
                return  # the upstream went away mid-stream: end ours too

        return StreamingResponse(body(), status_code=resp.status_code, headers=dict(_response_headers(resp)),
                                 background=BackgroundTask(resp.aclose))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=client_timeout, follow_redirects=False,
                                     limits=httpx.Limits(max_connections=None, max_keepalive_connections=100)) as c:
            state["client"] = c
            yield

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def metrics(request: Request) -> Response:
        body, content_type = app.state.stormguard.metrics.render()
        return Response(body, media_type=content_type)

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    app = Starlette(routes=[Route(OWN_HEALTHZ, healthz), Route(OWN_METRICS, metrics),
                            Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)
    from stormguard.server.mount import protect

    s = settings or ServerSettings()
    s.exempt_paths = (OWN_HEALTHZ, OWN_METRICS)
    protect(app, s, sse_paths=sse_paths, store=store, model=model)
    return app


def proxy_app_from_env() -> Starlette:
    """uvicorn ``--factory`` entry for ``stormguard proxy`` (settings from the environment, as ``serve``)."""
    import json
    import os

    opts = json.loads(os.environ["STORMGUARD_PROXY"])
    return proxy_app(opts["upstream"], ServerSettings.from_env(), timeout=opts["timeout"],
                     sse_paths=tuple(opts["sse_paths"]), store=opts.get("store"))
