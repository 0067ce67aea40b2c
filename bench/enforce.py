"""Enforcement beyond the process (issue 15): how fast CrowdSec decisions reach the store, how fast a block reaches
the kernel.

1. **Import**: ``--decisions`` ban decisions (distinct addresses) applied by
   :class:`~stormguard.scoring.enforce.crowdsec_import.DecisionImporter` to a memory store and to a Redis store
   (a ``redis-server`` started here), against the baseline of the same number of bare ``store.block`` calls: the
   importer's decisions/s and its ratio to the store's own floor. With crowdsec available (``.ci/run`` unpacks it),
   the same decisions also go through a real Local API: ``cscli decisions import``, then one timed startup pull
   (HTTP + JSON + apply).
2. **Block → nftables element**: a block written to the Redis store while ``stormguard export nftables --apply
   --watch --interval I`` runs (``nft`` inside ``unshare -n``); the time until ``nft -j list set`` shows the
   element, ``--samples`` times per interval. Needs root and network namespaces; skipped otherwise.

Medians over ``--runs``. A measurement, not a test (exits 0).

    python bench/enforce.py
    python bench/enforce.py --runs 5 --decisions 50000 --samples 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from redis_server import RedisServer  # noqa: E402
from stormguard.scoring.enforce.crowdsec_import import DecisionImporter  # noqa: E402
from stormguard.scoring.enforce.lapi import LocalApi  # noqa: E402
from stormguard.scoring.enforce.ranges import RangeTable  # noqa: E402
from stormguard.scoring.stores import open_store  # noqa: E402


def addr(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def decisions(n: int) -> list[dict]:
    return [{"id": i, "origin": "crowdsec", "scenario": "crowdsecurity/http-probing", "scope": "Ip", "type": "ban",
             "value": addr(i), "duration": "3h59m58.5s"} for i in range(n)]


async def import_rate(url: str, n: int) -> tuple[float, float]:
    """(importer decisions/s, bare store.block calls/s) on a fresh prefix of ``url``."""
    payload = decisions(n)
    rates = []
    for kind in ("importer", "baseline"):
        store = open_store(url, failover=False)
        await store.clear()
        t0 = time.perf_counter()
        if kind == "importer":
            await DecisionImporter(store, RangeTable()).apply(payload, [], startup=True)
        else:
            now = time.time()
            for i in range(n):
                await store.block(addr(i), now + 14398.5, "crowdsec:crowdsecurity/http-probing", now=now)
        rates.append(n / (time.perf_counter() - t0))
        assert len(await store.blocks(limit=n + 1)) == n
        await store.clear()
        await store.close()
    return rates[0], rates[1]


async def lapi_pull_rate(n: int, redis_url: str) -> float | None:
    try:
        from crowdsec_lapi import CrowdsecLapi, binaries
    except ImportError:
        return None
    if binaries() is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        lapi = CrowdsecLapi(Path(d)).start()
        try:
            lapi.add_machine()
            key = lapi.add_bouncer("bench")
            rows = [{"value": addr(i), "duration": "4h", "reason": "bench/import", "type": "ban", "scope": "ip"}
                    for i in range(n)]
            f = Path(d) / "decisions.json"
            f.write_text(json.dumps(rows))
            lapi.cscli("decisions", "import", "-i", str(f))
            store = open_store(redis_url, failover=False)
            await store.clear()
            api = LocalApi(lapi.url, bouncer_key=key, timeout=120)
            imp = DecisionImporter(store, RangeTable(), api)
            t0 = time.perf_counter()
            applied = await imp.pull(startup=True)
            took = time.perf_counter() - t0
            await api.close()
            await store.clear()
            await store.close()
            return applied / took
        finally:
            lapi.stop()


def nft_latency(redis_url: str, interval: float, samples: int) -> list[float] | None:
    if not all(shutil.which(t) for t in ("unshare", "nsenter", "nft")):
        return None
    holder = subprocess.Popen(["unshare", "-n", "sleep", "600"], stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    if holder.poll() is not None:
        return None
    cmd = ["nsenter", f"--net=/proc/{holder.pid}/ns/net", "nft"]
    from stormguard.scoring.stores.sync import SyncStore

    store = SyncStore(open_store(redis_url, failover=False))
    store.clear()
    watch = subprocess.Popen([sys.executable, "-m", "stormguard", "export", "nftables", "--store", redis_url,
                              "--nft-command", " ".join(cmd), "--apply", "--watch", "--interval", str(interval),
                              "--duration", "600"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = []
    try:
        for i in range(samples):
            ip = f"192.0.2.{i + 1}"
            t0 = time.perf_counter()
            store.block(ip, time.time() + 600, "bench")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                r = subprocess.run([*cmd, "-j", "list", "set", "inet", "stormguard", "blocked4"],
                                   capture_output=True, text=True)
                if ip in r.stdout:
                    out.append(time.perf_counter() - t0)
                    break
                time.sleep(0.01)
            time.sleep(interval * 0.37)          # start the next sample at another phase of the watch's rounds
    finally:
        watch.terminate()
        watch.wait(30)
        holder.kill()
        store.clear()
        store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--decisions", type=int, default=20000)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--intervals", default="1,0.2")
    a = ap.parse_args()
    redis = RedisServer(shutil.which("redis-server") or "redis-server")
    redis.start()
    try:
        for name, url in (("memory", "memory://?max_keys=2000000"), ("redis", f"{redis.url}?prefix=benchimp")):
            runs = [asyncio.run(import_rate(url, a.decisions)) for _ in range(a.runs)]
            imp = statistics.median(r[0] for r in runs)
            base = statistics.median(r[1] for r in runs)
            print(f"import into {name:<6}: {imp:>10,.0f} decisions/s  (baseline store.block {base:,.0f}/s, "
                  f"ratio {imp / base:.2f}; median of {a.runs}, {a.decisions:,} decisions)")
        pulls = [asyncio.run(lapi_pull_rate(a.decisions, f"{redis.url}?prefix=benchpull")) for _ in range(a.runs)]
        if pulls[0] is None:
            print("Local API pull: skipped (crowdsec not found)")
        else:
            print(f"Local API startup pull -> redis: {statistics.median(pulls):,.0f} decisions/s "
                  f"(HTTP + JSON + apply; median of {a.runs})")
        for interval in (float(x) for x in a.intervals.split(",")):
            lat = nft_latency(f"{redis.url}?prefix=benchnft", interval, a.samples)
            if lat is None:
                print("block -> nftables element: skipped (needs unshare, nsenter, nft and root)")
                break
            print(f"block -> nftables element, --watch --interval {interval:g}: median {statistics.median(lat):.2f} s, "
                  f"max {max(lat):.2f} s ({len(lat)} samples)")
    finally:
        redis.proc.terminate()


if __name__ == "__main__":
    main()
