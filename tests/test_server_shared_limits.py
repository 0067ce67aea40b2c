"""Shared limits: the per-address / per-token GCRA buckets in Redis (server/limiter_redis.py), equal to the local
buckets decision for decision, shared by two real server processes, and falling back to local limiting when Redis
is unreachable. Every wait is bounded; no timing assertions.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid

import httpx
import pytest
from redis_server import RedisServer, redis_server_fixture  # noqa: F401 - fixture
from server_harness import SSEClient, free_port, running_server
from stormguard.server.layers.limiter import GcraBuckets
from stormguard.server.layers.limiter_redis import RedisGcra

QUIET = {"live_rules": False, "reputation": False}


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def status_of(port: int, source: str) -> int:
    c = SSEClient(port, "/events?topic=lim", source=source)
    try:
        return c.status
    finally:
        c.close()


@pytest.mark.parametrize(("rate", "burst"), [(0.5, 2.0), (0.2, 3.5), (0.25, 1.0)])
def test_lua_gcra_decides_like_the_local_buckets(redis_server: RedisServer, rate: float, burst: float) -> None:
    """Same (key, now) sequence → same admitted/refused decisions, tokens left and retry-after.

    Intervals are >= 2 s, so no Redis key can expire (real time) during the sub-second run while the fake clock
    still says its bucket is not full."""
    clock = FakeClock(1_764_000_000.0)                   # epoch-sized times: precision matters
    local = GcraBuckets(rate, burst, clock=clock)
    shadow = GcraBuckets(rate, burst)                    # gives RedisGcra the interval/capacity for kind "ip"

    async def run() -> tuple[list[tuple[bool, float, float]], list[tuple[bool, float, float]]]:
        gcra = RedisGcra.from_url(f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:8]}&timeout=5", shadow,
                                  GcraBuckets(1.0, 1.0))
        rng = random.Random(7)
        got, want = [], []
        try:
            for i in range(300):
                clock.t += rng.choice([0.0, 0.0, 0.1, 0.5, 1.0, 1.7, 2.5, 6.0]) * (1 / rate) / 5
                key = f"10.0.0.{rng.randrange(3)}"
                want.append(local.take(key))
                got.append((await gcra.take_redis([("ip", key)], now=clock.t))[0])
                if i == 150:                              # a flushed Redis: NOSCRIPT → reload, same answers
                    await gcra.client.script_flush()
                    before = gcra.script_reloads
            assert gcra.script_reloads == before + 1
        finally:
            await gcra.close()
        return got, want

    got, want = asyncio.run(run())
    assert [g[0] for g in got] == [w[0] for w in want]
    assert sum(1 for w in want if w[0]) > 10 and sum(1 for w in want if not w[0]) > 10    # both paths exercised
    for g, w in zip(got, want, strict=True):
        assert g[1] == pytest.approx(w[1], abs=1e-6) and g[2] == pytest.approx(w[2], abs=1e-6)


def test_idle_keys_expire_and_refusals_leave_the_key_alone(redis_server: RedisServer) -> None:
    async def run() -> None:
        gcra = RedisGcra.from_url(f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:8]}&timeout=5",
                                  GcraBuckets(10.0, 2.0), GcraBuckets(1.0, 1.0))
        try:
            k = gcra.key("ip", "10.9.9.9")
            assert [d[0] for d in [(await gcra.take([("ip", "10.9.9.9")]))[0] for _ in range(3)]] == [True, True,
                                                                                                    False]
            ttl = await gcra.client.pttl(k)
            assert 0 < ttl <= 200                              # 2 tokens of 0.1 s: full again within 200 ms
            for _ in range(100):                               # bounded wait for the lossless expiry
                if not await gcra.client.exists(k):
                    break
                await asyncio.sleep(0.02)
            assert not await gcra.client.exists(k)
            # both buckets in one call; the token bucket is skipped once the address refuses (stop)
            first = await gcra.take([("ip", "10.9.9.8"), ("tok", "t1")])
            assert [d[0] for d in first] == [True, True]
            await gcra.take([("ip", "10.9.9.8")])
            refused = await gcra.take([("ip", "10.9.9.8"), ("tok", "t1")])
            assert len(refused) == 1 and not refused[0][0] and refused[0][2] > 0
            assert (await gcra.take([("tok", "t1")]))[0][0] is False    # t1 was taken once only: 1 burst
        finally:
            await gcra.close()

    asyncio.run(run())


def test_redis_down_falls_back_to_local_buckets(caplog: pytest.LogCaptureFixture) -> None:
    fallbacks: list[str] = []

    async def run() -> list[bool]:
        gcra = RedisGcra.from_url(f"redis://127.0.0.1:{free_port()}/0?timeout=0.2&retry_seconds=0",
                                  GcraBuckets(0.01, 2.0), GcraBuckets(1.0, 1.0), on_fallback=fallbacks.append)
        try:
            return [(await gcra.take([("ip", "10.8.8.8")]))[0][0] for _ in range(4)]
        finally:
            await gcra.close()

    with caplog.at_level(logging.WARNING, logger="stormguard.server.layers.limiter"):
        decisions = asyncio.run(run())
    assert decisions == [True, True, False, False]             # still limited, locally
    assert fallbacks == ["ip"] * 4
    assert sum("Redis unavailable" in r.getMessage() for r in caplog.records) == 1     # logged once per outage


def test_two_server_processes_share_one_bucket(redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:8]}&timeout=2"
    settings = {**QUIET, "ip_rate": 0.01, "ip_burst": 2.0, "refusal_actions": {"rate": "429"}}
    with running_server(settings, args=("--store", url)) as a, running_server(settings, args=("--store", url)) as b:
        ip = "127.0.0.120"
        statuses = [status_of((a, b)[i % 2].port, ip) for i in range(6)]
        assert statuses == [200, 200, 429, 429, 429, 429]          # two in total across A and B, then refused
        refused = [s.metric('rate_limit_rejected_total{layer="limiter",reason="rate"}') for s in (a, b)]
        assert refused == [2.0, 2.0]
        assert status_of(b.port, "127.0.0.121") == 200              # another address has its own bucket
        assert a.metric('stormguard_limiter_fallbacks_total{kind="ip"}') == 0


def test_two_processes_pace_by_default(redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:8]}&timeout=2"
    settings = {**QUIET, "ip_rate": 0.01, "ip_burst": 2.0}
    with running_server(settings, args=("--store", url)) as a, running_server(settings, args=("--store", url)) as b:
        ip = "127.0.0.122"
        assert status_of(a.port, ip) == 200 and status_of(b.port, ip) == 200
        paced = SSEClient(a.port, "/events?topic=lim", source=ip)
        msgs = paced.read_all()
        paced.close()
        assert paced.status == 200 and msgs and msgs[0].retry and "rate" in msgs[0].comments


def test_server_with_redis_down_limits_locally() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?timeout=0.05&retry_seconds=0.5"
    settings = {**QUIET, "ip_rate": 0.01, "ip_burst": 2.0, "refusal_actions": {"rate": "429"}}
    with running_server(settings, args=("--store", url)) as srv:
        ip = "127.0.0.123"
        assert [status_of(srv.port, ip) for _ in range(3)] == [200, 200, 429]
        assert srv.metric('stormguard_limiter_fallbacks_total{kind="ip"}') == 3
        assert httpx.get(srv.url + "/healthz", timeout=10).status_code == 200


def test_middleware_shared_path_matches_the_local_one(redis_server: RedisServer) -> None:
    """The middleware with and without ``shared``: same admit/refuse/degrade outcome per request, in enforcing and
    in shadow mode (where the token bucket is still taken after an address refusal)."""
    from stormguard.server.context import SCOPE_KEY, ClientIdentity, RequestContext
    from stormguard.server.layers.limiter import LimiterMiddleware

    class Refuser:
        def __init__(self, shadow: bool) -> None:
            self.shadow = shadow
            self.reasons: list[str] = []

        async def refuse(self, scope, send, *, layer, reason, **kw) -> bool:  # noqa: ANN001, ANN003
            self.reasons.append(reason)
            return not self.shadow

    async def handler(scope, receive, send) -> None:  # noqa: ANN001
        scope["admitted"] = True

    async def run(shadow: bool, shared: bool) -> list[tuple[bool, bool, list[str]]]:
        ip_b, tok_b = GcraBuckets(0.01, 2.0), GcraBuckets(0.01, 3.0)
        gcra = None
        if shared:
            gcra = RedisGcra.from_url(f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:8]}&timeout=5", ip_b, tok_b)
        refuser = Refuser(shadow)
        mw = LimiterMiddleware(handler, refuser=refuser, ip_buckets=ip_b, token_buckets=tok_b, ip_soft_remaining=1.0,
                               token_soft_remaining=1.0, shared=gcra)
        out = []
        try:
            for path in ["/events", "/events", "/events", "/other", "/events"]:
                ctx = RequestContext(ClientIdentity(ip="10.7.7.7", token_key="tk"))
                scope = {"type": "http", "path": path, SCOPE_KEY: ctx}
                refuser.reasons = []
                await mw(scope, None, None)
                out.append((bool(scope.get("admitted")), ctx.degraded, refuser.reasons))
        finally:
            if gcra is not None:
                assert not gcra.down
                await gcra.close()
        return out

    for shadow in (False, True):
        assert asyncio.run(run(shadow, True)) == asyncio.run(run(shadow, False))
