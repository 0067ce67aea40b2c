"""Limiter layer: token buckets per client address and per bearer token, with soft and hard thresholds.

Algorithm: GCRA (the "virtual scheduling" form of a token bucket). Each key holds ONE float, its theoretical
arrival time (TAT); a request is admitted when ``max(TAT, now) + 1/rate − now ≤ burst/rate``. The useful property
for memory: an entry whose TAT is in the past is a *full* bucket, exactly equivalent to no entry — so idle entries
are dropped losslessly. Entries sit in a dict in touch order (re-inserted on every take); each take drops up to two
expired entries from the front, so the map tracks the clients active in the last ``burst/rate`` seconds, and a hard
``max_entries`` cap evicts the least recently touched entry even if not yet expired (counted as *lossy*: it
forgives that client a little). Millions of distinct addresses therefore cost at most ``max_entries`` × ~100 B.

Soft threshold: admitted with fewer than ``soft_remaining`` tokens left → the request is marked *degraded* (the
hub hands it a longer ``retry:``, the quota layer adds ``X-Stormguard-Warning``, ``on_warn`` may audit it). Hard
threshold: no token → refused (``rate``/``token_rate``). Per-token buckets key on ``identity.token_key``: the hash
of the bearer token, or tenant+subject of a verified JWT (:mod:`tenants`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from stormguard.server.context import get_context


class GcraBuckets:
    """Token buckets keyed by string; bounded; clock injectable."""

    def __init__(self, rate: float, burst: float, *, max_entries: int = 1_000_000,
                 clock: Callable[[], float] = time.monotonic,
                 on_evict: Callable[[bool], None] | None = None) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.interval = 1.0 / rate
        self.capacity = burst * self.interval
        self.max_entries = max_entries
        self.clock = clock
        self.on_evict = on_evict or (lambda lossless: None)
        self._tat: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._tat)

    def take(self, key: str) -> tuple[bool, float, float]:
        """(admitted, tokens left after this request, seconds until a token is available when refused)."""
        now = self.clock()
        tats = self._tat
        tat = tats.pop(key, None)
        start = tat if tat is not None and tat > now else now
        new = start + self.interval
        if new - now > self.capacity + 1e-9:
            tats[key] = tat  # type: ignore[assignment]   # refused: unchanged, but now most recently touched
            return False, 0.0, new - now - self.capacity
        tats[key] = new
        self._trim(now)
        # rounded: (2i - i) / i comes out as 0.9999999999995 and would mark every new client as past the soft limit
        return True, round((self.capacity - (new - now)) / self.interval, 9), 0.0

    def _trim(self, now: float) -> None:
        tats = self._tat
        for _ in range(2):                                   # amortised expiry: lossless
            key = next(iter(tats))
            if tats[key] > now:
                break
            del tats[key]
            self.on_evict(True)
        while len(tats) > self.max_entries:                  # hard cap: least recently touched goes
            key = next(iter(tats))
            lossless = tats.pop(key) <= now
            self.on_evict(lossless)


class LimiterMiddleware:
    """Pure-ASGI limiter: per-address bucket on ``paths`` (new SSE connections), per-token bucket everywhere."""

    def __init__(self, app: Any, *, refuser: Any, ip_buckets: GcraBuckets | None = None,
                 token_buckets: GcraBuckets | None = None, ip_soft_remaining: float = 1.0,
                 token_soft_remaining: float = 0.0, paths: tuple[str, ...] | None = ("/events",),
                 exempt_paths: tuple[str, ...] = (), on_degrade: Callable[[str], None] | None = None,
                 on_warn: Callable[[Any, str], None] | None = None, shared: Any = None) -> None:
        self.app = app
        self.shared = shared          # a limiter_redis.RedisGcra: buckets shared by every process on one Redis
        self.refuser = refuser
        self.ip_buckets = ip_buckets
        self.token_buckets = token_buckets
        self.ip_soft = ip_soft_remaining
        self.token_soft = token_soft_remaining
        self.paths = paths
        self.exempt_paths = exempt_paths
        self.on_degrade = on_degrade or (lambda kind: None)
        self.on_warn = on_warn        # per-token soft threshold crossed: e.g. an audit record with action "warn"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        if self.shared is not None:
            await self._call_shared(scope, receive, send, ctx)
            return
        if self.ip_buckets is not None and (self.paths is None or scope["path"] in self.paths):
            ok, left, _ = self.ip_buckets.take(ctx.identity.ip)
            if await self._decide("ip", ok, left, scope, send, ctx):
                return
        key = ctx.identity.token_key
        if self.token_buckets is not None and key is not None:
            ok, left, _ = self.token_buckets.take(key)
            if await self._decide("tok", ok, left, scope, send, ctx):
                return
        await self.app(scope, receive, send)

    async def _decide(self, kind: str, ok: bool, left: float, scope: dict[str, Any], send: Any, ctx: Any) -> bool:
        """One bucket's verdict, the same for local and shared buckets: refuse (True when the refusal was sent),
        or mark the request degraded below the soft threshold."""
        ip = kind == "ip"
        if not ok:
            return bool(await self.refuser.refuse(scope, send, layer="limiter", reason="rate" if ip else "token_rate"))
        if left < (self.ip_soft if ip else self.token_soft):
            ctx.degraded = True
            ctx.extra["warning"] = "rate" if ip else "token_rate"
            self.on_degrade("ip" if ip else "token")
            if not ip and self.on_warn is not None:
                self.on_warn(ctx, "token_rate")
        return False

    async def _call_shared(self, scope: dict[str, Any], receive: Any, send: Any, ctx: Any) -> None:
        """The same decisions with the buckets in Redis: both taken in one round trip (the token bucket is skipped
        once the address bucket refuses, unless in shadow mode, where the refused request goes on)."""
        items: list[tuple[str, str]] = []
        if self.ip_buckets is not None and (self.paths is None or scope["path"] in self.paths):
            items.append(("ip", ctx.identity.ip))
        key = ctx.identity.token_key
        if self.token_buckets is not None and key is not None:
            items.append(("tok", key))
        if not items:
            await self.app(scope, receive, send)
            return
        decisions = await self.shared.take(items, stop=not getattr(self.refuser, "shadow", False))
        for i, (kind, item_key) in enumerate(items):
            if i < len(decisions):
                ok, left = decisions[i][0], decisions[i][1]
            else:        # skipped after a refusal the refuser did not enforce: take it now
                ok, left = (await self.shared.take([(kind, item_key)]))[0][:2]
            if await self._decide(kind, ok, left, scope, send, ctx):
                return
        await self.app(scope, receive, send)
