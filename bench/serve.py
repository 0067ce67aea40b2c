"""Server bench (issue 4, "What must show" item 4): stormguard's SSE hub with every layer on vs bare sse-starlette.

    python bench/serve.py                  # 3 runs, medians (default: 8,000 sessions, 5,000 idle streams)
    python bench/serve.py --quick          # 1 run, small counts: a smoke test (~1 min)
    python bench/serve.py --runs 5 --sessions 12000 --streams 5000 --wrk-seconds 5

Both apps run in their own ``uvicorn`` subprocess with the same settings (one worker, ``--loop uvloop --http
httptools --no-access-log``, everything else uvicorn's defaults, as ``stormguard serve`` uses them); both are up
for the whole run (a fresh pair per run) and the measures alternate between them in slices, so the load other
processes put on the machine drifts over both alike. Per run:

1. warm-up (200 sessions each), then **idle memory**, one app at a time: RSS (``/proc/<pid>/status`` VmRSS)
   before and after opening ``--streams`` idle streams (each has received its first message), delta / streams.
   Measured on fresh processes because RSS is not returned to the OS after streams close.
2. **churn**: ``--sessions`` × (connect, receive the first SSE message, close) per app, ``--concurrency`` in flight,
   in ``--slices`` alternating slices, each session from the next of 16,384 loopback source addresses: sessions/s,
   time-to-first-event p50/p99 (connect start → end of the first message, at that concurrency), and the server's
   CPU per session (utime + stime from ``/proc/<pid>/stat``), which the generator's own CPU use and the other
   processes on the 2 cores distort much less than wall time.
3. **refusals** with ``wrk`` (C, cheap; connects from 127.0.0.1), ``--wrk-slices`` alternating slices: stormguard's
   blocked client — 127.0.0.1 is blocked in the reputation store — on ``/events`` (an EventSource: *stop*, 204 +
   ``Connection: close``, so a new connection per refusal) and on a non-SSE path (403 + ``Retry-After``,
   keep-alive); the bare app's ``/hello`` 200 with keep-alive and with ``Connection: close``. Each refusal row is
   compared with the bare 200 under the same connection policy (for information also 204 vs keep-alive 200).
4. after the runs, **in-process ASGI cost**: each app's callable awaited directly with a no-op ``send`` (no
   sockets, no uvicorn): CPU µs per blocked-client refusal vs per bare ``/hello`` — the app's own share, free of
   network and machine-load noise, so a server change can be judged from it before a full run.

stormguard settings: ``ServerSettings()`` defaults, nothing raised. The load generator is admitted by *keying*,
not by raised limits: every session comes from another source address (16,384 of them), so each address opens at
most ~1 session per 5 s against the default 3/s burst 2 bucket, and holds at most 1 of its 3 neutral streams.
Every layer runs its full logic on every request: identity (socket address; no trusted proxies configured),
breaker (closed, records every outcome), reputation gate (``ReputationEngine`` over the memory store, one
``decide`` per request), limiter (a GCRA take per request), quota (acquire/release, ``X-IP-Rating``). Audit logging
stays off (the default ``audit_path=None``) and no observers are attached (``create_app``'s default), so the
online-features/reputation-rules observer cost is not in these numbers. Churn failures (e.g. a *pace* refusal) are
counted and printed; a run with failures is not comparable.

Exit status 0 whatever the outcome (a measurement, not a test); missed targets print ``MISSED``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BLOCKED_IP = "127.0.0.1"          # wrk cannot choose its source address: the blocked client is 127.0.0.1
TICK = os.sysconf("SC_CLK_TCK")


# -- the stormguard app under test (uvicorn --factory serve:stormguard_app --app-dir bench) ---------------------
def stormguard_app() -> Any:
    """``create_app`` with default settings, the reputation gate adapter on the engine (memory store), 127.0.0.1
    blocked."""
    from stormguard.scoring.engine import ReputationEngine
    from stormguard.scoring.reputation import Reputation
    from stormguard.scoring.stores import open_store
    from stormguard.server.app import create_app
    from stormguard.server.layers.reputation_gate import ReputationGateAdapter
    from stormguard.server.ops.settings import ServerSettings

    from stormguard.config import Config

    cfg = Config()
    store = open_store("memory://", cfg)
    engine = ReputationEngine(store, cfg)
    now = store.now()
    store.put(Reputation(BLOCKED_IP, -80.0, now, now, now + 3600.0, ("bench-blocked",)))  # type: ignore[attr-defined]

    # The gate `stormguard serve` uses: one store read per new connection, blocks remembered for
    # block_recheck_seconds (which is what lets the outermost fast path refuse a known-blocked client).
    gate = ReputationGateAdapter(engine, recheck=ServerSettings().block_recheck_seconds)

    return create_app(ServerSettings(), reputation_gate=gate)


# -- server processes -------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One uvicorn process (the app runs in this very pid: one worker, no reloader)."""

    def __init__(self, name: str, target: str, factory: bool, health: str) -> None:
        self.name, self.target, self.factory, self.health = name, target, factory, health
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-serve-{name}-", suffix=".log", delete=False)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Server:
        cmd = [sys.executable, "-m", "uvicorn", *(["--factory"] if self.factory else []), self.target,
               "--app-dir", str(BENCH), "--host", "127.0.0.1", "--port", str(self.port), "--loop", "uvloop",
               "--http", "httptools", "--no-access-log", "--log-level", "warning", "--timeout-graceful-shutdown", "3"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STORMGUARD_")}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    s.sendall(f"GET {self.health} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def cpu(self) -> float:
        """utime + stime of the server process, seconds."""
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def rss(self) -> int:
        """Resident set size in bytes."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        os.unlink(self.log.name)


APPS = {
    "bare": ("serve_bare:app", False, "/hello"),
    "stormguard": ("serve:stormguard_app", True, "/healthz"),
}


# -- wrk --------------------------------------------------------------------------------------------------------
@dataclass
class WrkResult:
    rps: float = 0.0
    requests: int = 0
    non2xx: int = 0
    errors: str = ""
    seconds: float = 0.0
    cpu: float = 0.0


def run_wrk(server: Server, path: str, seconds: float, connections: int, close: bool) -> WrkResult:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(seconds))}s", "--timeout", "5s"]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://127.0.0.1:{server.port}{path}")
    cpu0 = server.cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    cpu1 = server.cpu()
    res = WrkResult()
    if m := re.search(r"Requests/sec:\s*([\d.]+)", out):
        res.rps = float(m.group(1))
    if m := re.search(r"(\d+) requests in ([\d.]+)(m?s)", out):
        res.requests = int(m.group(1))
        res.seconds = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
    if m := re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out):
        res.non2xx = int(m.group(1))
    if m := re.search(r"Socket errors:.*", out):
        res.errors = m.group(0)
    res.cpu = cpu1 - cpu0
    return res


# -- one run: both servers up, measures interleaved so drifting machine load hits both alike ---------------------
@dataclass
class AppRun:
    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


PATH = "/events?topic=bench"
WRK_CASES = {  # key: {app: (path, Connection: close?)}
    "ka": {"bare": ("/hello", False), "stormguard": ("/hello", False)},        # 200 vs blocked non-SSE 403
    "close": {"bare": ("/hello", True), "stormguard": (PATH, True)},          # 200 vs blocked EventSource 204
}


async def measure_run(index: int, args: argparse.Namespace) -> dict[str, AppRun]:
    from loadgen import IdleStreams, churn, probe, source_addresses

    order = ("bare", "stormguard") if index % 2 == 0 else ("stormguard", "bare")
    out = {app: AppRun() for app in order}
    servers: dict[str, Server] = {}
    sources = source_addresses(1, 16384)
    try:
        for app in order:
            target, factory, health = APPS[app]
            servers[app] = Server(app, target, factory, health).start()
        for app, server in servers.items():   # sanity: the measured paths answer what they should
            checks = {"stream": await probe(server.port, PATH, source="127.2.0.1")}
            if app == "bare":
                checks["hello"] = await probe(server.port, "/hello")
            else:
                checks["blocked /events"] = await probe(server.port, PATH, source=BLOCKED_IP)
                checks["blocked /hello"] = await probe(server.port, "/hello", source=BLOCKED_IP)
            out[app].notes.append(", ".join(f"{k}: {s}" for k, (s, _) in checks.items()))
            await churn(server.port, PATH, sessions=200, concurrency=8, sources=source_addresses(3, 2000),
                        deadline_s=20)

        # idle memory, one server at a time (each still fresh: RSS does not go back down after streams close)
        for app in order:
            server, v = servers[app], out[app].values
            await asyncio.sleep(0.3)
            rss0 = server.rss()
            idle = IdleStreams()
            await idle.open(server.port, PATH, args.streams, concurrency=64, sources=sources, deadline_s=90)
            await asyncio.sleep(1.0)
            rss1 = server.rss()
            v["idle_streams"] = len(idle.transports)
            v["mem_per_stream"] = (rss1 - rss0) / max(1, len(idle.transports))
            if idle.failures:
                out[app].notes.append(f"idle: {idle.failures} failed {idle.statuses}")
            await idle.close()
        await asyncio.sleep(1.0)

        # churn, in slices alternating between the apps; addresses continue where the last slice stopped
        rev = sources[::-1]
        per_slice = max(1, -(-args.sessions // args.slices))
        acc = {app: {"ok": 0, "fail": 0, "wall": 0.0, "cpu": 0.0, "gen": 0.0, "lat": [], "st": {}} for app in order}
        for k in range(args.slices):
            for app in order:
                server, a = servers[app], acc[app]
                off = (k * per_slice) % len(rev)
                cpu0, me0 = server.cpu(), self_cpu()
                res = await churn(server.port, PATH, sessions=per_slice, concurrency=args.concurrency,
                                  sources=rev[off:] + rev[:off], deadline_s=args.churn_deadline / args.slices)
                a["cpu"] += server.cpu() - cpu0
                a["gen"] += self_cpu() - me0
                a["ok"] += res.sessions
                a["fail"] += res.failures
                a["wall"] += res.wall
                a["lat"] += res.latencies
                for st, n in res.statuses.items():
                    a["st"][st] = a["st"].get(st, 0) + n
                await asyncio.sleep(0.2)
        for app, a in acc.items():
            v = out[app].values
            lat = sorted(a["lat"]) or [float("nan")]
            v["churn_rate"] = a["ok"] / a["wall"] if a["wall"] else 0.0
            v["ttfe_p50_ms"] = lat[int(0.50 * len(lat))] * 1e3
            v["ttfe_p99_ms"] = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3
            v["churn_cpu_us"] = a["cpu"] / max(1, a["ok"]) * 1e6
            v["gen_cpu_us"] = a["gen"] / max(1, a["ok"] + a["fail"]) * 1e6
            if a["fail"]:
                out[app].notes.append(f"churn: {a['fail']} failed {a['st']}")

        # refusals vs plain 200s (wrk), alternating in slices too
        if shutil.which("wrk"):
            slice_s = max(1, round(args.wrk_seconds / args.wrk_slices))
            for key, per_app in WRK_CASES.items():
                tot = {app: [0, 0.0, 0.0, 0, ""] for app in order}   # requests, seconds, cpu, non2xx, errors
                for _ in range(args.wrk_slices):
                    for app in order:
                        path, close = per_app[app]
                        w = run_wrk(servers[app], path, slice_s, args.wrk_connections, close)
                        t = tot[app]
                        t[0] += w.requests
                        t[1] += w.seconds
                        t[2] += w.cpu
                        t[3] += w.non2xx
                        t[4] = t[4] or w.errors
                for app, (n, secs, cpu, non2xx, errors) in tot.items():
                    v = out[app].values
                    v[f"rps_{key}"] = n / secs if secs else 0.0
                    v[f"rps_{key}_cpu_us"] = cpu / n * 1e6 if n else float("nan")
                    expect_non2xx = app == "stormguard" and key == "ka"       # the 403 refusal
                    if (non2xx > 0) != expect_non2xx or errors:
                        out[app].notes.append(f"wrk {key}: {n} requests, non-2xx {non2xx} {errors}".strip())
    finally:
        for server in servers.values():
            server.stop()
    return out


# -- in-process ASGI cost: the apps' own CPU per request, without sockets, uvicorn or machine-load noise ---------
def _scope(path: str, ip: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")],
            "client": (ip, 40000), "server": ("127.0.0.1", 8000), "state": {}}


async def inprocess_costs(n: int = 20000, reps: int = 5) -> dict[str, float]:
    """Median CPU µs per call of each app's ASGI callable with a no-op ``send`` (lifespan not run)."""
    import serve_bare

    sg = stormguard_app()
    apps = {"bare /hello 200": (serve_bare.app, "/hello"), "stormguard blocked non-SSE 403": (sg, "/hello"),
            "stormguard blocked /events 204": (sg, "/events")}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    samples: dict[str, list[float]] = {k: [] for k in apps}
    for _ in range(reps):
        for label, (app, path) in apps.items():
            for _ in range(n // 10):
                await app(_scope(path, BLOCKED_IP), receive, send)
            t = time.process_time()
            for _ in range(n):
                await app(_scope(path, BLOCKED_IP), receive, send)
            samples[label].append((time.process_time() - t) / n * 1e6)
    return {k: statistics.median(v) for k, v in samples.items()}


# -- report -----------------------------------------------------------------------------------------------------
# (label, key, unit, higher_is_better, target ratio or None, fmt)
ROWS = [
    ("churn: sessions/s", "churn_rate", "1/s", True, 0.8, "{:.0f}"),
    ("churn: server CPU per session", "churn_cpu_us", "µs", False, None, "{:.0f}"),
    ("churn: generator CPU per session", "gen_cpu_us", "µs", False, None, "{:.0f}"),
    ("time to first event p50", "ttfe_p50_ms", "ms", False, None, "{:.2f}"),
    ("time to first event p99", "ttfe_p99_ms", "ms", False, None, "{:.2f}"),
    ("refusal 403 keep-alive vs 200 keep-alive: req/s", "rps_ka", "1/s", True, 1.0, "{:.0f}"),
    ("   server CPU per response", "rps_ka_cpu_us", "µs", False, None, "{:.1f}"),
    ("refusal 204 stop (new conn) vs 200 new conn: req/s", "rps_close", "1/s", True, 1.0, "{:.0f}"),
    ("   server CPU per response", "rps_close_cpu_us", "µs", False, None, "{:.1f}"),
    ("idle memory per stream", "mem_per_stream", "KB", False, 1.2, "{:.1f}"),
]


def median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def report(runs: dict[str, list[AppRun]], args: argparse.Namespace, inproc: dict[str, float]) -> None:
    def med(app: str, key: str) -> float:
        vals = [r.values.get(key, float("nan")) for r in runs[app]]
        m = median(vals)
        return m / 1024 if key == "mem_per_stream" else m

    def each(app: str, key: str, fmt: str) -> str:
        scale = 1024 if key == "mem_per_stream" else 1
        return " ".join(fmt.format(r.values.get(key, float("nan")) / scale) for r in runs[app])

    print()
    print(f"medians over {len(runs['bare'])} run(s); sessions={args.sessions} concurrency={args.concurrency} "
          f"streams={args.streams} wrk={args.wrk_seconds}s×{args.wrk_connections}c")
    head = f"{'measure':52} {'unit':>4} {'bare':>9} {'stormguard':>10} {'sg/bare':>8}  target    verdict  (runs sg | bare)"
    print(head)
    print("-" * len(head))
    for label, key, unit, higher, target, fmt in ROWS:
        b, s = med("bare", key), med("stormguard", key)
        ratio = s / b if b else float("nan")
        verdict, tgt = "", ""
        if target is not None:
            tgt = f"{'≥' if higher else '≤'} {target:.1f}×"
            ok = ratio >= target if higher else ratio <= target
            verdict = "OK" if ok else "MISSED"
        print(f"{label:52} {unit:>4} {fmt.format(b):>9} {fmt.format(s):>10} {ratio:>7.2f}×  {tgt:8}  {verdict:7}  "
              f"({each('stormguard', key, fmt)} | {each('bare', key, fmt)})")
    # CPU-based equivalents: wall rates on a loaded 2-core box are noisy; CPU per unit of work much less so
    print()
    print("CPU-based view (server CPU per unit of work; a rate target r× corresponds to CPU ≤ 1/r × bare):")
    for label, key, target in (("churn", "churn_cpu_us", 0.8), ("refusal keep-alive", "rps_ka_cpu_us", 1.0),
                               ("refusal new conn", "rps_close_cpu_us", 1.0)):
        b, s = med("bare", key), med("stormguard", key)
        r = s / b if b else float("nan")
        print(f"  {label:20} stormguard/bare CPU = {r:.2f}× (target ≤ {1 / target:.2f}×)  "
              f"{'OK' if r <= 1 / target else 'MISSED'}")
    b_ka, s_close = med("bare", "rps_ka"), med("stormguard", "rps_close")
    print(f"  for information: 204 refusal (new connection each) vs bare keep-alive 200: {s_close / b_ka:.2f}×")
    if inproc:
        base = inproc["bare /hello 200"]
        print()
        print("In-process ASGI cost (app callable only: no sockets, no uvicorn; CPU µs per request, median of 5):")
        for label, us in inproc.items():
            extra = "" if label.startswith("bare") else (f"  {us / base:.2f}× bare (≤ 1.00× needed for a refusal "
                                                         f"cheaper than a 200)  {'OK' if us <= base else 'MISSED'}")
            print(f"  {label:32} {us:6.1f} µs{extra}")
    for app in ("bare", "stormguard"):
        for i, r in enumerate(runs[app]):
            for note in r.notes:
                print(f"  note {app} run {i + 1}: {note}")


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    except OSError:
        return "?"


async def main_async(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(BENCH))
    runs: dict[str, list[AppRun]] = {"bare": [], "stormguard": []}
    t0 = time.monotonic()
    for i in range(args.runs):
        t = time.monotonic()
        result = await measure_run(i, args)
        for app, r in result.items():
            runs[app].append(r)
            vals = r.values
            print(f"run {i + 1} {app:10} churn {vals.get('churn_rate', 0):6.0f}/s "
                  f"cpu {vals.get('churn_cpu_us', 0):5.0f}µs  p50 {vals.get('ttfe_p50_ms', 0):6.2f}ms "
                  f"p99 {vals.get('ttfe_p99_ms', 0):6.2f}ms  ka {vals.get('rps_ka', 0):6.0f}/s "
                  f"({vals.get('rps_ka_cpu_us', 0):5.1f}µs)  close {vals.get('rps_close', 0):6.0f}/s "
                  f"({vals.get('rps_close_cpu_us', 0):5.1f}µs)  mem {vals.get('mem_per_stream', 0) / 1024:5.1f}KB/stream",
                  flush=True)
        print(f"run {i + 1}: {time.monotonic() - t:.0f}s, load {loadavg()}", flush=True)
        if i + 1 < args.runs and time.monotonic() - t0 > args.budget * (i + 1) / (i + 2):
            print(f"budget: stopping after {i + 1} run(s)")
            break
    inproc = await inprocess_costs() if not args.quick else await inprocess_costs(5000, 3)
    report(runs, args, inproc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--sessions", type=int, default=8000, help="churn sessions per app and run")
    p.add_argument("--streams", type=int, default=5000, help="idle streams for the memory measure")
    p.add_argument("--concurrency", type=int, default=32, help="churn sessions in flight")
    p.add_argument("--slices", type=int, default=4, help="churn slices per app and run, alternating apps")
    p.add_argument("--wrk-seconds", type=float, default=6.0, help="wrk seconds per case, app and run")
    p.add_argument("--wrk-slices", type=int, default=2, help="wrk slices per case, alternating apps")
    p.add_argument("--wrk-connections", type=int, default=32)
    p.add_argument("--churn-deadline", type=float, default=30.0, help="seconds; churn stops early after this")
    p.add_argument("--budget", type=float, default=480.0, help="seconds; no new run starts past its share")
    p.add_argument("--quick", action="store_true", help="1 run, 2,000 sessions, 1,000 streams, 2 s wrk, 2 slices")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.sessions, args.streams, args.wrk_seconds, args.slices = 1, 2000, 1000, 2.0, 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, args.streams + 1000):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.streams + 2000), hard))
    if not shutil.which("wrk"):
        print("wrk not found (apt-get install wrk): refusal rates not measured", file=sys.stderr)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {loadavg()}")
    import uvloop

    uvloop.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
