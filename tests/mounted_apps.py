"""Apps that are not stormguard's, with stormguard mounted by one call (``protect``), for tests/test_mount.py.

Each is a real app with its own routes, its own lifespan and, for FastAPI, its own SSE route; the factories are
served by plain ``uvicorn --factory`` (:func:`running_mounted`). Settings come from ``$STORMGUARD_SERVER_SETTINGS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

from server_harness import PROJECT_ROOT, ServerProcess, uvicorn_factory_cmd, wait_healthy
from stormguard.server import ServerSettings, protect


def _stream_events(n: int = 1000) -> Any:
    async def gen() -> AsyncIterator[bytes]:
        yield b"retry: 1000\nid: 0\n\n"
        for i in range(1, n):
            yield f"id: {i}\ndata: {json.dumps({'n': i})}\n\n".encode()
            await asyncio.sleep(0.2)
    return gen()


def fastapi_app() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    started: dict[str, bool] = {"own_lifespan": False}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started["own_lifespan"] = True
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, **started}

    @app.get("/items/{item}")
    async def item(item: int) -> dict[str, int]:
        return {"item": item}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        return StreamingResponse(_stream_events(), media_type="text/event-stream")

    @app.get("/metrics")
    async def metrics() -> Any:
        from fastapi.responses import Response

        body, content_type = app.state.stormguard.metrics.render()
        return Response(body, media_type=content_type)

    protect(app, ServerSettings.from_env(), sse_paths=("/stream",))
    return app


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    async def healthz(request: Any) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello\n")

    async def feed(request: Any) -> StreamingResponse:
        return StreamingResponse(_stream_events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/healthz", healthz), Route("/hello", hello), Route("/feed", feed)])
    protect(app, ServerSettings.from_env(), sse_paths=("/feed",))
    return app


@contextlib.contextmanager
def running_mounted(factory: str, settings: dict[str, Any] | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(settings)
    env = {**os.environ, "STORMGUARD_SERVER_SETTINGS": json.dumps(server.settings), "STORMGUARD_STORE_URL": "memory://"}
    cmd = uvicorn_factory_cmd(f"mounted_apps:{factory}", server.port)
    server.proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=server.log, stderr=subprocess.STDOUT)
    try:
        if not wait_healthy(server.url + "/healthz", server.proc):
            raise RuntimeError(f"app did not start:\n{server.output()}")
        yield server
    finally:
        server.stop()
        os.unlink(server.log.name)


def plain_upstream() -> Any:
    """An unprotected upstream for ``stormguard proxy``: an SSE route, and an echo of the request headers."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def healthz(request: Any) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def echo(request: Any) -> JSONResponse:
        return JSONResponse({"headers": [[k, v] for k, v in request.headers.items()], "path": request.url.path,
                             "query": request.url.query, "body": (await request.body()).decode()})

    async def stream(request: Any) -> StreamingResponse:
        return StreamingResponse(_stream_events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/healthz", healthz), Route("/echo", echo, methods=["GET", "POST"]),
                             Route("/stream", stream)])


@contextlib.contextmanager
def running_process(cmd: list[str], health_url: str, env: dict[str, str] | None = None) -> Iterator[Any]:
    """Any server process, until ``health_url`` answers (deadline 120 s); stopped with SIGTERM at the end."""
    import tempfile

    log = tempfile.NamedTemporaryFile(prefix="stormguard-proc-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env={**os.environ, **(env or {})}, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        if not wait_healthy(health_url, proc):
            raise RuntimeError(f"{cmd[:4]} did not start:\n{open(log.name).read()[-3000:]}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.unlink(log.name)
