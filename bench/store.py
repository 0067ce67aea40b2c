"""Reputation store benchmark: one run, every number issue 3 asks for, medians over ``--runs``.

Rows (ops/s, higher is better):
* memory store get / add (sync calls and through ``await``), vs ``limits`` moving window (memory) test / hit;
* Redis store get (HMGET) / add (EVALSHA), one caller and ``--tasks`` concurrent asyncio tasks, raw and behind the
  failover wrapper, vs ``limits`` moving window (async redis-py) test / hit and redis-py plain GET;
* pipelined batch load of ``--keys`` scores into Redis (target >= 100,000/s);
* memory store bytes per key at ``--keys`` distinct keys (tracemalloc and RSS delta, in a fresh child process;
  target < 400) with max_keys = ``--keys`` while inserting 10 % more keys (the maximum must never be exceeded).

A measurement, not a test: exit status 0 whether or not a target is met; ``MISSED`` marks a missed target.
Redis: ``--redis URL``, else a private ``redis-server`` on a free loopback port (no persistence).

    python bench/store.py                  # full run (~8 minutes on 2 busy cores)
    python bench/store.py --quick          # smaller sizes, for a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

ROW = "{:<58} {:>14} {:>14}"


def _keys(n: int, offset: int = 0) -> list[str]:
    return [f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(offset, offset + n)]


def _median_rate(samples: list[float]) -> str:
    return f"{statistics.median(samples):,.0f}"


def _spread(samples: list[float]) -> str:
    return f"{min(samples):,.0f}-{max(samples):,.0f}"


class Report:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        print(ROW.format("operation", "median ops/s", "range"))

    def add(self, name: str, samples: list[float], target: float | None = None) -> None:
        med = statistics.median(samples)
        flag = ""
        if target is not None:
            flag = f"  (target >= {target:,.0f}/s{' MISSED' if med < target else ' ok'})"
        print(ROW.format(name, _median_rate(samples), _spread(samples)) + flag, flush=True)
        self.rows.append({"name": name, "median": med, "samples": samples})


# --- memory -------------------------------------------------------------------------------------------------------
def bench_memory(rep: Report, runs: int, ops: int) -> None:
    from limits import parse, storage, strategies
    from stormguard.scoring.stores import MemoryStore

    keys = _keys(100_000)
    store = MemoryStore(max_keys=1_000_000)
    for k in keys:
        store.update_now(k, "add", -1.0, "seed", now=1.0)
    limiter = strategies.MovingWindowRateLimiter(storage.storage_from_string("memory://"))
    item = parse("1000000/minute")
    for k in keys[:10_000]:
        limiter.hit(item, k)

    def timed(fn: Callable[[str], Any], n: int) -> float:
        ks = keys * (n // len(keys) + 1)
        t = time.perf_counter()
        for k in ks[:n]:
            fn(k)
        return n / (time.perf_counter() - t)

    async def atimed(fn: Callable[[str], Awaitable[Any]], n: int) -> float:
        t = time.perf_counter()
        for i in range(n):
            await fn(keys[i % len(keys)])
        return n / (time.perf_counter() - t)

    now = time.time()
    cases: list[tuple[str, Callable[[], float]]] = [
        ("memory store get (sync)", lambda: timed(lambda k: store.get_now(k, now), ops)),
        ("memory store add (sync)", lambda: timed(lambda k: store.update_now(k, "add", -0.5, "storm", now,
                                                                              -50.0, 300.0), ops)),
        ("memory store get (await)", lambda: asyncio.run(atimed(lambda k: store.get(k, now), ops))),
        ("memory store add (await)", lambda: asyncio.run(atimed(lambda k: store.add(k, -0.5, "storm", now,
                                                                                     -50.0, 300.0), ops))),
        ("limits moving-window memory test (read)", lambda: timed(lambda k: limiter.test(item, k), ops // 4)),
        ("limits moving-window memory hit (update)", lambda: timed(lambda k: limiter.hit(item, k), ops // 4)),
    ]
    for name, fn in cases:
        rep.add(name, [fn() for _ in range(runs)])


# --- redis --------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if not binary:
        raise SystemExit("redis-server not found: install it or pass --redis URL")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--loglevel", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("redis-server did not start")


async def _rate(fn: Callable[[int], Awaitable[Any]], n: int, tasks: int) -> float:
    per = max(1, n // tasks)

    async def worker(w: int) -> None:
        for i in range(per):
            await fn(w * per + i)

    t = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(tasks)))
    return per * tasks / (time.perf_counter() - t)


def bench_redis(rep: Report, url: str, runs: int, ops: int, tasks: int, load_keys: int) -> None:
    import redis.asyncio as aioredis
    from limits import parse
    from limits.aio import storage as aio_storage
    from limits.aio import strategies as aio_strategies
    from stormguard.scoring.stores import open_store
    from stormguard.scoring.stores.sync import SyncStore

    keys = _keys(20_000)
    raw = SyncStore(open_store(f"{url}?prefix=bench&failover=0&max_connections={tasks}"))
    wrapped = SyncStore(open_store(f"{url}?prefix=bench&timeout=1&max_connections={tasks}"))
    raw.clear()
    raw.load_scores(((k, -1.0) for k in keys), now=time.time())
    host_url = url.replace("redis://", "async+redis://", 1)
    lim = aio_storage.RedisStorage(host_url, implementation="redispy", max_connections=tasks)
    limiter = aio_strategies.MovingWindowRateLimiter(lim)
    item = parse("1000000/minute")
    plain = aioredis.Redis.from_url(url, max_connections=tasks)
    now = time.time()

    def run_on(s: SyncStore, coro_fn: Callable[[], Awaitable[float]]) -> float:
        return s.run(coro_fn())

    def add_fn(store: Any) -> Callable[[int], Awaitable[Any]]:
        return lambda i: store.add(keys[i % len(keys)], -0.5, "storm", now, -50.0, 300.0)

    def get_fn(store: Any) -> Callable[[int], Awaitable[Any]]:
        return lambda i: store.get(keys[i % len(keys)], now)

    async def seed_plain() -> None:
        async with plain.pipeline(transaction=False) as p:
            for k in keys:
                p.set(f"plain:{k}", "1")
            await p.execute()

    raw.run(seed_plain())

    for conc in (1, tasks):
        n = ops if conc > 1 else ops // 4
        label = "1 caller" if conc == 1 else f"{conc} tasks"
        rep.add(f"redis store get / HMGET ({label})",
                [run_on(raw, lambda n=n, conc=conc: _rate(get_fn(raw.store), n, conc)) for _ in range(runs)])
        rep.add(f"redis store add / EVALSHA ({label})",
                [run_on(raw, lambda n=n, conc=conc: _rate(add_fn(raw.store), n, conc)) for _ in range(runs)])
        rep.add(f"redis store+failover get ({label})",
                [run_on(wrapped, lambda n=n, conc=conc: _rate(get_fn(wrapped.store), n, conc)) for _ in range(runs)])
        rep.add(f"redis store+failover add ({label})",
                [run_on(wrapped, lambda n=n, conc=conc: _rate(add_fn(wrapped.store), n, conc)) for _ in range(runs)])
        rep.add(f"limits moving-window redis test ({label})",
                [raw.run(_rate(lambda i: limiter.test(item, keys[i % len(keys)]), n, conc)) for _ in range(runs)])
        rep.add(f"limits moving-window redis hit ({label})",
                [raw.run(_rate(lambda i: limiter.hit(item, keys[i % len(keys)]), n, conc)) for _ in range(runs)])
        rep.add(f"redis-py plain GET ({label})",
                [raw.run(_rate(lambda i: plain.get(f"plain:{keys[i % len(keys)]}"), n, conc))
                 for _ in range(runs)])

    bench_load(rep, raw, plain, runs, load_keys)
    raw.clear()
    wrapped.close()
    raw.run(plain.aclose())
    raw.close()


def bench_load(rep: Report, raw: Any, plain: Any, runs: int, load_keys: int) -> None:
    """Pipelined batch load of ``load_keys`` model scores: client keys/s and Redis's own CPU per key."""
    import random

    big = _keys(load_keys, offset=1 << 24)
    # continuous scores, as a trained model emits them (not a few hundred repeated values: those make the sorted
    # sets' inserts artificially cache-friendly); seeded, so every run and every revision loads the same input
    rnd = random.Random(20240611)
    vals = [rnd.uniform(-100.0, 100.0) for _ in big]
    samples, server_us = [], []
    for _ in range(max(1, min(runs, 3))):
        raw.clear()
        gc.collect()
        raw.run(plain.config_resetstat())
        cpu0 = raw.run(plain.info("cpu"))
        c0 = time.process_time()
        t = time.perf_counter()
        n = raw.load_scores(zip(big, vals, strict=True), now=time.time())
        samples.append(n / (time.perf_counter() - t))
        client_us = (time.process_time() - c0) * 1e6 / max(n, 1)
        cpu1 = raw.run(plain.info("cpu"))
        stats = raw.run(plain.info("commandstats"))
        # commands run inside a script are counted twice (on their own and in EVALSHA): EVALSHA alone when used
        if "cmdstat_evalsha" in stats:
            usec = stats["cmdstat_evalsha"]["usec"]
        else:
            usec = sum(v["usec"] for k, v in stats.items() if "info" not in k and "config" not in k)
        server_us.append(usec / max(n, 1))
        proc_us = sum(float(cpu1[f]) - float(cpu0[f]) for f in ("used_cpu_sys", "used_cpu_user")) * 1e6 / max(n, 1)
        cmds = ", ".join(f"{k[8:]} {v['calls']:,}x{v['usec_per_call']:.2f}us" for k, v in sorted(stats.items()))
        print(f"  run: {samples[-1]:,.0f} keys/s, client CPU {client_us:.2f} us/key, Redis commands {server_us[-1]:.2f} us/key, redis-server process "
              f"CPU {proc_us:.2f} us/key (incl. network I/O and parsing) [{cmds}]", flush=True)
    count = raw.count()
    # the daily case: the same clients again with new scores (every hash read and every rank moved, not
    # inserted); informational, no target — measured after the last fresh load, so the store is full
    reload = []
    for _ in range(max(1, min(runs, 3))):
        fresh = [rnd.uniform(-100.0, 100.0) for _ in big]
        t = time.perf_counter()
        n = raw.load_scores(zip(big, fresh, strict=True), now=time.time())
        reload.append(n / (time.perf_counter() - t))
        print(f"  reload run: {reload[-1]:,.0f} keys/s (all {n:,} keys already stored)", flush=True)
    rep.add(f"redis batch load, {load_keys:,} scores (pipelined)", samples, target=100_000)
    rep.add(f"redis batch reload, {load_keys:,} existing keys", reload)
    print(f"  keys in Redis after the load: {count:,}; Redis command CPU for the load: "
          f"{statistics.median(server_us):.2f} us/key (median), i.e. the server-side ceiling is "
          f"{1e6 / max(statistics.median(server_us), 1e-9):,.0f} keys/s on this machine now")
    raw.clear()


def bench_load_only(rep: Report, url: str, runs: int, load_keys: int, shards: int = 1) -> None:
    import redis.asyncio as aioredis
    from stormguard.scoring.stores import open_store
    from stormguard.scoring.stores.sync import SyncStore

    raw = SyncStore(open_store(f"{url}?prefix=bench&failover=0&shards={shards}"))
    plain = aioredis.Redis.from_url(url)
    try:
        bench_load(rep, raw, plain, runs, load_keys)
    finally:
        raw.run(plain.aclose())
        raw.close()


# --- memory footprint (child process, so earlier allocations do not blur it) -------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def footprint_child(n: int) -> dict[str, float]:
    from stormguard.scoring.stores import MemoryStore

    keys = _keys(n + n // 10)
    gc.collect()
    rss0 = _rss()
    store = MemoryStore(max_keys=n)
    peak = 0
    t = time.perf_counter()
    for i, k in enumerate(keys):
        store.update_now(k, "add", -25.0, "reconnect_storm", now=1.7e9 + i, block_score=-50.0, block_seconds=300)
        if i & 1023 == 0:
            peak = max(peak, len(store))
    insert_rate = len(keys) / (time.perf_counter() - t)
    peak = max(peak, len(store))
    rss_per_key = (_rss() - rss0) / len(store)
    del store
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    store = MemoryStore(max_keys=n)
    for i, k in enumerate(keys):
        store.update_now(k, "add", -25.0, "reconnect_storm", now=1.7e9 + i, block_score=-50.0, block_seconds=300)
    traced = (tracemalloc.get_traced_memory()[0] - base) / len(store)
    # the key strings exist in ``keys`` too; count them once, as the store would own them in a server
    key_bytes = sum(sys.getsizeof(k) for k in keys[-len(store):]) / len(store)
    tracemalloc.stop()
    return {"keys": len(store), "max_keys": n, "peak": peak, "evictions": store.evictions,
            "tracemalloc_per_key": traced + key_bytes, "rss_per_key": rss_per_key + key_bytes,
            "insert_per_s": insert_rate}


def bench_footprint(n: int) -> None:
    out = subprocess.run([sys.executable, __file__, "--footprint-child", str(n)], capture_output=True, text=True,
                         timeout=900, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    ok = r["peak"] <= r["max_keys"]
    for label, key in (("tracemalloc", "tracemalloc_per_key"), ("RSS delta", "rss_per_key")):
        v = r[key]
        print(f"memory store bytes/key at {r['keys']:,} keys ({label}, incl. key str): {v:,.0f}"
              f"  (target < 400{' MISSED' if v >= 400 else ' ok'})")
    print(f"memory store max_keys {r['max_keys']:,}: peak {r['peak']:,} while inserting "
          f"{r['keys'] + r['evictions']:,} keys, {r['evictions']:,} evicted"
          f"  ({'never exceeded' if ok else 'EXCEEDED MISSED'}); insert {r['insert_per_s']:,.0f}/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="repetitions per row; medians are reported (default 5)")
    ap.add_argument("--ops", type=int, default=200_000, help="operations per memory-store sample")
    ap.add_argument("--redis-ops", type=int, default=20_000, help="operations per concurrent Redis sample")
    ap.add_argument("--tasks", type=int, default=32, help="concurrent asyncio tasks for the Redis rows")
    ap.add_argument("--keys", type=int, default=1_000_000, help="keys for bytes/key and the batch load")
    ap.add_argument("--redis", metavar="URL", help="use this Redis instead of starting one (keys under {bench})")
    ap.add_argument("--skip-redis", action="store_true")
    ap.add_argument("--skip-footprint", action="store_true")
    ap.add_argument("--load-only", action="store_true", help="only the Redis batch-load rows (at --keys)")
    ap.add_argument("--shards", type=int, default=1,
                    help="with --load-only: the store's shards (hash tags; smaller sorted sets, e.g. 16)")
    ap.add_argument("--quick", action="store_true", help="runs=3, 1/10 of the sizes")
    ap.add_argument("--footprint-child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.footprint_child:
        print(json.dumps(footprint_child(a.footprint_child)))
        return 0
    if a.quick:
        a.runs, a.ops, a.redis_ops, a.keys = 3, a.ops // 10, a.redis_ops // 10, a.keys // 10
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, runs={a.runs}, "
          f"load average {os.getloadavg()[0]:.1f} (other processes share the CPUs: compare medians)", flush=True)
    rep = Report()
    if a.load_only:
        a.skip_footprint = True
    else:
        bench_memory(rep, a.runs, a.ops)
    if not a.skip_redis:
        proc = None
        url = a.redis
        if url is None:
            proc, url = start_redis()
        try:
            if a.load_only:
                bench_load_only(rep, url, a.runs, a.keys, a.shards)
            else:
                bench_redis(rep, url, a.runs, a.redis_ops, a.tasks, a.keys)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
    if not a.skip_footprint:
        bench_footprint(a.keys)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
