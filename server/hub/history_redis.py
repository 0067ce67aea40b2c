"""Redis Streams history: several server processes (and hosts) serve the same topics.

Layout (``prefix`` defaults to ``sg:hub``; hash tags keep a topic's keys in one cluster slot):

* ``{prefix}:{<topic>}`` — one stream per topic; entries ``d`` (data), ``e`` (event type), ``p`` (publisher id).
  Trimmed on every publish by count (``XADD MAXLEN ~ max_events``) and by age (``XTRIM MINID ~ now - max_age``),
  and expired after ``max_age`` without publishes, so abandoned topics do not stay in Redis.
* ``{prefix}:{<topic>}:pub:<id>`` — publisher idempotency key → stream id of the event, ``PX`` = ``max_age``.
  Check, append, trim and remember run in one Lua script: one round trip per publish, no double append.
* ``{prefix}:wake:<token>`` — this process's wake-up stream (see :meth:`RedisHistory.wake`).

On a Redis Cluster (``?cluster=1``) every hub key carries the one hash tag ``{<prefix>}`` instead —
``{prefix}:t:<topic>``, ``{prefix}:t:<topic>:pub:<id>``, ``{prefix}:wake:<token>`` — because a process's one
blocking ``XREAD`` covers all its topics and its wake stream, and a multi-key command must stay in one slot. The hub
therefore lives on one master (its replica takes over on failover); several hubs = several prefixes.

Event ids: the stream id ``<ms>-<n>`` becomes the integer ``ms * 1_000_000 + n`` (``n`` < 10^6: more than a
million events in one millisecond on one topic is out of reach of HTTP publishing), so every process derives the
same SSE id for the same event and the hub's id format is unchanged: ``a:1732712345678000001,b:…@<epoch>``. The
epoch is fixed per key prefix (``rs`` + a short hash): stream ids never restart from zero (they are time based),
so ids stay valid across server restarts and across processes; an id from the memory backend (another epoch)
replays everything retained.

Trimming is approximate (``~``, whole radix-tree nodes) for Redis' sake; bounds are exact on read: a replay returns
at most ``max_events`` events, none older than ``max_age``, and reports a gap when something after the client's
position is no longer there.

Outage: every call raises :class:`~stormguard.server.hub.history.HistoryUnavailable`; the first failure logs one
warning and counts one outage (``stormguard_history_store_outages_total``), recovery logs one line.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from stormguard.server.hub.history import Event, HistoryUnavailable, MemoryHistory

log = logging.getLogger("stormguard.server.hub.history")

SEQ_SCALE = 1_000_000

_PUBLISH = """
local pub = ARGV[6]
if pub ~= '' then
  local prev = redis.call('GET', KEYS[2])
  if prev then
    return {1, prev}
  end
end
local fields = {'d', ARGV[4]}
if ARGV[5] ~= '' then fields[#fields + 1] = 'e'; fields[#fields + 1] = ARGV[5] end
if pub ~= '' then fields[#fields + 1] = 'p'; fields[#fields + 1] = pub end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
local t = redis.call('TIME')
local minid = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[2])
if minid > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', minid))
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if pub ~= '' then
  redis.call('SET', KEYS[2], id, 'PX', ARGV[3])
end
return {0, id}
"""


def to_seq(stream_id: str | bytes) -> int:
    """``'<ms>-<n>'`` → ``ms * 10^6 + n`` (the integer position the hub and the SSE ids use)."""
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, n = text.partition("-")
    return int(ms) * SEQ_SCALE + int(n or 0)


def to_stream_id(seq: int) -> str:
    return f"{seq // SEQ_SCALE}-{seq % SEQ_SCALE}"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisHistory:
    """:class:`~stormguard.server.hub.history.AsyncHistoryBackend` on Redis Streams (one stream per topic)."""

    is_async = True

    def __init__(self, client: Any, reader: Any, *, prefix: str = "sg:hub", max_events: int = 1000,
                 max_age: float = 300.0, block_ms: int = 5000, clock: Callable[[], float] = time.time,
                 cluster: bool = False) -> None:
        if cluster and ("{" in prefix or "}" in prefix):
            raise ValueError("hub prefix must not contain braces on a Redis Cluster (it is the hash tag)")
        self.cluster = cluster          # one hash tag {prefix} for every hub key: XREAD spans one slot
        self.client = client            # short commands (publish, replay): short socket timeout
        self.reader = reader            # the one blocking XREAD of this process: its own connection
        self.prefix = prefix
        self.max_events = max_events
        self.max_age = max_age
        self.block_ms = block_ms
        self.clock = clock
        self.epoch = "rs" + hashlib.blake2s(prefix.encode(), digest_size=3).hexdigest()
        self.wake_key = f"{self._root}:wake:{secrets.token_hex(6)}"
        self._wake_cursor = "0-0"
        self._script = client.register_script(_PUBLISH)
        self.up = True
        self.down_since = 0.0
        self.outages = 0
        self._outage_counter: Any = None
        self._up_gauge: Any = None

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "sg:hub", max_events: int = 1000, max_age: float = 300.0,
                 block_ms: int = 5000, timeout: float = 2.0, max_connections: int = 32,
                 cluster: bool = False) -> RedisHistory:
        import redis.asyncio as aioredis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # one immediate retry: a pooled connection broken by a Redis restart fails once, then reconnects
        common: dict[str, Any] = {"socket_connect_timeout": min(timeout, 1.0), "retry": Retry(NoBackoff(), 1),
                                  "health_check_interval": 0}
        if cluster:     # ?cluster=1: every hub key under one hash tag, see the module docstring
            from redis.asyncio.cluster import RedisCluster

            common.pop("health_check_interval")
            client = RedisCluster.from_url(url, socket_timeout=timeout, max_connections=max_connections, **common)
            reader = RedisCluster.from_url(url, socket_timeout=block_ms / 1000 + timeout, max_connections=2,
                                           **common)
            return cls(client, reader, prefix=prefix, max_events=max_events, max_age=max_age, block_ms=block_ms,
                       cluster=True)
        from stormguard.scoring.stores.pool import QueueingPool

        # publishes and replays share a bounded pool that queues a burst (default redis-py: one socket per caller)
        pool = QueueingPool.from_url(url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout,
                                     socket_connect_timeout=common["socket_connect_timeout"],
                                     retry=common["retry"], health_check_interval=0)
        client = aioredis.Redis(connection_pool=pool, retry=common["retry"])
        reader = aioredis.Redis.from_url(url, socket_timeout=block_ms / 1000 + timeout, max_connections=2,
                                         **common)
        return cls(client, reader, prefix=prefix, max_events=max_events, max_age=max_age, block_ms=block_ms)

    # -- keys and entries ---------------------------------------------------------------------------------------
    @property
    def _root(self) -> str:
        return "{" + self.prefix + "}" if self.cluster else self.prefix

    def key(self, topic: str) -> str:
        if self.cluster:
            return f"{{{self.prefix}}}:t:{topic}"
        return f"{self.prefix}:{{{topic}}}"

    def _topic_of(self, key: str) -> str:
        if self.cluster:
            return key[len(self.prefix) + 5:]
        return key[len(self.prefix) + 2:-1]

    @staticmethod
    def _event(topic: str, stream_id: Any, fields: dict[Any, Any]) -> Event:
        seq = to_seq(stream_id)
        get = fields.get
        data = get(b"d", get("d", b""))
        kind = get(b"e", get("e"))
        pub = get(b"p", get("p"))
        return Event(topic, seq, _s(data), _s(kind) if kind is not None else None, (seq // SEQ_SCALE) / 1000,
                     _s(pub) if pub is not None else None)

    # -- availability -------------------------------------------------------------------------------------------
    def bind_metrics(self, registry: Any) -> None:
        """Export the outage counter and an up gauge into the app's registry (called once by the endpoint)."""
        from prometheus_client import Counter, Gauge

        self._outage_counter = Counter("stormguard_history_store_outages", "Times the Redis history became "
                                       "unreachable (counted once per outage)", registry=registry)
        self._up_gauge = Gauge("stormguard_history_store_up", "1 when the Redis history answers", registry=registry)
        self._up_gauge.set_function(lambda: 1.0 if self.up else 0.0)
        if self.outages:
            self._outage_counter.inc(self.outages)

    def _failed(self, exc: BaseException, where: str) -> HistoryUnavailable:
        if self.up:
            self.up = False
            self.down_since = time.monotonic()
            self.outages += 1
            if self._outage_counter is not None:
                self._outage_counter.inc()
            log.warning("redis history unavailable (%s: %s: %s): publishing answers 503, new streams are paced, "
                        "open streams stay connected and resume when it returns", where, type(exc).__name__, exc)
        return HistoryUnavailable(f"history store unavailable: {type(exc).__name__}: {exc}")

    def _ok(self) -> None:
        if not self.up:
            self.up = True
            log.warning("redis history available again after %.1f s", time.monotonic() - self.down_since)

    # -- AsyncHistoryBackend ------------------------------------------------------------------------------------
    async def publish(self, topic: str, data: str, event: str | None = None,
                      pub_id: str | None = None) -> tuple[Event, bool]:
        from redis.exceptions import RedisError

        key = self.key(topic)
        pub_key = f"{key}:pub:{pub_id}" if pub_id is not None else key
        ttl = max(1, int(self.max_age * 1000))
        try:
            dup, stream_id = await self._script(keys=[key, pub_key],
                                                args=[self.max_events, ttl, ttl, data, event or "", pub_id or ""])
        except (RedisError, OSError) as exc:
            raise self._failed(exc, "publish") from exc
        self._ok()
        seq = to_seq(stream_id)
        return Event(topic, seq, data, event, (seq // SEQ_SCALE) / 1000, pub_id), bool(dup)

    async def fetch(self, plan: dict[str, int | None]) -> dict[str, tuple[list[Event], bool, int]]:
        """One pipelined round trip for all topics of a new stream."""
        from redis.exceptions import RedisError

        n = self.max_events
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for topic, after in plan.items():
                    key = self.key(topic)
                    if after is None:
                        pipe.xrevrange(key, "+", "-", count=1)
                    else:
                        low = "(" + to_stream_id(after) if after > 0 else "-"
                        pipe.xrevrange(key, "+", low, count=n + 1)
                        pipe.xinfo_stream(key)
                replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise self._failed(exc, "replay") from exc
        for reply in replies:
            if isinstance(reply, (RedisError, OSError)) and "no such key" not in str(reply).lower():
                raise self._failed(reply, "replay")
        self._ok()
        out: dict[str, tuple[list[Event], bool, int]] = {}
        horizon = int((self.clock() - self.max_age) * 1000) * SEQ_SCALE
        it = iter(replies)
        for topic, after in plan.items():
            entries = next(it)
            if after is None:
                out[topic] = [], False, to_seq(entries[0][0]) if entries else 0
                continue
            info = next(it)
            events = [self._event(topic, sid, fields) for sid, fields in reversed(entries)]
            last = events[-1].seq if events else after
            gap = len(events) > n
            if gap:
                events = events[-n:]
            fresh = [ev for ev in events if ev.seq >= horizon]
            gap = gap or len(fresh) < len(events)
            if not gap and after < horizon:
                # something was trimmed (by age, ~ whole nodes) and the client's position is older than the age
                # horizon: events after it may have been trimmed unseen
                if isinstance(info, dict):
                    added = int(info.get(b"entries-added", info.get("entries-added", 0)) or 0)
                    length = int(info.get(b"length", info.get("length", 0)) or 0)
                    gap = added > length
                else:                                       # no stream (expired or never published)
                    gap = after > 0
            out[topic] = fresh, gap, last
        return out

    async def read(self, cursors: dict[str, int]) -> list[Event]:
        from redis.exceptions import RedisError

        streams = {self.key(t): to_stream_id(c) for t, c in cursors.items()}
        streams[self.wake_key] = self._wake_cursor
        try:
            reply = await self.reader.xread(streams, count=1000, block=self.block_ms)
        except (RedisError, OSError) as exc:
            raise self._failed(exc, "read") from exc
        self._ok()
        events: list[Event] = []
        for key, entries in reply or ():
            name = _s(key)
            if name == self.wake_key:
                if entries:
                    self._wake_cursor = _s(entries[-1][0])
                continue
            topic = self._topic_of(name)
            events.extend(self._event(topic, sid, fields) for sid, fields in entries)
        if len(reply or ()) > 1:
            events.sort(key=lambda ev: ev.seq)              # publish order across topics (ids are time based)
        return events

    async def wake(self) -> None:
        from redis.exceptions import RedisError

        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.xadd(self.wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.pexpire(self.wake_key, max(60_000, self.block_ms * 4))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._failed(exc, "wake") from exc

    async def aclose(self) -> None:
        for client in (self.reader, self.client):
            try:
                await asyncio.wait_for(client.aclose(), 2.0)
            except Exception:   # noqa: BLE001 - closing: nothing to report to
                pass


def history_from_url(url: str | None, *, max_events: int = 1000, max_age: float = 300.0, prefix: str = "sg:hub",
                     block_ms: int = 5000, timeout: float = 2.0) -> MemoryHistory | RedisHistory:
    """The history backend for a URL: ``memory://`` (or empty) → :class:`MemoryHistory`; ``redis://``,
    ``rediss://``, ``unix://`` → :class:`RedisHistory` (fan-out through Redis Streams, shared by processes)."""
    if not url or url.startswith("memory:"):
        return MemoryHistory(max_events=max_events, max_age=max_age)
    if url.startswith(("redis://", "rediss://", "unix://")):
        # the same URL may name the reputation store: its own parameters (prefix, timeout, ...) are not redis-py's
        from stormguard.scoring.stores import split_store_url

        url, own = split_store_url(url)
        if "prefix" in own:
            prefix = f"{own['prefix']}:hub"
        timeout = max(timeout, float(own.get("timeout", timeout)))
        cluster = str(own.get("cluster", "0")).lower() in ("1", "true", "yes", "on")
        return RedisHistory.from_url(url, prefix=prefix, max_events=max_events, max_age=max_age,
                                     block_ms=block_ms, timeout=timeout, cluster=cluster)
    raise ValueError(f"history URL {url!r}: expected memory://, redis://, rediss:// or unix://")
