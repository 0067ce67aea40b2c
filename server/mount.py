"""Mount stormguard's defence layers on an existing Starlette or FastAPI app: :func:`protect`.

The same stack as ``stormguard serve`` (:func:`stormguard.server.app.build_stack`: identity → breaker →
reputation gate → limiter → quota, their store, live rules and background tasks), inserted as the outermost
pure-ASGI middleware of the app, ahead of the app's own; the blocked-client fast path answers known-blocked
addresses before anything else runs. The stack's background tasks start and stop with the app: its lifespan is
wrapped (the app's own startup and shutdown still run, inside stormguard's).

.. code-block:: python

    from fastapi import FastAPI
    from stormguard.server import protect

    app = FastAPI()

    @app.get("/stream")
    async def stream(): ...

    protect(app, sse_paths=("/stream",), store="redis://127.0.0.1:6379/0")

Which paths each layer guards is configuration: ``sse_paths`` are the stream routes (the quota counts them, and
refusals there are EventSource-friendly: a paced ``retry:`` or a 204); ``limited_paths`` are rate limited (default:
every path but ``/healthz`` and ``/metrics``); ``reputation_paths`` consult the store (default: ``sse_paths``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from stormguard.server.app import Stack, build_stack
from stormguard.server.ops.settings import ServerSettings

#: ``limited_paths`` entry meaning every path (but the exempt ``/healthz`` and ``/metrics``).
ALL_PATHS = ("*",)


class FastPathMiddleware:
    """Pure ASGI: a known-blocked address is answered before the rest of the stack (see ``layers/fastpath``)."""

    def __init__(self, app: Any, fast_path: Any) -> None:
        self.app = app
        self.fast_path = fast_path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.fast_path is not None:
            refusal = self.fast_path.check(scope)
            if refusal is not None:
                await send(refusal[0])
                await send(refusal[1])
                return
        await self.app(scope, receive, send)


def protect(app: Any, settings: ServerSettings | None = None, *, sse_paths: tuple[str, ...] = ("/events",),
            limited_paths: tuple[str, ...] | None = None, reputation_paths: tuple[str, ...] | None = None,
            store: str | None = None, config: Any = None, model: Any = None, **seams: Any) -> Stack:
    """Put stormguard's layers in front of ``app`` (a Starlette or FastAPI app, before it starts) and return the
    :class:`~stormguard.server.app.Stack` (its ``rt.metrics`` holds the counters; ``rt.metrics.render()`` gives the
    Prometheus page to serve where you like).

    ``store`` (``memory://`` default, ``redis://…``) and ``config`` (a :class:`stormguard.config.Config`, default
    the configuration file / environment) give the reputation store and rules; ``model`` a behaviour bundle for
    live scoring (default none).
    """
    if getattr(app, "middleware_stack", None) is not None:
        raise RuntimeError("protect(app) must be called before the app starts serving")
    if not hasattr(app, "user_middleware") or not hasattr(app, "router"):
        raise TypeError("protect() mounts into a Starlette or FastAPI app; for any other ASGI app or another "
                        "language, run `stormguard proxy` in front of it")
    s = dataclasses.replace(settings or ServerSettings())
    s.limited_paths = tuple(limited_paths if limited_paths is not None else ALL_PATHS)
    s.reputation_paths = tuple(reputation_paths if reputation_paths is not None else sse_paths)
    s.jwt_paths = tuple(sse_paths)
    reputation = seams.pop("reputation", None)
    if reputation is None and s.reputation:
        from stormguard.server.layers.reputation_gate import ReputationService

        from stormguard.config import load_config

        reputation = ReputationService.from_config(config or load_config(), s, store_url=store)
    stack = build_stack(s, reputation=reputation, model=model, sse_paths=tuple(sse_paths), **seams)
    from starlette.middleware import Middleware

    layers = [Middleware(FastPathMiddleware, fast_path=stack.fast_path), *stack.middleware]
    app.user_middleware[0:0] = layers          # outermost, in DESIGN's order, ahead of the app's own middleware
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with stack.lifespan(application), inner(application) as state:
            yield state

    app.router.lifespan_context = lifespan
    app.state.stormguard = stack.rt
    return stack
