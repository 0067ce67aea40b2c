"""A Redis connection pool that queues instead of failing, and counts it.

Why: redis-py's default async pool raises ``MaxConnectionsError: Too many connections`` the moment a burst needs
more than ``max_connections`` (50 clients connecting at once did that to the shared limiter), and an unbounded pool
opens one socket per concurrent caller. A bounded pool whose callers wait (up to ``timeout``) for a free connection
keeps Redis' connection count deliberate; :attr:`queued` and :attr:`timeouts` say how often callers had to wait or
gave up, and the server exports them (``stormguard_redis_pool_*``).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError


class QueueingPool(BlockingConnectionPool):
    """:class:`redis.asyncio.BlockingConnectionPool` with counts of waits and wait timeouts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queued = 0       # acquisitions that found every connection busy and waited
        self.timeouts = 0     # ... and gave up after ``timeout`` (the caller sees a ConnectionError)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if not self.can_get_connection():
            self.queued += 1
        try:
            return await super().get_connection(*args, **kwargs)
        except RedisConnectionError as exc:
            if str(exc) == "No connection available.":
                self.timeouts += 1
            raise

    @property
    def in_use(self) -> int:
        return len(self._in_use_connections)


class PoolCollector:
    """Prometheus collector over named :class:`QueueingPool` s (read at scrape time, no per-call cost)."""

    def __init__(self) -> None:
        self.pools: dict[str, QueueingPool] = {}

    def add(self, name: str, pool: Any) -> None:
        if isinstance(pool, QueueingPool):
            self.pools[name] = pool

    def collect(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        queued = CounterMetricFamily("stormguard_redis_pool_queued", "Redis calls that waited for a pooled "
                                     "connection (pool at max_connections)", labels=["pool"])
        timeouts = CounterMetricFamily("stormguard_redis_pool_timeouts", "Redis calls that gave up waiting for a "
                                       "pooled connection", labels=["pool"])
        in_use = GaugeMetricFamily("stormguard_redis_pool_in_use", "Pooled Redis connections in use", labels=["pool"])
        size = GaugeMetricFamily("stormguard_redis_pool_max", "Pool size (max_connections)", labels=["pool"])
        for name, pool in self.pools.items():
            queued.add_metric([name], pool.queued)
            timeouts.add_metric([name], pool.timeouts)
            in_use.add_metric([name], pool.in_use)
            size.add_metric([name], pool.max_connections)
        return [queued, timeouts, in_use, size]
