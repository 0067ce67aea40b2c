"""Shared serving state on one Redis (the baseline) vs a three-master Redis Cluster, both started here on loopback.

Per run and target: reputation updates/s (``RedisStore.update``, one EVALSHA each) and stream-lease
acquire+release pairs/s (:class:`~stormguard.server.layers.quota_shared.LeaseCounter`), ``--concurrency`` calls in
flight; then bytes per reputation key and per lease from ``MEMORY USAGE``. Prints medians over ``--runs`` and the
cluster/single ratio. Bounded by ``--ops`` per measurement. A measurement, not a test (exits 0).

    python bench/cluster.py                   # 3 runs, 20,000 ops each
    python bench/cluster.py --runs 5 --ops 50000 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from redis_server import RedisClusterNodes, RedisServer  # noqa: E402
from stormguard.scoring.stores import open_store  # noqa: E402
from stormguard.server.layers.quota_shared import LeaseCounter  # noqa: E402


async def store_rate(url: str, ops: int, conc: int) -> float:
    store = open_store(url, failover=False)
    await store.ping()
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            await store.update(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "add", -1.0, "bench")

    try:
        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(ops)))
        return ops / (time.perf_counter() - t)
    finally:
        await store.clear()
        await store.close()


async def lease_rate(url: str, ops: int, conc: int) -> float:
    leases = LeaseCounter.from_url(url, lease=30.0)
    await leases.client.ping()
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            lease = await leases.acquire("c", f"10.0.{i >> 8 & 255}.{i & 255}", 3)
            if lease is not None:
                await leases.release(lease)

    try:
        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(ops)))
        assert leases.down is False, "Redis failed during the run"
        return ops / (time.perf_counter() - t)
    finally:
        await leases.close()


async def footprint(url: str, n: int = 2000) -> tuple[float, float]:
    """Bytes per reputation key (hash + its rank/expiry entries) and per open-stream lease (MEMORY USAGE)."""
    store = open_store(url, failover=False)
    leases = LeaseCounter.from_url(url, lease=30.0)
    try:
        for i in range(n):
            await store.update(f"10.1.{i >> 8}.{i & 255}", "add", -5.0, "bench")
        r, tag = store.client, store.tag("x")          # one shard on the baseline: one tag
        total = 0
        for i in range(n):
            h, _, _ = store.keys_for(f"10.1.{i >> 8}.{i & 255}")
            total += int(await r.memory_usage(h) or 0)
        zsets = int(await r.memory_usage(f"{tag}:z") or 0) + int(await r.memory_usage(f"{tag}:x") or 0)
        per_key = (total + zsets) / n
        held = [await leases.acquire("c", "10.2.0.1", 10**9) for _ in range(n)]
        lease_bytes = int(await leases.client.memory_usage(leases.key("c", "10.2.0.1")) or 0) / n
        for lease in held:
            if lease is not None:
                await leases.release(lease)
        return per_key, lease_bytes
    finally:
        await store.clear()
        await store.close()
        await leases.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ops", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=32)
    a = ap.parse_args()
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not binary or not cli:
        print("needs redis-server and redis-cli (apt-get install redis-server)")
        return 0
    print(f"load average {os.getloadavg()[0]:.2f}; {a.runs} runs x {a.ops} ops, {a.concurrency} in flight")
    single = RedisServer(binary)
    single.start()
    work = tempfile.mkdtemp(prefix="sg-bench-cluster-")
    cluster = RedisClusterNodes(binary, cli, work, replicas=0)
    cluster.start()
    targets = {"single Redis (baseline)": f"{single.url}?prefix=b&timeout=5",
               "Redis Cluster, 3 masters": f"{cluster.url}?cluster=1&prefix=b&shards=48&timeout=5"}
    rates: dict[str, dict[str, list[float]]] = {name: {"store": [], "lease": []} for name in targets}
    try:
        for run in range(a.runs):
            for name, url in targets.items():
                s = asyncio.run(store_rate(url, a.ops, a.concurrency))
                lz = asyncio.run(lease_rate(url, a.ops, a.concurrency))
                rates[name]["store"].append(s)
                rates[name]["lease"].append(lz)
                print(f"run {run + 1} {name:26} store updates/s {s:9,.0f}   lease acquire+release/s {lz:9,.0f}")
        print()
        med = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in rates.items()}
        for name in targets:
            print(f"median {name:26} store updates/s {med[name]['store']:9,.0f}   "
                  f"lease acquire+release/s {med[name]['lease']:9,.0f}")
        base, cl = med["single Redis (baseline)"], med["Redis Cluster, 3 masters"]
        print(f"cluster / single: store {cl['store'] / base['store']:.2f}x, lease {cl['lease'] / base['lease']:.2f}x "
              f"(one client process; on one 2-core machine the masters share the cores with the client)")
        per_key, per_lease = asyncio.run(footprint(targets["single Redis (baseline)"]))
        print(f"Redis memory: {per_key:,.0f} bytes per reputation key (hash + rank + expiry entries), "
              f"{per_lease:,.0f} bytes per open-stream lease")
    finally:
        cluster.stop()
        single.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
