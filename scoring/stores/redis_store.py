"""``redis://``, ``rediss://``, ``unix://`` — the reputation store shared by every server instance.

One ``EVALSHA`` per read-modify-write (scripts in :mod:`.lua`), reloaded after ``NOSCRIPT`` (a restarted or
flushed Redis); reads are one ``HMGET`` with decay computed here from the stored timestamp. Keys carry a hash tag
``{prefix}`` (or ``{prefix:N}`` with ``shards`` > 1) so that everything one script touches is in one Cluster slot.
This class raises on Redis errors; :class:`~.failover.FailoverStore` is what turns them into a degraded mode.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import math
import uuid
import zlib
from array import array
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
from stormguard.scoring.reputation import RANK_EPS, RANK_OFFSET, Reputation, check_value, clamp
from stormguard.scoring.stores import lua
from stormguard.scoring.stores.base import ReputationStore, StoreOptions

SEP = "\x1f"  # between reasons
REC = "\x1e"  # refused in batch-loaded keys (it marks the expiry tokens of loads)
TOKEN = REC  # first character of a batch load's expiry token in ``:x`` (see :mod:`.lua`)


SORT_WINDOW = 2_000_000  # rows a batch load sorts at a time (memory: ~40 bytes per row while sorting)


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
        from stormguard.scoring.stores.pool import QueueingPool

        pool = QueueingPool.from_url(
            url, max_connections=max_connections, timeout=bulk_timeout, decode_responses=True,
            socket_connect_timeout=max(timeout, 1.0), socket_timeout=bulk_timeout)
        return cls(aioredis.Redis(connection_pool=pool), options, prefix, shards)

    # -- keys --------------------------------------------------------------------------------------------------
    def tag(self, key: str) -> str:
        if self.shards == 1:
            return "{" + self.prefix + "}"
        return "{" + f"{self.prefix}:{zlib.crc32(key.encode()) % self.shards}" + "}"

    def keys_for(self, key: str) -> tuple[str, str, str, str]:
        """(hash, rank zset, expiry zset, block index) of a client key."""
        tag = self.tag(key)
        return f"{tag}:k:{key}", f"{tag}:z", f"{tag}:x", f"{tag}:b"

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
        h = self.keys_for(key)[0]
        raw = await self.client.hmget(h, "s", "t", "b", "u", "r")
        if raw[0] is None:
            return Reputation(key, clamp(self.options.initial_score), now)
        return self._parse(key, raw).at(now, self.options.lam)

    async def update(self, key: str, op: str, value: float = 0.0, reason: str = "", now: float | None = None,
                     block_score: float | None = None, block_seconds: float = 0.0) -> Reputation:
        check_value(op, value)
        now = self.now() if now is None else now
        keys = list(self.keys_for(key))
        o = self.options
        if SEP in reason:
            reason = reason.replace(SEP, " ")
        raw = await self._evalsha("update", keys, [
            key, _fmt(now), op, _fmt(value), reason, _fmt(o.lam), "" if block_score is None else _fmt(block_score),
            _fmt(block_seconds), int(o.max_reasons), _fmt(o.idle_ttl), _fmt(o.initial_score), self.tag(key) + ":k:",
        ])
        return self._parse(key, raw)

    async def delete(self, key: str) -> bool:
        return bool(await self._evalsha("delete", list(self.keys_for(key)), [key]))

    async def _hashes(self, tag: str, members: list[str]) -> list[list[Any]]:
        """The stored fields of ``members`` of one hash tag, in one pipelined round trip (None fields: gone)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for m in members:
                pipe.hmget(f"{tag}:k:{m}", "s", "t", "b", "u", "r")
            return await pipe.execute()

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
            rows = await self._hashes(tag, members)
            stale = [m for m, raw in zip(members, rows, strict=True) if raw[0] is None]
            if stale:  # atomically, only those still without a hash (one may have been written meanwhile)
                await self._evalsha("prune", [z, f"{tag}:x"], [f"{tag}:k:", *stale])
            found += [self._parse(m, raw).at(now, self.options.lam)
                      for m, raw in zip(members, rows, strict=True) if raw[0] is not None]
        found.sort(key=lambda r: r.score, reverse=not worst)
        return found[:n]

    async def load_scores(self, scores: Iterable[tuple[str, float]], now: float | None = None,
                          reason: str = "model", chunk: int = 1000, depth: int = 8,
                          sort_window: int = SORT_WINDOW) -> int:
        """Pipelined bulk load: ``chunk`` keys per script call, ``depth`` calls per round trip, and the next batch
        is built while Redis executes the previous one. Same result as one ``set`` per key, in input order.

        Rows are buffered ``sort_window`` at a time (keys by reference plus an 8-byte score: about 16 bytes per
        row, and about 24 more while a window is sorted, on top of the caller's key strings) and each window is
        sent in score order: inserts into the rank set then land next to the previous one instead of at a random
        place in a million-member skiplist (that made up half of Redis's cost per key). A window in which a key
        repeats is sent in input order instead (a later row must win). ``sort_window=0`` streams in input order
        with no buffering beyond one round trip. Ranks and TTLs are computed here for the common case (Lua redoes
        them for keys with a clock ahead or a long block), and the expiry set gets one token per script call
        instead of one entry per key (see :mod:`.lua`).

        Keys must not contain the separators \\x1e / \\x1f, scores must not be NaN (a ValueError names the key).
        """
        now = self.now() if now is None else now
        if SEP in reason or REC in reason:
            raise ValueError("reason must not contain \\x1e or \\x1f")
        await self.client.script_load(self._src["load"])
        loader = _Loader(self, float(now), reason, max(1, int(chunk)), max(1, int(depth)))
        total = 0
        step = sort_window if sort_window > 0 else chunk * depth
        it = iter(scores)
        try:
            while True:
                keys: list[str] = []
                vals = array("d")
                for key, score in itertools.islice(it, step):
                    keys.append(key if type(key) is str else str(key))
                    vals.append(float(score))
                if not keys:
                    break
                total += await loader.window(keys, vals, sort=sort_window > 0)
                del keys, vals
            await loader.finish()
        finally:
            await loader.abandon()
        return total

    async def blocks(self, now: float | None = None, limit: int = 1_000_000) -> list[Reputation]:
        now = self.now() if now is None else now
        found: list[Reputation] = []
        for tag in self._tags():
            b = f"{tag}:b"
            await self.client.zremrangebyscore(b, "(0", _fmt(now))     # the ended blocks; not the 0 sentinel
            members = await self.client.zrangebyscore(b, f"({_fmt(now)}", "+inf", start=0, num=max(0, limit))
            if not members:
                continue
            rows = await self._hashes(tag, members)
            found += [rep for rep in (self._parse(m, raw).at(now, self.options.lam)
                                      for m, raw in zip(members, rows, strict=True) if raw[0] is not None)
                      if rep.block_until > now]
        found.sort(key=lambda r: r.block_until)
        return found[:limit]

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


def _pack(args: list[str], total: int) -> bytes:
    """RESP encoding of the first arguments of a command of ``total`` arguments (as redis-py's packer does it)."""
    parts = [a.encode() for a in args]
    return b"".join([b"*%d\r\n" % total, *(b"$%d\r\n%s\r\n" % (len(b), b) for b in parts)])


class _Framed(NamedTuple):
    """One LOAD call for the standalone path: ``args`` (the head) to frame, then ``body``, the per-key arguments
    already in RESP framing (lengths in bytes), ``nargs`` arguments in all after the key names."""

    nargs: int
    args: list[str]
    body: str


class _Loader:
    """One ``load_scores`` call: turns windows of rows into LOAD script calls and keeps Redis busy with them."""

    def __init__(self, store: RedisStore, now: float, reason: str, chunk: int, depth: int) -> None:
        o = store.options
        self.store, self.now, self.chunk, self.depth = store, now, chunk, depth
        self.lam, self.idle = float(o.lam), float(o.idle_ttl)
        self.head = [_fmt(now), _fmt(o.lam), _fmt(o.idle_ttl), reason, str(int(o.max_reasons))]
        self.sha = store._sha["load"]
        self.single = "{" + store.prefix + "}" if store.shards == 1 else None
        self.pending: dict[str, tuple[list[str], list[float]]] = {}
        self.calls: list[tuple[str, list[Any]]] = []
        self.load_id, self.seq = uuid.uuid4().hex[:16], 0  # expiry tokens: TOKEN + load_id.seq, one per call
        self.inflight: asyncio.Future[Any] | None = None  # cluster / generic client: the batch being sent
        pool = getattr(store.client, "connection_pool", None)
        self.pool = None if store.cluster or not hasattr(pool, "release") else pool
        self.conn: Any = None  # standalone: the connection of this load, held until the end
        self.unread: collections.deque[int] = collections.deque()  # calls per batch sent, replies not yet read

    async def window(self, keys: list[str], vals: array[float], sort: bool) -> int:
        n = len(keys)
        if not n:
            return 0
        joined = "".join(keys)
        if REC in joined or SEP in joined:
            bad = next(k for k in keys if REC in k or SEP in k)
            raise ValueError(f"key {bad!r} contains a separator character (\\x1e or \\x1f)")
        del joined
        s = np.frombuffer(vals, dtype=np.float64)
        if np.isnan(s).any():
            raise ValueError(f"score of key {keys[int(np.flatnonzero(np.isnan(s))[0])]!r} is NaN")
        np.clip(s, -100.0, 100.0, out=s)
        if sort and n > 1:
            # A key repeated within the window keeps input order (the last row must win); hashes that merely
            # collide do too, which is only slower, never wrong.
            h = np.fromiter(map(hash, keys), dtype=np.int64, count=n)
            h.sort()
            sort = not bool((h[1:] == h[:-1]).any())
            del h
        if sort and n > 1:
            order = np.argsort(s, kind="stable")
            ks = np.array(keys, dtype=object)[order]
            ss = s[order]
            del order
        else:
            ks, ss = keys, s
        for a in range(0, n, self.chunk):
            part_k = ks[a:a + self.chunk]
            await self._rows(part_k if isinstance(part_k, list) else part_k.tolist(), ss[a:a + self.chunk].tolist())
        return n

    async def _rows(self, keys: list[str], vals: list[float]) -> None:
        if self.single is not None:
            await self._call(self.single, keys, vals)
            return
        tag_of = self.store.tag
        for k, v in zip(keys, vals, strict=True):
            tag = tag_of(k)
            p = self.pending.get(tag)
            if p is None:
                p = self.pending[tag] = ([], [])
            p[0].append(k)
            p[1].append(v)
            if len(p[0]) >= self.chunk:
                del self.pending[tag]
                await self._call(tag, *p)

    async def _call(self, tag: str, keys: list[str], vals: list[float]) -> None:
        """Arguments of one LOAD call, prepared for the common case (see :data:`.lua.LOAD`); mirrors ``life`` and
        ``rank`` of the scripts bit for bit (same operations in the same order on the same doubles)."""
        now, lam, idle = self.now, self.lam, self.idle
        lt = lam * now
        framed = self.pool is not None  # the RESP text itself (see _flush), else argument lists for redis-py
        ascii_keys = "".join(keys).isascii()
        zargs: list[str] = []
        sargs: list[str] = []
        largs: list[str] = []
        longest = 0
        log, ceil = math.log, math.ceil
        for k, s in zip(keys, vals, strict=True):
            a = -s if s < 0 else s
            life = idle
            if lam > 0 and a > 0.5:
                d = log(a / 0.5) / lam
                if d > life:
                    life = d
            life = ceil(life)
            if life > longest:
                longest = life
            if a < RANK_EPS:
                r = "0"
            else:
                inner = log(a) + lt + RANK_OFFSET
                r = repr(inner if s > 0 else -inner)
            sv, lv = repr(s), str(life)
            if framed:
                kn = len(k) if ascii_keys else len(k.encode())
                zargs.append(f"${len(r)}\r\n{r}\r\n${kn}\r\n{k}\r\n")
                sargs.append(f"${len(sv)}\r\n{sv}\r\n")
                largs.append(f"${len(lv)}\r\n{lv}\r\n")
            else:
                zargs += (r, k)
                sargs.append(sv)
                largs.append(lv)
        self.seq += 1
        args = [*self.head, f"{tag}:k:", f"{TOKEN}{self.load_id}.{self.seq}@{self.head[0]}", repr(now + longest), str(len(keys))]
        if framed:
            self.calls.append((tag, [_Framed(len(args) + 4 * len(keys), args, "".join([*zargs, *sargs, *largs]))]))
        else:
            self.calls.append((tag, [*args, *zargs, *sargs, *largs]))
        if len(self.calls) >= self.depth:
            await self._flush()

    async def _send_cluster(self, batch: list[tuple[str, list[Any]]]) -> None:
        # cluster pipelines refuse EVALSHA: concurrent calls, routed per slot, instead; calls of one slot stay in
        # order (a repeated key must end with its last row)
        client, sha = self.store.client, self.sha
        per_tag: dict[str, list[list[Any]]] = {}
        for tag, args in batch:
            per_tag.setdefault(tag, []).append(args)

        async def run(tag: str, arglists: list[list[Any]]) -> None:
            for args in arglists:
                await client.evalsha(sha, 2, f"{tag}:z", f"{tag}:x", *args)

        await asyncio.gather(*(run(tag, arglists) for tag, arglists in per_tag.items()))

    async def _send_pipeline(self, batch: list[tuple[str, list[Any]]]) -> None:
        async with self.store.client.pipeline(transaction=False) as pipe:
            for tag, args in batch:
                pipe.evalsha(self.sha, 2, f"{tag}:z", f"{tag}:x", *args)
            await pipe.execute()

    async def _flush(self) -> None:
        batch, self.calls = self.calls, []
        if not batch:
            return
        if self.pool is None:
            if self.inflight is not None:
                await self.inflight
            send = self._send_cluster if self.store.cluster else self._send_pipeline
            self.inflight = asyncio.ensure_future(send(batch))
            await asyncio.sleep(0)  # let it write; Redis works while the next batch is built
            return
        # Standalone Redis: one connection for the whole load, so calls run in the order they were built, and the
        # next batch is written before the replies of the previous one are read, so Redis always has a batch
        # queued. The commands are packed here: redis-py's generic packer costs about a microsecond per argument,
        # and a call carries six per key, which made the client, not Redis, the bottleneck.
        if self.conn is None:
            try:
                self.conn = await self.pool.get_connection()
            except TypeError:  # redis-py < 5.3 wants a command name
                self.conn = await self.pool.get_connection("EVALSHA")
        sha = self.sha
        parts: list[bytes] = []
        for tag, (f,) in batch:
            head = ["EVALSHA", sha, "2", f"{tag}:z", f"{tag}:x", *f.args]
            parts.append(_pack(head, 5 + f.nargs))
            parts.append(f.body.encode())
        data = b"".join(parts)
        await self.conn.send_packed_command(data, check_health=False)
        self.unread.append(len(batch))
        while len(self.unread) > 1:
            await self._read(self.unread.popleft())

    async def _read(self, n: int) -> None:
        assert self.conn is not None
        for _ in range(n):
            await self.conn.read_response()  # raises the script's error, if any

    async def abandon(self) -> None:
        """After an error: wait for the batch in flight (its own error, if any, is not the one to report) and
        never hand out a connection whose replies may be unread."""
        if self.inflight is not None:
            with contextlib.suppress(Exception):
                await self.inflight
            self.inflight = None
        if self.conn is not None:
            conn, self.conn = self.conn, None
            assert self.pool is not None
            try:
                if self.unread:
                    await conn.disconnect()
            finally:
                await self.pool.release(conn)

    async def finish(self) -> None:
        for tag, (keys, vals) in list(self.pending.items()):
            await self._call(tag, keys, vals)
        self.pending.clear()
        await self._flush()
        while self.unread:
            await self._read(self.unread[0])
            self.unread.popleft()
        if self.inflight is not None:
            await self.inflight
            self.inflight = None
