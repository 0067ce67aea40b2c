"""Overhead of mounting stormguard (issue 19), each against the unprotected app in the same run:

* ``protect(app)`` middleware: a plain Starlette ``/hello`` app, bare vs protected (every layer, memory store);
* ``stormguard proxy``: the bare app directly vs through the proxy;
* the proof-of-work verification: µs per answer checked, and per pass cookie checked (in process).

Requests/s are measured with an in-process asyncio HTTP/1.1 keep-alive client (16 connections, each from its own
loopback address so the limiter treats them as distinct clients), several interleaved runs, medians. The
machine is small and shared: read the ratios, not the absolute numbers.

    python bench/mount.py                  # 5 runs x 3 s per case
    python bench/mount.py --runs 7 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
APPS = '''
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def hello(request):
    return PlainTextResponse("hello\\n")


def bare():
    return Starlette(routes=[Route("/hello", hello), Route("/healthz", hello)])


def protected():
    from stormguard.server import ServerSettings, protect
    app = bare()
    protect(app, ServerSettings(ip_rate=1e9, ip_burst=1e9), sse_paths=("/events",))
    return app
'''


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(cmd: list[str], url: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{cmd[:5]} did not start")


async def _load(port: int, path: str, seconds: float, conns: int = 16) -> float:
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    done = 0
    stop = time.perf_counter() + seconds

    async def one(i: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.9.{i + 1}", 0))
        try:
            while time.perf_counter() < stop:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                done += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(conns)))
    return done / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-mount-"))
    (tmp / "bench_apps.py").write_text(APPS)
    uv = [sys.executable, "-m", "uvicorn", "--factory", "--app-dir", str(tmp), "--host", "127.0.0.1", "--loop", "uvloop",
          "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    ports = {name: _port() for name in ("bare", "protected", "proxy")}
    procs = [_start([*uv[:4], f"bench_apps:{name}", *uv[4:], "--port", str(ports[name])],
                    f"http://127.0.0.1:{ports[name]}/healthz", {}) for name in ("bare", "protected")]
    settings = json.dumps({"ip_rate": 1e9, "ip_burst": 1e9})
    procs.append(_start([sys.executable, "-m", "stormguard", "proxy", "--upstream", f"http://127.0.0.1:{ports['bare']}",
                         "--port", str(ports["proxy"]), "--log-level", "warning"],
                        f"http://127.0.0.1:{ports['proxy']}/_stormguard/healthz", {"STORMGUARD_SERVER_SETTINGS": settings}))
    rates: dict[str, list[float]] = {k: [] for k in ports}
    try:
        for _ in range(args.runs):
            for name in ("bare", "protected", "proxy"):
                rates[name].append(asyncio.run(_load(ports[name], "/hello", args.seconds)))
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"requests/s (median of {args.runs} x {args.seconds:g} s, 16 keep-alive connections):")
    for name in ("bare", "protected", "proxy"):
        print(f"  {name:<10} {med[name]:>9,.0f}   runs {[round(x) for x in rates[name]]}")
    print(f"protect(app) / bare: {med['protected'] / med['bare']:.2f}x   proxy / direct: {med['proxy'] / med['bare']:.2f}x")
    from stormguard.server.layers.challenge import Challenger, solve

    c = Challenger("bench", difficulty=16)
    ch = c.challenge_for("192.0.2.1")
    n = str(solve(ch, 16))
    cookie = c.cookie_for("192.0.2.1")
    per_answer = min(timeit.repeat(lambda: c.check_answer("192.0.2.1", ch, n), number=20000, repeat=5)) / 20000
    per_cookie = min(timeit.repeat(lambda: c.cookie_valid("192.0.2.1", cookie), number=20000, repeat=5)) / 20000
    t0 = time.perf_counter()
    solve(c.challenge_for("192.0.2.2"), 16)
    print(f"challenge: verify an answer {per_answer * 1e6:.1f} µs, check a pass cookie {per_cookie * 1e6:.1f} µs; "
          f"solving 16 bits in CPython took {time.perf_counter() - t0:.2f} s (a browser's WebCrypto is comparable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
