"""Bytes per tracked client, and memory per *new* client once the caps are reached (issue 17, "Bounded state").

    python bench/client_memory.py                 # 3 runs, medians (caps 2,000; waves of 6,000 new clients)
    python bench/client_memory.py --quick         # 1 run, caps 500
    python bench/client_memory.py --runs 5 --cap 5000

In process, no sockets: the real app (``create_app`` with the reputation service over the memory store, live
rules on, model off) is awaited directly with one ``GET /events`` per distinct client address, the client leaving
right after the head, in waves of ``3 × cap`` new addresses. tracemalloc counts live Python allocations:

* **bytes per tracked client** = memory kept after the first wave / ``cap`` (what one client costs while tracked);
* **bytes per new client past the caps** = growth over the third wave / wave size: ~0 when every per-client
  structure is bounded.

Baseline in the same run: the same app with the caps at 1,000,000 (what the shipped defaults amount to for a
wave this size), whose growth per new client is the unbounded cost; the ratio bounded / baseline is printed.
Exit status 0 whatever the outcome (a measurement, not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def build(cap: int):
    from stormguard.server.app import create_app
    from stormguard.server.layers.reputation_gate import ReputationService
    from stormguard.server.ops.settings import ServerSettings

    from stormguard.config import load_config

    cfg = load_config(None)
    cfg = dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, max_keys=cap))
    settings = ServerSettings(ip_rate=1e6, ip_burst=1e6, live_max_keys=cap, block_cache_size=cap,
                              limiter_max_entries=cap, model="none", heartbeat_interval=60.0)
    rep = ReputationService.from_config(cfg, settings)
    return create_app(settings, reputation=rep), rep


def measure(cap: int, wave_size: int) -> tuple[float, float]:
    """(bytes per tracked client, bytes per new client in the third wave) for an app with these caps."""
    from test_client_state_bounds import address, connect

    app, rep = build(cap)

    async def wave(start: int) -> None:
        for base in range(start, start + wave_size, 100):
            await asyncio.gather(*(connect(app, address(i)) for i in range(base, base + 100)))
        deadline = time.monotonic() + 60
        while rep.live._queue and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def used() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    async def run() -> list[int]:
        async with app.router.lifespan_context(app):
            sizes = [used()]
            for n in range(3):
                await wave(n * wave_size)
                sizes.append(used())
            return sizes

    tracemalloc.start()
    try:
        sizes = asyncio.run(run())
    finally:
        tracemalloc.stop()
    tracked = min(cap, wave_size)
    return (sizes[1] - sizes[0]) / tracked, (sizes[3] - sizes[2]) / wave_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cap", type=int, default=2000)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    runs, cap = (1, 500) if args.quick else (args.runs, args.cap)
    wave_size = 3 * cap
    rows = []
    for run in range(runs):
        bounded = measure(cap, wave_size)
        baseline = measure(1_000_000, wave_size)
        rows.append((bounded, baseline))
        print(f"run {run + 1}: caps {cap}: {bounded[0]:.0f} B per tracked client, {bounded[1]:.1f} B per new client "
              f"past the caps | baseline (caps 1,000,000): {baseline[1]:.0f} B per new client", flush=True)
    tracked = statistics.median(r[0][0] for r in rows)
    past = statistics.median(r[0][1] for r in rows)
    base = statistics.median(r[1][1] for r in rows)
    print(f"median of {runs}: {tracked:.0f} bytes per tracked client; {past:.1f} bytes per new client once the caps "
          f"({cap}) are reached vs {base:.0f} unbounded: ratio {past / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
