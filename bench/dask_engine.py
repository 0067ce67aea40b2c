"""Dask engine benchmark: ``replay --engine dask`` with one and two memory-limited workers against the local
engine, in one run.

    python bench/dask_engine.py                         # 1.5 GB capture + 1.5M-line log, 400 MB workers, 3 runs
    python bench/dask_engine.py --runs 5 --capture-mb 2048 --memory-limit 300MB
    python bench/dask_engine.py --skip-log

Inputs are built by ``build_corpus.py`` from the reference corpus (re-addressed, time-shifted copies of every
corpus capture concatenated into one classic pcap; the corpus Apache log repeated) and cached in ``bench/out``.
What is timed, each run, interleaved so machine noise hits all alike:

* the local engine (the baseline): :func:`~stormguard.features.replay.replay_to_file` with its defaults (reader
  processes for large logs, a background writer process), into one Parquet file, in a fresh interpreter (timed
  around the call, without interpreter start-up);
* the Dask engine on a ``LocalCluster`` of 1 worker and of 2 workers (one thread each, ``--memory-limit`` each;
  a capture in 16 MB spans routed to as many flow shares as there are workers, a log in 16 MB byte ranges), into
  a Parquet dataset. Cluster start-up (about 2-5 s) is not in the time: a cluster outlives one command in production.

Peak worker memory is the largest resident set size of any worker process, sampled every 50 ms (psutil) while a
run is in flight; a worker whose process changed during a run (killed by its nanny for passing the limit, and
restarted) is counted as killed. Medians over ``--runs``. This is a measurement, not a test: it exits 0 either way
and prints the figures (and MISSED when a worker was killed or the record counts disagree).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from build_corpus import DEFAULT_CORPUS, DEFAULT_OUT, build_capture, build_log


class PeakRss:
    """Sample the RSS of some processes in a thread; ``peak`` is the largest seen (bytes)."""

    def __init__(self, pids: list[int], every: float = 0.05) -> None:
        import psutil

        self.procs = [psutil.Process(pid) for pid in pids]
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in self.procs:
                try:
                    self.peak = max(self.peak, proc.memory_info().rss)
                except Exception:  # noqa: BLE001 - a process gone (killed worker): counted elsewhere
                    pass
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


LOCAL_CODE = """
import json, sys, time
from stormguard.features.replay import replay_to_file
from stormguard.report import ReplayStats
stats = ReplayStats()
started = time.perf_counter()
rows = replay_to_file(sys.argv[1:-1], sys.argv[-1], stats, show_progress=False)
print(json.dumps({"s": time.perf_counter() - started, "rows": rows}))
"""


def run_local(inputs: list[Path], out: Path) -> tuple[float, int]:
    """The local engine in a fresh interpreter (it forks reader and writer processes, which must not inherit this
    process's Dask client); the time is measured around ``replay_to_file`` only, as for the Dask engine."""
    import json
    import subprocess

    done = subprocess.run([sys.executable, "-c", LOCAL_CODE, *map(str, inputs), str(out)], check=True,
                          capture_output=True, text=True, timeout=3600)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["s"]), int(result["rows"])


def run_dask(client: Any, inputs: list[Path], out: Path, shares: int) -> tuple[float, int, Any, int, int]:
    from stormguard.features.distributed.replay import replay_dask

    from stormguard.report import ReplayStats

    pids = sorted(client.run(os.getpid).values())
    stats = ReplayStats()
    with PeakRss(pids) as peak:
        started = time.perf_counter()
        rows = replay_dask(client, inputs, out, stats, capture_shares=shares, show_progress=False)
        elapsed = time.perf_counter() - started
    after = sorted(client.run(os.getpid).values())
    killed = len(set(pids) - set(after))
    return elapsed, rows, stats, peak.peak, killed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--capture-mb", type=float, default=1536.0, help="size of the built capture (default 1536)")
    ap.add_argument("--log-lines", type=int, default=1_500_000, help="lines of the built log (default 1.5M)")
    ap.add_argument("--skip-log", action="store_true")
    ap.add_argument("--skip-capture", action="store_true")
    ap.add_argument("--memory-limit", default="400MB", help="per Dask worker (default 400MB)")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    from stormguard.features.distributed.cluster import dask_client

    workloads: list[tuple[str, Path]] = []
    if not args.skip_capture:
        workloads.append(("capture", build_capture(args.corpus, args.out_dir, size_mb=args.capture_mb)[0]))
    if not args.skip_log:
        workloads.append(("log", build_log(args.corpus, args.out_dir, lines=args.log_lines)[0]))
    scratch = args.out_dir / "dask-bench"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    clusters = {}
    stack = []
    try:
        for n in (1, 2):
            started = time.perf_counter()
            ctx = dask_client(None, n_workers=n, memory_limit=args.memory_limit, dashboard="127.0.0.1:0",
                              report=False)
            clusters[n] = ctx.__enter__()
            stack.append(ctx)
            print(f"cluster of {n} worker(s) ({args.memory_limit} each) up in {time.perf_counter() - started:.1f} s",
                  flush=True)
        for run in range(args.runs):
            for name, path in workloads:
                out = scratch / "local.parquet"
                t, rows = run_local([path], out)
                out.unlink(missing_ok=True)
                results.setdefault((name, "local"), []).append({"s": t, "rows": rows, "peak": None, "killed": 0})
                print(f"run {run + 1} {name:7} local     {t:7.2f} s  {rows:,} records", flush=True)
                for n, client in clusters.items():
                    out = scratch / f"dask{n}.parquet"
                    t, rows, stats, peak, killed = run_dask(client, [path], out, shares=n)
                    shutil.rmtree(out, ignore_errors=True)
                    failed = stats.skipped.get("dask task failed", 0)
                    results.setdefault((name, f"dask-{n}"), []).append(
                        {"s": t, "rows": rows, "peak": peak, "killed": killed + failed})
                    print(f"run {run + 1} {name:7} dask x{n}   {t:7.2f} s  {rows:,} records, peak worker "
                          f"{peak / 2**20:.0f} MB, killed {killed}, failed tasks {failed}", flush=True)
    finally:
        for ctx in reversed(stack):
            ctx.__exit__(None, None, None)
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\nmedians over {args.runs} run(s); workers limited to {args.memory_limit}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'input':8} {'size':>8} {'engine':8} {'time s':>8} {'MB/s':>7} {'records/s':>10} {'vs local':>8} "
          f"{'peak worker MB':>14}")
    for name, path in workloads:
        size = path.stat().st_size
        local = statistics.median(r["s"] for r in results[(name, "local")])
        counts = {r["rows"] for key, rs in results.items() if key[0] == name for r in rs}
        for engine in ("local", "dask-1", "dask-2"):
            rs = results[(name, engine)]
            t = statistics.median(r["s"] for r in rs)
            rows = rs[0]["rows"]
            peaks = [r["peak"] for r in rs if r["peak"] is not None]
            peak = f"{statistics.median(peaks) / 2**20:14.0f}" if peaks else f"{'-':>14}"
            killed = sum(r["killed"] for r in rs)
            note = f"  MISSED: {killed} worker(s) killed / tasks failed" if killed else ""
            print(f"{name:8} {size / 2**20:7.0f}M {engine:8} {t:8.2f} {size / 2**20 / t:7.1f} {rows / t:10,.0f} "
                  f"{local / t:7.2f}x {peak}{note}")
        if len(counts) != 1:
            print(f"MISSED: {name}: record counts differ between engines: {sorted(counts)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
