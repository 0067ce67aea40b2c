"""Reputation gate seam: a pluggable async callable between the breaker and the limiter.

The reputation store (``stormguard.scoring``, another issue) provides the real gate; until then the default admits
everyone. A gate looks at the :class:`RequestContext` (address, JA3/JA4, SNI, token) and returns ``None`` (admit,
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
                 exempt_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.gate = gate
        self.refuser = refuser
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
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
