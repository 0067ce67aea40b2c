"""Several ``stormguard serve`` processes on one Redis Cluster: the per-client concurrent-stream limit holds across
them (stream counts are leases in the Cluster, server/layers/quota_shared.py), a SIGKILLed process's streams stop
counting once its leases expire, and the shared limiter answers from the Cluster. Every wait is bounded by a
deadline and polls a condition; no timing assertions."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from contextlib import ExitStack

from redis_server import RedisClusterNodes
from server_harness import SSEClient, running_server
from stormguard.server.layers.quota_shared import LeaseCounter

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
