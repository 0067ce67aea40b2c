"""Run a storm: generator processes (one per CPU by default), a progress line a second, the report at the end.

Each process drives its share of every class's clients (client ``i`` runs in process ``i mod P``; the single
publisher sequence in process 0) on its own event loop (uvloop when installed). The parent scrapes the target's
``/metrics`` once a second for the server's resident memory and event-loop lag, prints the progress line, and
merges the processes' counters into the report. Everything stops by itself: no new attempt after the duration,
every open stream closed after the drain, every process joined (or killed) shortly after.
"""

from __future__ import annotations

import asyncio
import csv
import json
import multiprocessing as mp
import os
import random
import resource
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stormguard.storm.behaviours import BEHAVIOUR_LOOPS, Context
from stormguard.storm.profile import Profile
from stormguard.storm.record import Recorder, build_report


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _child(slot: int, procs: int, profile: Profile, host: str, port: int, token: str | None, start: float,
           live: Any, conn: Any) -> None:
    _raise_nofile()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    rec = Recorder(start)
    ctx = Context(host=host, port=port, profile=profile, rec=rec, start=start,
                  publish_at=start + profile.warmup, end=start + profile.warmup + profile.duration,
                  close=start + profile.warmup + profile.duration + profile.drain, token=token, live=live, slot=slot)

    async def main() -> None:
        tasks = []
        for spec in profile.classes:
            loop_fn = BEHAVIOUR_LOOPS[spec.behaviour]
            for i in range(slot, spec.clients, procs):
                rng = random.Random(f"{profile.seed}:{spec.name}:{i}")
                tasks.append(asyncio.ensure_future(loop_fn(ctx, spec, i, rng)))
        try:
            async with asyncio.timeout(max(1.0, ctx.close - time.monotonic()) + profile.timeout + 5):
                await asyncio.gather(*tasks, return_exceptions=True)
        except TimeoutError:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run(main())
    finally:
        conn.send(rec.state())
        conn.close()


def _scrape(url: str) -> dict[str, float]:
    """``rss`` (bytes) and ``loop_lag`` (seconds) from a Prometheus text page; {} when it cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:  # noqa: S310 - the user's own target
            text = resp.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            out["rss"] = float(line.split()[-1])
        elif line.startswith("stormguard_event_loop_lag_seconds "):
            out["loop_lag"] = float(line.split()[-1])
    return out


def address_labels(profile: Profile) -> list[tuple[str, str, str, bool]]:
    """(address, class, behaviour, abusive) for every source address the profile uses."""
    rows = []
    for spec in profile.classes:
        for i in range(spec.addresses or spec.clients):
            rows.append((spec.address(i), spec.name, spec.behaviour, spec.abusive))
    return rows


def write_labels(profile: Profile, path: Path) -> int:
    rows = address_labels(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["key", "class", "behaviour", "label"])
        for addr, name, behaviour, abusive in rows:
            w.writerow([addr, name, behaviour, "abusive" if abusive else "human"])
    return len(rows)


def _rss_of(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_storm(target: str, profile: Profile, *, token: str | None = None, processes: int = 0,
              metrics_url: str | None = None, progress: bool = True, out: Any = sys.stderr,
              server_pid: int | None = None) -> dict[str, Any]:
    """Drive ``profile`` against ``target`` (``http://HOST:PORT``) and return the report (see :mod:`.record`).
    ``server_pid``: a local server's process, whose RSS is read from ``/proc`` when its ``/metrics`` has none."""
    parts = urlsplit(target)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--target must be http://HOST:PORT, got {target!r}")
    host, port = parts.hostname, parts.port or 80
    procs = processes or profile.processes or max(1, len(os.sched_getaffinity(0)))
    procs = max(1, min(procs, max(c.clients for c in profile.classes)))
    metrics_url = metrics_url or f"http://{host}:{port}/metrics"
    _raise_nofile()
    ctx = mp.get_context("fork")
    live = ctx.Array("q", 4 * procs, lock=False)
    start = time.monotonic() + 0.5
    children = []
    for slot in range(procs):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(slot, procs, profile, host, port, token, start, live, send),
                        daemon=True)
        p.start()
        send.close()
        children.append((p, recv))
    total = profile.warmup + profile.duration + profile.drain
    server: dict[int, dict[str, float]] = {}
    last = [0, 0, 0, 0]
    while time.monotonic() < start + total + 0.5:
        tick = time.monotonic()
        t = int(tick - start)
        sample = _scrape(metrics_url)
        if "rss" not in sample and server_pid is not None:
            rss = _rss_of(server_pid)
            if rss is not None:
                sample["rss"] = rss
        if sample:
            server[max(0, t)] = sample
        now = [sum(live[k * 4 + j] for k in range(procs)) for j in range(4)]
        d_att, d_ok = now[0] - last[0], now[1] - last[1]
        if progress and t >= 0:
            rss = f"{sample['rss'] / 1e6:.0f} MB" if "rss" in sample else "n/a"
            lag = f"{sample['loop_lag'] * 1000:.0f} ms" if "loop_lag" in sample else "n/a"
            print(f"storm {t:>4}s  sessions ended/s {d_att:>6}  success {100 * d_ok / d_att if d_att else 0:5.1f}%  "
                  f"well-behaved streams {now[2]:>6}  events {now[3] - last[3]:>7}/s  server RSS {rss}  loop lag {lag}",
                  file=out, flush=True)
        last = now
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    rec = Recorder(start)
    for p, recv in children:
        if recv.poll(profile.timeout + 15):
            rec.merge(recv.recv())
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)
    clients = {c.name: c.clients for c in profile.classes}
    addresses = {c.name: c.addresses or c.clients for c in profile.classes}
    report = build_report(rec, profile, target=target, duration=profile.warmup + profile.duration, server=server,
                          clients=clients, addresses=addresses)
    report["processes"] = procs
    return report


def save_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)
