"""Shared limiter: the GCRA of :mod:`.limiter` with its TATs in Redis, so every server process on one Redis draws
from the same per-address and per-token buckets.

One Lua script (``EVALSHA``, reloaded after ``NOSCRIPT``) takes up to two buckets — the address's and the token's —
in one round trip per new connection, with exactly the local semantics: each key holds one TAT (seconds, as a
string), set with ``PX`` = time until the bucket is full again, so an idle key vanishes and "no key" == "full
bucket" (lossless, nothing to prune). A refusal leaves the key untouched. With ``stop`` set, a refused first bucket
skips the second (the local middleware does not take the token bucket of a refused request either).

Time comes from Redis (``TIME``) so processes on different hosts agree; tests may pass ``now``.

Keys: ``{prefix}:ip:<address>`` / ``{prefix}:tok:<token key>`` — one hash tag, so both keys of a call share a
Cluster slot (this class uses a plain, non-cluster client).

Outage: any Redis error or a call slower than ``timeout`` → the request is decided by the local
:class:`~.limiter.GcraBuckets` (fail-open to per-process limiting), counted in ``on_fallback``; the first failure
logs one warning, the recovery one line; while down, Redis is re-probed at most every ``retry_seconds``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from stormguard.server.layers.limiter import GcraBuckets

log = logging.getLogger("stormguard.server.layers.limiter")

Decision = tuple[bool, float, float]

# ARGV: now ('' = Redis TIME), stop ('1' = skip the 2nd key once the 1st refuses), then per key: interval, capacity
GCRA = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local out = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[1 + 2 * i])
  local capacity = tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '')
  local start = now
  if tat and tat > now then start = tat end
  local new = start + interval
  if new - now > capacity + 1e-9 then
    out[#out + 1] = {0, '0', string.format('%.17g', new - now - capacity)}
    if ARGV[2] == '1' then break end
  else
    redis.call('SET', KEYS[i], string.format('%.17g', new), 'PX', math.max(1, math.ceil((new - now) * 1000)))
    out[#out + 1] = {1, string.format('%.17g', (capacity - (new - now)) / interval), '0'}
  end
end
return out
"""
GCRA_SHA = hashlib.sha1(GCRA.encode()).hexdigest()


class RedisGcra:
    """Per-address and per-token GCRA buckets in Redis with the local buckets as fallback."""

    def __init__(self, client: Any, ip_local: GcraBuckets, token_local: GcraBuckets, *, prefix: str = "sg:lim",
                 timeout: float = 0.05, retry_seconds: float = 1.0,
                 on_fallback: Callable[[str], None] | None = None) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("limiter prefix must not contain braces (they are added as the hash tag)")
        self.client = client
        self.local = {"ip": ip_local, "tok": token_local}
        self.tag = "{" + prefix + "}"
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.on_fallback = on_fallback or (lambda kind: None)
        self.script_reloads = 0
        self.down = False
        self._retry_at = 0.0

    @classmethod
    def from_url(cls, url: str, ip_local: GcraBuckets, token_local: GcraBuckets, *, prefix: str = "sg:lim",
                 **kw: Any) -> RedisGcra:
        """``redis://…?timeout=0.05&retry_seconds=1&prefix=…`` (stormguard's store parameters; ``prefix`` of the
        URL, if any, gets ``:lim`` appended so limiter keys never mix with the reputation store's)."""
        import redis.asyncio as aioredis
        from stormguard.scoring.stores import split_store_url

        bare, own = split_store_url(url)
        if "prefix" in own:
            prefix = own["prefix"] + ":lim"
        timeout = own.get("timeout", kw.pop("timeout", 0.05))
        retry = own.get("retry_seconds", kw.pop("retry_seconds", 1.0))
        if str(own.get("cluster", "0")).lower() in ("1", "true", "yes", "on"):    # ?cluster=1: a Redis Cluster
            from stormguard.server.layers.quota_shared import redis_client_from_url

            client = redis_client_from_url(url, timeout=timeout)
            return cls(client, ip_local, token_local, prefix=prefix, timeout=timeout, retry_seconds=retry, **kw)
        from stormguard.scoring.stores.pool import QueueingPool

        # bounded and queueing: a burst waits for a connection (bounded by the decision's own timeout) instead of
        # failing with MaxConnectionsError; waits are counted (stormguard_redis_pool_queued_total{pool="limiter"})
        pool = QueueingPool.from_url(bare, decode_responses=True, max_connections=own.get("max_connections", 32),
                                     timeout=max(timeout, 0.5), socket_connect_timeout=max(timeout, 0.5),
                                     socket_timeout=max(timeout, 0.5))
        client = aioredis.Redis(connection_pool=pool)
        return cls(client, ip_local, token_local, prefix=prefix, timeout=timeout, retry_seconds=retry, **kw)

    def key(self, kind: str, key: str) -> str:
        return f"{self.tag}:{kind}:{key}"

    async def _eval(self, keys: list[str], args: list[Any]) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return await self.client.evalsha(GCRA_SHA, len(keys), *keys, *args)
        except NoScriptError:          # restarted or flushed Redis: load once and retry (same content hash)
            self.script_reloads += 1
            await self.client.script_load(GCRA)
            return await self.client.evalsha(GCRA_SHA, len(keys), *keys, *args)

    async def take_redis(self, items: list[tuple[str, str]], *, stop: bool = True,
                         now: float | None = None) -> list[Decision]:
        """The raw shared decision for ``[(kind, key), …]`` (kind ``ip`` or ``tok``); raises on Redis errors.
        Shorter than ``items`` when ``stop`` and an earlier bucket refused."""
        keys = [self.key(kind, key) for kind, key in items]
        args: list[Any] = ["" if now is None else repr(float(now)), "1" if stop else "0"]
        for kind, _ in items:
            b = self.local[kind]
            args += [repr(b.interval), repr(b.capacity)]
        raw = await self._eval(keys, args)
        return [(bool(int(ok)), round(float(left), 9), float(retry)) for ok, left, retry in raw]

    async def take(self, items: list[tuple[str, str]], *, stop: bool = True) -> list[Decision]:
        """Shared decisions, or the local buckets' while Redis is unavailable (never raises for Redis)."""
        if not self.down or time.monotonic() >= self._retry_at:
            try:
                out = await asyncio.wait_for(self.take_redis(items, stop=stop), self.timeout)
            except Exception as exc:  # noqa: BLE001 - any Redis/connection/timeout failure: limit locally
                if not self.down:
                    log.warning("limiter: Redis unavailable (%s: %s); limiting per process until it is back",
                                type(exc).__name__, exc)
                self.down = True
                self._retry_at = time.monotonic() + self.retry_seconds
            else:
                if self.down:
                    log.warning("limiter: Redis is back; buckets shared again")
                    self.down = False
                return out
        out = []
        for kind, key in items:
            self.on_fallback(kind)
            d = self.local[kind].take(key)
            out.append(d)
            if stop and not d[0]:
                break
        return out

    async def close(self) -> None:
        await self.client.aclose()
