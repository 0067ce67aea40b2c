"""Memory per distinct client is bounded by the configured caps (issue 17).

Found: ~1.6 KB per new client address, growing in a straight line over 40,000 addresses and unchanged when every
cap was set to 2,000 — the live rules replaced the configured online-feature store (``live_max_keys``) by a
default-sized one. Here every per-client structure is registered in ``Runtime.client_state`` with its bound; the
tests drive waves of distinct client keys and show that, once the bounds are reached, another wave adds (almost) no
memory and no structure exceeds its bound. Memory is counted as live interpreter memory blocks
(``sys.getallocatedblocks``: every small object is one), which does not depend on the allocator's arenas or on other
processes and costs nothing to read (bench/client_memory.py reports bytes per tracked client with tracemalloc).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import sys
import time

from stormguard.features.clients.online import OnlineClientFeatures
from stormguard.scoring.stores.memory import MemoryStore
from stormguard.server.app import create_app
from stormguard.server.layers.limiter import GcraBuckets
from stormguard.server.layers.reputation_gate import ReputationService
from stormguard.server.ops.settings import ServerSettings

from stormguard.config import load_config

CAP = 1000


def address(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def blocks() -> int:
    gc.collect()
    return sys.getallocatedblocks()


def bounded_app():
    cfg = load_config(None)
    cfg = dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, max_keys=CAP))
    settings = ServerSettings(ip_rate=1e6, ip_burst=1e6, live_max_keys=CAP, block_cache_size=CAP,
                              limiter_max_entries=CAP, model="none", heartbeat_interval=60.0)
    rep = ReputationService.from_config(cfg, settings)
    return create_app(settings, reputation=rep), rep


async def connect(app, ip: str) -> int:
    """One /events request through the whole ASGI stack; the client leaves right after the head."""
    status = 0

    async def receive():
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {"type": "http", "method": "GET", "path": "/events", "raw_path": b"/events", "query_string": b"topic=a",
             "headers": [(b"host", b"x"), (b"accept", b"text/event-stream"), (b"user-agent", b"curl/8.5")],
             "client": (ip, 40000), "server": ("127.0.0.1", 8000), "scheme": "http", "http_version": "1.1",
             "root_path": "", "asgi": {"version": "3.0"}, "state": {}}
    await app(scope, receive, send)
    return status


def test_a_second_wave_of_clients_adds_no_memory_through_the_app():
    app, rep = bounded_app()
    rt = app.state.stormguard
    wave_size = 3 * CAP

    async def wave(start: int) -> None:
        for base in range(start, start + wave_size, 100):
            statuses = await asyncio.gather(*(connect(app, address(i)) for i in range(base, base + 100)))
            assert set(statuses) == {200}
        deadline = time.monotonic() + 30
        while rep.live._queue and time.monotonic() < deadline:    # the live rules drain their queue
            await asyncio.sleep(0.01)
        assert not rep.live._queue

    async def run() -> list[int]:
        async with app.router.lifespan_context(app):
            sizes = []
            for n in range(3):
                await wave(n * wave_size)
                sizes.append(blocks())
            for name, (entries, bound, _) in rt.client_state.snapshot().items():
                assert entries <= bound, f"{name}: {entries} entries over its bound {bound}"
            snap = rt.client_state.snapshot()
            assert snap["live_features"][0] == CAP and snap["live_features"][2] >= 2 * wave_size - CAP
            return sizes

    sizes = asyncio.run(run())
    growth = sizes[2] - sizes[1]
    # unbounded, each new client kept ~20 objects (1.5 KB); bounded, the third wave keeps next to none
    assert growth < wave_size // 10, f"a third wave of {wave_size} new clients kept {growth} more memory blocks"


def test_a_million_client_keys_through_the_per_client_structures():
    """1,000,000 distinct keys through the limiter's buckets, the online features, the gate's block cache and the
    memory store: each stays at its cap, and the second half million adds no memory."""
    buckets = GcraBuckets(3.0, 2.0, max_entries=CAP)
    features = OnlineClientFeatures("src_ip", 300.0, max_keys=CAP)
    store = MemoryStore(max_keys=CAP)
    app, rep = bounded_app()
    gate = rep.gate
    now = time.time()

    async def drive(start: int, stop: int) -> None:
        for i in range(start, stop):
            ip = address(i)
            buckets.take(ip)
            features.open({"src_ip": ip, "ts": now, "status": 200, "user_agent": "curl/8.5"})
            if i % 4 == 0:
                gate.note_block(ip, now + 300.0, -80.0, now)
                await store.add(ip, -20.0, "rule", now)

    asyncio.run(drive(0, 500_000))
    half = blocks()
    asyncio.run(drive(500_000, 1_000_000))
    full = blocks()
    assert len(buckets) <= CAP and features.key_count == CAP and len(gate) == CAP and len(store) == CAP
    assert features.evicted_keys == 1_000_000 - CAP and gate.evicted == 250_000 - CAP
    assert full - half < 1000, f"the second half million keys kept {full - half} more memory blocks"


def test_waves_of_loopback_clients_over_sockets_add_no_memory_past_the_caps():
    """The socket-level run: waves of distinct 127.x.y.z addresses against the real server (caps 500)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from server_harness import SSEClient, running_server

    cap, wave_size = 500, 1500
    settings = {"live_max_keys": cap, "block_cache_size": cap, "limiter_max_entries": cap, "enable_test_routes": True,
                "ip_rate": 1000.0, "ip_burst": 1000.0}

    def connect_socket(port: int, source: str) -> int:
        client = SSEClient(port, "/events?topic=w", source=source, timeout=15)
        client.close()
        return client.status

    with running_server(settings, args=("--no-model",)) as srv:
        def memory() -> dict:
            return httpx.get(srv.url + "/_test/memory", timeout=10).json()

        def wave(n: int) -> int:
            sources = [f"127.{100 + n}.{i // 250}.{i % 250 + 1}" for i in range(wave_size)]
            with ThreadPoolExecutor(16) as pool:
                assert set(pool.map(lambda s: connect_socket(srv.port, s), sources)) == {200}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:   # wait until the live rules have seen the whole wave
                if memory()["structures"]["live_queue"][0] == 0:
                    break
            return memory()["blocks"]

        sizes = [wave(n) for n in range(3)]
        structures = memory()["structures"]
        for name, (entries, bound, _) in structures.items():
            assert entries <= bound, f"{name}: {entries} entries over its bound {bound}"
        assert structures["live_features"][0] == cap and structures["limiter_ip"][0] <= cap
        assert sizes[2] - sizes[1] < wave_size // 5, f"a third wave kept {sizes[2] - sizes[1]} more memory blocks"
