"""Several ``stormguard serve`` processes on one Redis Cluster: the per-client concurrent-stream limit holds across
them (stream counts are leases in the Cluster, server/layers/quota_shared.py), a SIGKILLed process's streams stop
counting once its leases expire, and the shared limiter answers from the Cluster. Every wait is bounded by a
deadline and polls a condition; no timing assertions."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from contextlib import ExitStack

import httpx
from redis_server import RedisClusterNodes
from server_harness import TOKEN, ServerProcess, SSEClient, running_server
from stormguard.server.context import ClientIdentity, RequestContext
from stormguard.server.layers.quota_shared import LeaseCounter, SharedTenantQuota, SharedTieredQuota

from stormguard.config import default_server_tiers

LEASE = 2.0          # seconds: how long a dead process's streams keep counting


def admitted(port: int, source: str) -> tuple[SSEClient, bool]:
    """Open a stream; (client, True) when the server admitted it (no quota refusal comment)."""
    c = SSEClient(port, "/events?topic=cq", source=source)
    first = c.messages(1)
    return c, c.status == 200 and not [m for m in first if "quota" in m.comments] and not c.eof


def test_stream_limit_holds_across_three_processes_and_a_killed_one_releases(
        redis_cluster: RedisClusterNodes) -> None:
    url = f"{redis_cluster.url}?cluster=1&prefix=q{uuid.uuid4().hex[:6]}&timeout=5"
    settings = {"quota_url": url, "quota_lease_seconds": LEASE, "limiter_url": url,
                "live_rules": False, "reputation": False}
    src = "127.0.0.31"
    with ExitStack() as stack:
        servers = [stack.enter_context(running_server(settings)) for _ in range(3)]
        open_streams = []
        for srv in servers:                                   # neutral tier: 3 streams per client, one per process
            c, ok = admitted(srv.port, src)
            assert ok, f"stream on {srv.port} refused"
            open_streams.append(c)
            stack.callback(c.close)
        for srv in servers:                                   # the 4th is refused by every process
            c, ok = admitted(srv.port, src)
            c.close()
            assert not ok, f"process {srv.port} admitted a 4th stream"
        other, ok = admitted(servers[0].port, "127.0.0.32")  # another client has its own count
        other.close()
        assert ok
        assert all(srv.metric('stormguard_quota_fallbacks_total{kind="client"}') == 0 for srv in servers)

        victim = servers[2]
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGKILL)               # no shutdown, no release: only the lease ends it
        victim.proc.wait(10)
        deadline = time.monotonic() + LEASE * 5 + 10
        while True:
            c, ok = admitted(servers[0].port, src)
            if ok:
                stack.callback(c.close)
                break
            c.close()
            assert time.monotonic() < deadline, "the killed process's stream still counts"
            time.sleep(0.1)
        c2, ok = admitted(servers[1].port, src)              # and the limit holds again at 3
        c2.close()
        assert not ok

        open_streams[0].close()                               # a clean close releases at once
        deadline = time.monotonic() + 10
        while True:
            c, ok = admitted(servers[1].port, src)
            if ok:
                stack.callback(c.close)
                break
            c.close()
            assert time.monotonic() < deadline, "a closed stream's lease was not given back"
            time.sleep(0.05)


def test_leases_expire_unless_renewed_and_fall_back_when_redis_is_gone(redis_cluster: RedisClusterNodes) -> None:
    async def run() -> None:
        url = f"{redis_cluster.url}?cluster=1&prefix=l{uuid.uuid4().hex[:6]}&timeout=5"
        a = LeaseCounter.from_url(url, lease=0.5)
        b = LeaseCounter.from_url(url, lease=0.5)
        try:
            la = await a.acquire("c", "x", 2)
            lb = await b.acquire("c", "x", 2)
            assert la and lb and await a.acquire("c", "x", 2) is None
            assert await b.acquire("c", "x", 2, force=True) is not None     # force admits past the limit
            deadline = time.monotonic() + 10
            while (await a.renew()) < 1 or (await a.acquire("c", "x", 2)) is None:
                # b never renews: its two leases expire; a renews its own, so a third fits once b's are gone
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert a.lost == 0 and a.down is False
            await a.release(la)
            assert la[0] in a.held                                       # the other lease of a is still held
        finally:
            await a.close()
            await b.close()
        dead = LeaseCounter.from_url("redis://127.0.0.1:1/0?timeout=0.2", lease=1.0)
        falls: list[str] = []
        dead.on_fallback = falls.append
        try:
            l1 = await dead.acquire("c", "y", 1)
            assert l1 == (dead.key("c", "y"), "") and await dead.acquire("c", "y", 1) is None and dead.down
            await dead.release(l1)
            assert await dead.acquire("c", "y", 1) is not None and falls == ["c", "c", "c"]
        finally:
            await dead.close()

    asyncio.run(run())


class Publisher(threading.Thread):
    """Publishes ``p<n>`` to one topic until stopped or ``limit``; records each status code."""

    def __init__(self, srv: ServerProcess, topic: str, limit: int = 2000) -> None:
        super().__init__(daemon=True)
        self.srv, self.topic, self.limit = srv, topic, limit
        self.statuses: list[int] = []
        self.accepted: list[str] = []
        self.refusals: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30.0) as client:
            while not self.stop.is_set() and len(self.statuses) < self.limit:
                data = f"p{len(self.statuses)}"
                r = client.post(self.srv.url + "/publish", json={"topic": self.topic, "data": data},
                                headers={"authorization": f"Bearer {TOKEN}"})
                self.statuses.append(r.status_code)
                if r.status_code != 200 and not self.refusals:
                    self.refusals.append(f"{r.status_code} {dict(r.headers)} {r.text[:300]}")
                if r.status_code == 200:
                    self.accepted.append(data)

    def wait(self, n: int, timeout: float = 60.0) -> None:
        target = len(self.statuses) + n
        deadline = time.monotonic() + timeout
        while len(self.statuses) < target and self.is_alive():
            assert time.monotonic() < deadline, "publisher stalled"
            time.sleep(0.01)


def test_serve_on_cluster_through_failover_and_migration(redis_cluster: RedisClusterNodes) -> None:
    """``serve --store redis://…?cluster=1``: hub history (Streams), limiter and quota on the Cluster; a publisher
    on one process and a subscriber on another keep going through a failover of the hub's master and a migration
    of its slot: no 5xx, every accepted event delivered, in order."""
    prefix = f"s{uuid.uuid4().hex[:6]}"
    url = f"{redis_cluster.url}?cluster=1&prefix={prefix}&timeout=5"
    settings = {"live_rules": False, "reputation": False, "heartbeat_interval": 1.0, "token_rate": 1e4,
                "token_burst": 1e4}          # the publisher's bearer token is rate limited (shared, on the Cluster)
    with running_server(settings, args=("--store", url)) as a, running_server(settings, args=("--store", url)) as b:
        sub = SSEClient(b.port, "/events?topic=ev", source="127.0.0.41", timeout=30.0)
        assert sub.status == 200 and sub.messages(1)
        pub = Publisher(a, "ev")
        pub.start()
        try:
            pub.wait(20)
            slot = redis_cluster.slot("{" + prefix + ":hub}")
            promoted = redis_cluster.failover(redis_cluster.owner(slot))
            pub.wait(20)
            dst = next(port for port in redis_cluster.masters() if port != promoted)
            redis_cluster.migrate_slot(slot, dst, between=lambda phase: pub.wait(10))
            pub.wait(20)
        finally:
            pub.stop.set()
            pub.join(60)
        assert [s for s in pub.statuses if s != 200] == [], pub.refusals
        got = sub.messages(len(pub.accepted), want=lambda m: bool(m.data), max_reads=20000)
        assert [m.text for m in got] == pub.accepted
        sub.close()


def test_tenant_pools_and_tiers_are_shared_by_two_processes(redis_cluster: RedisClusterNodes) -> None:
    """Two processes' quotas (two lease counters) on one Cluster: the tier's per-client limit and the tenant's pool
    count every process's streams; a refused tenant stream gives its client lease back."""
    def ctx(ip: str, tenant: str | None) -> RequestContext:
        c = RequestContext(ClientIdentity(ip=ip))
        if tenant is not None:
            c.extra["tenant"] = tenant
        return c

    async def run() -> None:
        url = f"{redis_cluster.url}?cluster=1&prefix=p{uuid.uuid4().hex[:6]}&timeout=5"
        counters = [LeaseCounter.from_url(url, lease=30.0) for _ in range(2)]
        quotas = [SharedTenantQuota(SharedTieredQuota(default_server_tiers(), lc), lc, default_pool=4,
                                    pools={"small": 1}) for lc in counters]
        try:
            held = []
            for i in range(4):                         # pool of 4 for tenant "acme", over two processes
                c = ctx(f"10.5.0.{i}", "acme")
                assert await quotas[i % 2].acquire(c)
                held.append((quotas[i % 2], c))
            refused = ctx("10.5.0.9", "acme")
            assert not await quotas[1].acquire(refused) and refused.extra["quota_reason"] == "tenant_quota"
            assert "quota_lease" not in refused.extra    # its client lease was given back
            a, b = ctx("10.5.1.1", "small"), ctx("10.5.1.1", "small")
            assert await quotas[0].acquire(a) and not await quotas[1].acquire(b)
            for q, c in held[:1]:
                await q.release(c)
            assert await quotas[1].acquire(refused)    # a released slot is free for the other process
            same = [ctx("10.5.2.2", None) for _ in range(4)]     # tenant-less: the neutral tier's 3 per client
            assert [await quotas[i % 2].acquire(c) for i, c in enumerate(same)] == [True, True, True, False]
            client_key = counters[0].key("c", "10.5.1.1")
            assert await counters[0].client.zcard(client_key) == 1
            assert counters[0].down is False and counters[1].down is False
        finally:
            for lc in counters:
                await lc.close()

    asyncio.run(run())
