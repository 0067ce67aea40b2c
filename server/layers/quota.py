"""Quota layer: concurrent streams per client, by tier, announced in ``X-IP-Rating``.

The seam for tiers: :class:`TieredStreamQuota` asks ``tier_of(ctx)`` (default: the tier the reputation gate put
on the context, which is the configured default tier until a gate exists) and applies that tier's
:class:`TierLimits`. The hub enforces the tier's idle timeout and lifetime through ``ctx.extra["limits"]``.
Counts live in a dict that holds only clients with open streams, so it is bounded by the open streams.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from stormguard.server.context import RequestContext, get_context
from stormguard.server.ops.settings import TierLimits


class StreamQuota(Protocol):
    """What the quota layer needs; replace it to pool by tenant, token or JWT claim."""

    def acquire(self, ctx: RequestContext, force: bool = False) -> bool: ...

    def release(self, ctx: RequestContext) -> None: ...


class TieredStreamQuota:
    """Per-client concurrent-stream cap by tier (DESIGN.md: trusted 8, neutral 3, low 1)."""

    def __init__(self, tiers: Mapping[str, TierLimits], *, default_tier: str = "neutral",
                 tier_of: Callable[[RequestContext], str] | None = None,
                 key_of: Callable[[RequestContext], str] | None = None) -> None:
        if default_tier not in tiers:
            raise ValueError(f"default tier {default_tier!r} is not one of {sorted(tiers)}")
        self.tiers = dict(tiers)
        self.default_tier = default_tier
        self.tier_of = tier_of or (lambda ctx: ctx.tier)
        self.key_of = key_of or (lambda ctx: ctx.identity.ip)
        self.open: dict[str, int] = {}

    def acquire(self, ctx: RequestContext, force: bool = False) -> bool:
        tier = self.tier_of(ctx)
        if tier not in self.tiers:
            tier = self.default_tier
        ctx.tier = tier
        limits = self.tiers[tier]
        ctx.extra["limits"] = limits
        key = self.key_of(ctx)
        n = self.open.get(key, 0)
        if n >= limits.max_streams and not force:
            return False
        self.open[key] = n + 1
        ctx.extra["quota_key"] = key
        return True

    def release(self, ctx: RequestContext) -> None:
        key = ctx.extra.pop("quota_key", None)
        if key is None:
            return
        n = self.open.get(key, 0) - 1
        if n > 0:
            self.open[key] = n
        else:
            self.open.pop(key, None)


class QuotaMiddleware:
    """Pure-ASGI: acquire before the handler, release when it returns; adds ``X-IP-Rating`` without buffering."""

    def __init__(self, app: Any, *, quota: StreamQuota, refuser: Any, paths: tuple[str, ...] = ("/events",),
                 rating_header: bytes = b"x-ip-rating") -> None:
        self.app = app
        self.quota = quota
        self.refuser = refuser
        self.paths = paths
        self.rating_header = rating_header

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        if not await _settled(self.quota.acquire(ctx)):
            reason = ctx.extra.pop("quota_reason", "quota")     # a pool may say which quota (tenant_quota)
            if await self.refuser.refuse(scope, send, layer="quota", reason=reason):
                return
            await _settled(self.quota.acquire(ctx, force=True))
        headers = [(self.rating_header, ctx.tier.encode())]
        if ctx.degraded:       # past a soft threshold: admitted, warned, and handed a longer retry:
            headers.append((b"x-stormguard-warning", ctx.extra.get("warning", "rate").encode()))

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            await _settled(self.quota.release(ctx))


async def _settled(value: Any) -> Any:
    """A quota's answer: shared quotas (:mod:`.quota_shared`) answer with a coroutine, local ones directly."""
    return await value if inspect.isawaitable(value) else value
