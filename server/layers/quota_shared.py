"""Shared quota counters: concurrent-stream counts held as LEASES in Redis (or Redis Cluster), so every server
process on one store enforces the same per-client stream limit and the same tenant pools.

Each open stream holds one lease: a member ``<process id>:<n>`` of a sorted set scored by its expiry (Redis
``TIME``, milliseconds, so hosts need not agree on the clock). Acquiring drops the expired members and admits when
fewer than the limit remain — one Lua call, atomic across processes. A heartbeat renews this process's leases every
``lease / 3`` seconds; closing a stream removes its member. A process that dies (SIGKILL, host lost) stops renewing,
so its streams stop counting at most ``lease`` seconds later (``quota_lease_seconds``, default 15 s).

Keys (``prefix`` default ``sg:q``): ``<prefix>:c:{<client key>}`` per client, ``<prefix>:t:{<tenant>}`` per tenant
pool. The hash tag is the client (or tenant), so the keys spread over a Cluster's slots and each call touches one
key; a tenant-pool stream takes its client lease then its tenant lease (two slots, two calls) and gives the first
back if the second refuses. Keys expire ``lease`` after their last write, so nothing needs sweeping.

Outage: a Redis error or a call slower than ``timeout`` → the stream is counted by this process alone (fail-open to
per-process quotas, as before this module), counted by ``on_fallback``; Redis is re-probed at most every
``retry_seconds``. A renewal that finds a member gone (an outage longer than the lease) does not resurrect it:
counts may undershoot until those streams close, never overshoot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from stormguard.server.context import RequestContext
from stormguard.server.layers.quota import StreamQuota, TieredStreamQuota
from stormguard.server.ops.settings import TierLimits

log = logging.getLogger("stormguard.server.layers.quota")

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# KEYS[1] lease set; ARGV: lease ms, limit, member, force ('1' admits past the limit)
ACQUIRE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[4] ~= '1' and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
# KEYS[1] lease set; ARGV: lease ms, members… → how many were still there (renewed)
RENEW = _NOW + """
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if n > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""
_SHA = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in (("acquire", ACQUIRE), ("renew", RENEW))}
_SRC = {"acquire": ACQUIRE, "renew": RENEW}

Lease = tuple[str, str]      # (key, member); member "" = counted locally (Redis was unavailable)


def redis_client_from_url(url: str, *, timeout: float, max_connections: int = 32) -> Any:
    """A ``redis.asyncio`` client for a stormguard store URL: the Cluster client when it says ``cluster=1`` (any
    node's address), else a plain one. stormguard's own parameters are taken off the URL first."""
    from stormguard.scoring.stores import split_store_url

    bare, own = split_store_url(url)
    kw: dict[str, Any] = {"decode_responses": True, "max_connections": own.get("max_connections", max_connections),
                          "socket_connect_timeout": max(timeout, 0.5), "socket_timeout": max(timeout, 0.5)}
    if str(own.get("cluster", "0")).lower() in ("1", "true", "yes", "on"):
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(bare, **kw)
    import redis.asyncio as aioredis
    from stormguard.scoring.stores.pool import QueueingPool

    # a bounded pool whose callers queue (up to the timeout) instead of failing with MaxConnectionsError
    pool = QueueingPool.from_url(bare, decode_responses=True, max_connections=kw["max_connections"],
                                 timeout=max(timeout, 0.5), socket_connect_timeout=kw["socket_connect_timeout"],
                                 socket_timeout=kw["socket_timeout"])
    return aioredis.Redis(connection_pool=pool)


async def initialize_cluster_clients(*clients: Any) -> None:
    """Build each Redis Cluster client's slot table now, before requests arrive: redis-py's async ``RedisCluster``
    (8.1) fails commands with ``'NoneType' object has no attribute 'writelines'`` when concurrent first calls race
    to initialize it (seen at 8 calls in flight, ``bench/cluster.py``). Plain clients and ``None`` are skipped; an
    unreachable Cluster is left to initialize lazily (the callers have their outage paths)."""
    for client in clients:
        if type(client).__name__ == "RedisCluster":
            with contextlib.suppress(Exception):
                await client.initialize()


class LeaseCounter:
    """Counted leases per key in Redis, renewed by this process's heartbeat; local counts while Redis is down."""

    def __init__(self, client: Any, *, prefix: str = "sg:q", lease: float = 15.0, timeout: float = 0.5,
                 retry_seconds: float = 1.0, on_fallback: Callable[[str], None] | None = None) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("quota prefix must not contain braces (the client or tenant is the hash tag)")
        if lease <= 0:
            raise ValueError("quota lease must be > 0 seconds")
        self.client = client
        self.prefix = prefix
        self.lease = lease
        self.lease_ms = max(1, int(lease * 1000))
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.on_fallback = on_fallback or (lambda kind: None)
        self.process = secrets.token_hex(6)
        self._seq = itertools.count()
        self.held: dict[str, set[str]] = {}        # key -> members of this process (what the heartbeat renews)
        self.local: dict[str, int] = {}             # key -> streams counted here while Redis was unavailable
        self.down = False
        self._retry_at = 0.0
        self.lost = 0                               # members a renewal found expired (outage longer than the lease)
        self.script_reloads = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "sg:q", lease: float = 15.0, **kw: Any) -> LeaseCounter:
        """``redis://…`` / ``…?cluster=1`` (stormguard's store parameters; a URL ``prefix`` gets ``:q``)."""
        from stormguard.scoring.stores import split_store_url

        _, own = split_store_url(url)
        if "prefix" in own:
            prefix = own["prefix"] + ":q"
        timeout = float(own.get("timeout", kw.pop("timeout", 0.5)))
        client = redis_client_from_url(url, timeout=timeout)
        return cls(client, prefix=prefix, lease=lease, timeout=timeout, **kw)

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{{{name}}}"

    async def _eval(self, name: str, key: str, args: list[Any]) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return await self.client.evalsha(_SHA[name], 1, key, *args)
        except NoScriptError:      # restarted, flushed or failed-over node: load once and retry (same hash)
            self.script_reloads += 1
            return await self.client.eval(_SRC[name], 1, key, *args)

    async def acquire(self, kind: str, name: str, limit: int, force: bool = False) -> Lease | None:
        """A lease on ``name``'s count (kind ``c`` client, ``t`` tenant) when under ``limit`` (or ``force``)."""
        key = self.key(kind, name)
        if not self.down or time.monotonic() >= self._retry_at:
            member = f"{self.process}:{next(self._seq)}"
            try:
                ok = await asyncio.wait_for(
                    self._eval("acquire", key, [self.lease_ms, int(limit), member, "1" if force else "0"]),
                    self.timeout)
            except Exception as exc:  # noqa: BLE001 - any Redis/connection/timeout failure: count locally
                if not self.down:
                    log.warning("quota: Redis unavailable (%s: %s); counting streams per process until it is back",
                                type(exc).__name__, exc)
                self.down = True
                self._retry_at = time.monotonic() + self.retry_seconds
            else:
                if self.down:
                    log.warning("quota: Redis is back; stream counts shared again")
                    self.down = False
                if not int(ok):
                    return None
                self.held.setdefault(key, set()).add(member)
                return key, member
        self.on_fallback(kind)
        n = self.local.get(key, 0)
        if n >= limit and not force:
            return None
        self.local[key] = n + 1
        return key, ""

    async def release(self, lease: Lease) -> None:
        key, member = lease
        if not member:
            n = self.local.get(key, 0) - 1
            if n > 0:
                self.local[key] = n
            else:
                self.local.pop(key, None)
            return
        members = self.held.get(key)
        if members is not None:
            members.discard(member)
            if not members:
                del self.held[key]
        try:
            await asyncio.wait_for(self.client.zrem(key, member), self.timeout)
        except Exception:  # noqa: BLE001 - not renewed any more: the lease expires by itself within `lease`
            pass

    async def renew(self) -> int:
        """Renew every lease of this process (one call per key, a few dozen at a time); the number renewed."""
        renewed = 0
        items = [(key, sorted(members)) for key, members in self.held.items()]
        for i in range(0, len(items), 64):
            batch = items[i:i + 64]
            replies = await asyncio.gather(*(self._eval("renew", key, [self.lease_ms, *members])
                                             for key, members in batch), return_exceptions=True)
            for (key, members), reply in zip(batch, replies, strict=True):
                if isinstance(reply, BaseException):
                    continue
                renewed += int(reply)
                self.lost += max(0, len(members) - int(reply)) if key in self.held else 0
        return renewed

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await asyncio.wait_for(self.renew(), max(self.lease / 3, self.timeout))
            except Exception as exc:  # noqa: BLE001 - next beat retries; leases last `lease`
                log.debug("quota: lease renewal failed: %s: %s", type(exc).__name__, exc)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._heartbeat(), name="stormguard-quota-leases")

    async def close(self) -> None:
        """Stop renewing and give back every lease of this process (streams are closed by then)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for key, members in list(self.held.items()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.zrem(key, *members), self.timeout)
        self.held.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.aclose(), 2.0)


class SharedTieredQuota(TieredStreamQuota):
    """:class:`TieredStreamQuota` whose per-client counts are leases shared by every process on the store."""

    def __init__(self, tiers: Mapping[str, TierLimits], leases: LeaseCounter, **kw: Any) -> None:
        super().__init__(tiers, **kw)
        self.leases = leases

    async def acquire(self, ctx: RequestContext, force: bool = False) -> bool:  # type: ignore[override]
        tier = self.tier_of(ctx)
        if tier not in self.tiers:
            tier = self.default_tier
        ctx.tier = tier
        limits = self.tiers[tier]
        ctx.extra["limits"] = limits
        lease = await self.leases.acquire("c", self.key_of(ctx), limits.max_streams, force)
        if lease is None:
            return False
        ctx.extra["quota_lease"] = lease
        return True

    async def release(self, ctx: RequestContext) -> None:  # type: ignore[override]
        lease = ctx.extra.pop("quota_lease", None)
        if lease is not None:
            await self.leases.release(lease)


class SharedTenantQuota:
    """The per-client quota ``inner`` plus shared per-tenant pools (same semantics as
    :class:`~stormguard.server.layers.tenants.TenantStreamQuota`, counts as leases)."""

    def __init__(self, inner: StreamQuota | SharedTieredQuota, leases: LeaseCounter, *, default_pool: int = 1000,
                 pools: Mapping[str, int] | None = None) -> None:
        self.inner = inner
        self.leases = leases
        self.default_pool = default_pool
        self.pools = dict(pools or {})

    async def acquire(self, ctx: RequestContext, force: bool = False) -> bool:
        if not await _maybe(self.inner.acquire(ctx, force)):
            return False
        tenant = ctx.extra.get("tenant")
        if tenant is None:
            return True
        lease = await self.leases.acquire("t", tenant, self.pools.get(tenant, self.default_pool), force)
        if lease is None:
            await _maybe(self.inner.release(ctx))
            ctx.extra["quota_reason"] = "tenant_quota"
            return False
        ctx.extra["tenant_lease"] = lease
        return True

    async def release(self, ctx: RequestContext) -> None:
        await _maybe(self.inner.release(ctx))
        lease = ctx.extra.pop("tenant_lease", None)
        if lease is not None:
            await self.leases.release(lease)


async def _maybe(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value
