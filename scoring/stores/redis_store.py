"""``redis://``, ``rediss://``, ``unix://`` — the reputation store shared by every server instance.

One ``EVALSHA`` per read-modify-write (scripts in :mod:`.lua`), reloaded after ``NOSCRIPT`` (a restarted or
flushed Redis); reads are one ``HMGET`` with decay computed here from the stored timestamp. Keys carry a hash tag
``{prefix}`` (or ``{prefix:N}`` with ``shards`` > 1) so that everything one script touches is in one Cluster slot.
This class raises on Redis errors; :class:`~.failover.FailoverStore` is what turns them into a degraded mode.
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections.abc import Iterable
from typing import Any

from stormguard.scoring.reputation import Reputation, clamp
from stormguard.scoring.stores import lua
from stormguard.scoring.stores.base import ReputationStore, StoreOptions

SEP = "\x1f"  # between reasons
REC = "\x1e"  # between fields of the batch-load payload


def _fmt(v: float) -> str:
    return repr(float(v))


class RedisStore(ReputationStore):
    """Reputation entries in Redis hashes, ranked in a sorted set, updated atomically in Lua."""

    scheme = "redis"

    def __init__(self, client: Any, options: StoreOptions | None = None, prefix: str = "sg", shards: int = 1) -> None:
        super().__init__(options)
        if "{" in prefix or "}" in prefix:
            raise ValueError("redis store: prefix must not contain braces (they are added as the hash tag)")
        self.client = client
        self.cluster = type(client).__name__ == "RedisCluster"
        self.prefix = prefix
        self.shards = max(1, int(shards))
        self._src = {"update": lua.UPDATE, "load": lua.LOAD, "delete": lua.DELETE, "prune": lua.PRUNE}
        self._sha = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in self._src.items()}
        self.script_reloads = 0

    @classmethod
    def from_url(cls, url: str, options: StoreOptions | None = None, prefix: str = "sg", shards: int = 1,
                 timeout: float = 0.05, bulk_timeout: float = 30.0, max_connections: int = 32,
                 cluster: bool = False) -> RedisStore:
        """A store on a fresh ``redis.asyncio`` client (connect timeout at least 1 s; the read timeout is the
        longer ``bulk_timeout`` because batch loads wait for big replies; hot-path calls are bounded by the
        failover wrapper). ``cluster=True`` uses the Redis Cluster client (any node's address as the URL)."""
        if cluster:
            from redis.asyncio.cluster import RedisCluster

            client = RedisCluster.from_url(url, decode_responses=True, max_connections=max_connections,
                                           socket_connect_timeout=max(timeout, 1.0), socket_timeout=bulk_timeout)
            return cls(client, options, prefix, shards)
        import redis.asyncio as aioredis

        # A blocking pool: a burst of concurrent callers waits for a connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=bulk_timeout, decode_responses=True,
            socket_connect_timeout=max(timeout, 1.0), socket_timeout=bulk_timeout)
        return cls(aioredis.Redis(connection_pool=pool), options, prefix, shards)

    # -- keys --------------------------------------------------------------------------------------------------
    def tag(self, key: str) -> str:
        if self.shards == 1:
            return "{" + self.prefix + "}"
        return "{" + f"{self.prefix}:{zlib.crc32(key.encode()) % self.shards}" + "}"

    def keys_for(self, key: str) -> tuple[str, str, str]:
        """(hash, rank zset, expiry zset) of a client key."""
        tag = self.tag(key)
        return f"{tag}:k:{key}", f"{tag}:z", f"{tag}:x"

    def _tags(self) -> list[str]:
        if self.shards == 1:
            return ["{" + self.prefix + "}"]
        return ["{" + f"{self.prefix}:{i}" + "}" for i in range(self.shards)]

    # -- scripts -----------------------------------------------------------------------------------------------
    async def _evalsha(self, name: str, keys: list[str], args: list[Any]) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return await self.client.evalsha(self._sha[name], len(keys), *keys, *args)
        except NoScriptError:
            # Redis restarted or SCRIPT FLUSH: load once and retry (the SHA is a content hash, so it is the same).
            self.script_reloads += 1
            await self.client.script_load(self._src[name])
            return await self.client.evalsha(self._sha[name], len(keys), *keys, *args)

    def _parse(self, key: str, raw: list[Any]) -> Reputation:
        s, t, b, u, r = raw
        return Reputation(key, float(s), float(t), float(b or 0), float(u or 0),
                          tuple(x for x in (r or "").split(SEP) if x))

    # -- API ---------------------------------------------------------------------------------------------------
    async def get(self, key: str, now: float | None = None) -> Reputation:
        now = self.now() if now is None else now
        h, _, _ = self.keys_for(key)
        raw = await self.client.hmget(h, "s", "t", "b", "u", "r")
        if raw[0] is None:
            return Reputation(key, clamp(self.options.initial_score), now)
        return self._parse(key, raw).at(now, self.options.lam)

    async def update(self, key: str, op: str, value: float = 0.0, reason: str = "", now: float | None = None,
                     block_score: float | None = None, block_seconds: float = 0.0) -> Reputation:
        now = self.now() if now is None else now
        h, z, x = self.keys_for(key)
        o = self.options
        if SEP in reason:
            reason = reason.replace(SEP, " ")
        raw = await self._evalsha("update", [h, z, x], [
            key, _fmt(now), op, _fmt(value), reason, _fmt(o.lam), "" if block_score is None else _fmt(block_score),
            _fmt(block_seconds), int(o.max_reasons), _fmt(o.idle_ttl), _fmt(o.initial_score), self.tag(key) + ":k:",
        ])
        return self._parse(key, raw)

    async def delete(self, key: str) -> bool:
        h, z, x = self.keys_for(key)
        return bool(await self._evalsha("delete", [h, z, x], [key]))

    async def top(self, n: int = 10, worst: bool = True, now: float | None = None) -> list[Reputation]:
        now = self.now() if now is None else now
        found: list[Reputation] = []
        if n <= 0:
            return found
        for tag in self._tags():
            z = f"{tag}:z"
            members = await (self.client.zrange(z, 0, n - 1) if worst else self.client.zrevrange(z, 0, n - 1))
            if not members:
                continue
            async with self.client.pipeline(transaction=False) as pipe:
                for m in members:
                    pipe.hmget(f"{tag}:k:{m}", "s", "t", "b", "u", "r")
                rows = await pipe.execute()
            stale = [m for m, raw in zip(members, rows, strict=True) if raw[0] is None]
            if stale:  # atomically, only those still without a hash (one may have been written meanwhile)
                await self._evalsha("prune", [z, f"{tag}:x"], [f"{tag}:k:", *stale])
            found += [self._parse(m, raw).at(now, self.options.lam)
                      for m, raw in zip(members, rows, strict=True) if raw[0] is not None]
        found.sort(key=lambda r: r.score, reverse=not worst)
        return found[:n]

    async def load_scores(self, scores: Iterable[tuple[str, float]], now: float | None = None,
                          reason: str = "model", chunk: int = 1000, depth: int = 8) -> int:
        """Pipelined bulk load: ``chunk`` keys per script call, ``depth`` calls per round trip, and the next batch
        is built while Redis executes the previous one. Same result as one ``set`` per key.

        Keys must not contain the separators \\x1e / \\x1f (a ValueError names the key).
        """
        now = self.now() if now is None else now
        o = self.options
        if SEP in reason or REC in reason:
            raise ValueError("reason must not contain \\x1e or \\x1f")
        await self.client.script_load(self._src["load"])
        head = [_fmt(now), _fmt(o.lam), _fmt(o.idle_ttl), reason, int(o.max_reasons)]
        sha = self._sha["load"]
        pending: dict[str, list[str]] = {}
        calls: list[tuple[str, str]] = []
        inflight: asyncio.Task[Any] | None = None
        total = 0

        async def send(batch: list[tuple[str, str]]) -> None:
            if self.cluster:  # cluster pipelines refuse EVALSHA: concurrent calls, routed per slot, instead
                await asyncio.gather(*(self.client.evalsha(sha, 2, f"{tag}:z", f"{tag}:x", *head, f"{tag}:k:",
                                                           payload) for tag, payload in batch))
                return
            async with self.client.pipeline(transaction=False) as pipe:
                for tag, payload in batch:
                    pipe.evalsha(sha, 2, f"{tag}:z", f"{tag}:x", *head, f"{tag}:k:", payload)
                await pipe.execute()

        async def flush() -> None:
            nonlocal inflight, calls
            if inflight is not None:
                await inflight
            inflight = asyncio.ensure_future(send(calls))
            calls = []
            await asyncio.sleep(0)  # let it write; Redis works while the next batch is built

        single = "{" + self.prefix + "}" if self.shards == 1 else None
        for key, score in scores:
            if REC in key or SEP in key:
                raise ValueError(f"key {key!r} contains a separator character (\\x1e or \\x1f)")
            tag = single or self.tag(key)
            parts = pending.get(tag)
            if parts is None:
                parts = pending[tag] = []
            s = float(score)
            parts.append(f"{key}{REC}{100.0 if s > 100.0 else -100.0 if s < -100.0 else s!r}")
            total += 1
            if len(parts) >= chunk:
                calls.append((tag, REC.join(pending.pop(tag))))
                if len(calls) >= depth:
                    await flush()
        calls.extend((tag, REC.join(parts)) for tag, parts in pending.items())
        if calls:
            await flush()
        if inflight is not None:
            await inflight
        return total

    async def count(self) -> int:
        total = 0
        for tag in self._tags():
            total += int(await self.client.zcard(f"{tag}:z"))
        return total

    async def clear(self) -> None:
        for tag in self._tags():
            batch: list[str] = []
            async for k in self.client.scan_iter(match=tag.replace("{", "\\{").replace("}", "\\}") + ":*",
                                                 count=1000):
                batch.append(k)
                if len(batch) >= 1000:
                    await self.client.delete(*batch)
                    batch.clear()
            if batch:
                await self.client.delete(*batch)

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()
