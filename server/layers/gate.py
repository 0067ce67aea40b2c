"""Reputation gate seam: a pluggable async callable between the breaker and the limiter.

:class:`stormguard.server.layers.reputation_gate.ReputationGateAdapter` is the real gate (the reputation store of
``stormguard.scoring``); without one the default admits everyone. A gate looks at the :class:`RequestContext` (address, JA3/JA4, SNI, token) and returns ``None`` (admit,
no opinion) or a :class:`GateDecision` that may refuse (``blocked`` → *stop* by default) and/or annotate the
request with its tier and score — the quota layer and the ``retry:`` chooser read ``ctx.tier`` afterwards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from stormguard.server.context import RequestContext, get_context


@dataclass(slots=True)
class GateDecision:
    """A gate's verdict. ``retry_ms`` lets a block hand out "come back when the block ends"."""

    allow: bool = True
    tier: str | None = None
    score: float | None = None
    reason: str = "blocked"
    retry_ms: int | None = None


ReputationGate = Callable[[RequestContext], Awaitable[GateDecision | None]]


async def allow_all(ctx: RequestContext) -> GateDecision | None:
    """The default gate: no reputation store yet, so no opinion."""
    return None


class ReputationGateMiddleware:
    """Pure-ASGI wrapper around a :data:`ReputationGate`."""

    def __init__(self, app: Any, *, gate: ReputationGate = allow_all, refuser: Any,
                 exempt_paths: tuple[str, ...] = (), paths: tuple[str, ...] | None = None) -> None:
        self.app = app
        self.gate = gate
        self.refuser = refuser
        self.exempt_paths = exempt_paths
        self.paths = paths        # None: every path; the store gate: new streams only (no store read per publish)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths or (
                self.paths is not None and scope["path"] not in self.paths):
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        ctx.extra["headers"] = scope.get("headers", ())   # a reference, for gates and observers (User-Agent…)
        ctx.extra["http_version"] = scope.get("http_version")  # "1.1", "2": which headers a browser must send
        decision = await self.gate(ctx)
        if decision is not None:
            if decision.tier is not None:
                ctx.tier = decision.tier
            if decision.score is not None:
                ctx.score = decision.score
            if not decision.allow and await self.refuser.refuse(scope, send, layer="reputation",
                                                                reason=decision.reason, retry_ms=decision.retry_ms):
                return
        await self.app(scope, receive, send)
