"""uvicorn ``--factory`` targets for the browser and storm tests, plus a runner that serves them on 127.0.0.1.

Both build the real app with :func:`create_app` and extend its Starlette routes (``app.router.routes``) — no
change to ``server/app.py`` is needed:

* :func:`browser_app` — the EventSource demo page (``/demo``), a connection log of every ``/events`` attempt
  (observer ``open``/``refusal`` records with the server's wall-clock time, ``/_test/connlog``), and a reputation
  gate that blocks the addresses listed in the file ``$STORMGUARD_TEST_BLOCK_FILE`` (the test writes it to turn a
  client into a blocked one).
* :func:`storm_app` — a stand-in for the reputation rules: an address with ``$STORMGUARD_TEST_BLOCK_AFTER``
  attempts within 10 s is blocked for 5 min (the real ``scoring`` engine is not wired into the app yet).

The test routes are listed in ``exempt_paths`` by the tests' settings so that the defence layers never refuse them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from server_harness import PROJECT_ROOT, ServerProcess

BLOCK_FILE_ENV = "STORMGUARD_TEST_BLOCK_FILE"
BLOCK_AFTER_ENV = "STORMGUARD_TEST_BLOCK_AFTER"
CONNLOG_PATH = "/_test/connlog"


def _connlog_route(records: deque[dict[str, Any]]) -> Any:
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def connlog(request: Any) -> JSONResponse:
        return JSONResponse(list(records))

    return Route(CONNLOG_PATH, connlog, methods=["GET"])


def _observer(records: deque[dict[str, Any]]) -> Any:
    def observer(kind: str, ctx: Any, info: dict[str, Any]) -> None:
        if kind in ("open", "refusal"):
            records.append({"t": time.time(), "kind": kind, "ip": ctx.identity.ip, "layer": info.get("layer"),
                            "reason": info.get("reason"), "action": info.get("action")})

    return observer


def browser_app() -> Any:
    """The app with the demo page, a connection log and a file-controlled block list."""
    from stormguard.server.app import create_app
    from stormguard.server.hub.page import page_routes
    from stormguard.server.layers.gate import GateDecision
    from stormguard.server.ops.settings import ServerSettings

    block_file = os.environ.get(BLOCK_FILE_ENV)

    async def gate(ctx: Any) -> GateDecision | None:
        if block_file and os.path.exists(block_file):
            with open(block_file, encoding="utf-8") as fh:
                if ctx.identity.ip in fh.read().split():
                    return GateDecision(allow=False, score=-80.0, reason="blocked", retry_ms=300000)
        return None

    records: deque[dict[str, Any]] = deque(maxlen=100_000)
    app = create_app(ServerSettings.from_env(), reputation_gate=gate, observers=[_observer(records)])
    app.router.routes.extend([*page_routes(("/", "/demo")), _connlog_route(records)])
    return app


def storm_app() -> Any:
    """The app with a rate-of-attempts block rule (bounded state: one small deque per recently seen address).

    Attempts are counted by an observer (``open`` and ``refusal`` events: connection attempts on ``/events``, never
    an admitted publish); the gate only enforces the blocks the observer set.
    """
    from stormguard.server.app import create_app
    from stormguard.server.layers.gate import GateDecision
    from stormguard.server.ops.settings import ServerSettings

    block_after = int(os.environ.get(BLOCK_AFTER_ENV, "20"))
    window, block_for = 10.0, 300.0
    attempts: dict[str, deque[float]] = {}
    blocked: dict[str, float] = {}

    def observer(kind: str, ctx: Any, info: dict[str, Any]) -> None:
        if kind not in ("open", "refusal"):
            return
        ip, now = ctx.identity.ip, time.monotonic()
        if ip in blocked:
            return
        dq = attempts.get(ip)
        if dq is None:
            if len(attempts) >= 100_000:                 # bounded: forget the oldest address
                attempts.pop(next(iter(attempts)))
            dq = attempts[ip] = deque(maxlen=block_after)
        dq.append(now)
        if len(dq) == block_after and now - dq[0] < window:
            blocked[ip] = now + block_for
            del attempts[ip]

    async def gate(ctx: Any) -> GateDecision | None:
        until = blocked.get(ctx.identity.ip)
        if until is None:
            return None
        now = time.monotonic()
        if now >= until:
            del blocked[ctx.identity.ip]
            return None
        return GateDecision(allow=False, score=-60.0, reason="blocked", retry_ms=int((until - now) * 1000))

    return create_app(ServerSettings.from_env(), reputation_gate=gate, observers=[observer])


@contextmanager
def running_app(factory: str, settings: dict[str, Any], env: dict[str, str] | None = None,
                timeout: float = 120.0) -> Iterator[ServerProcess]:
    """Serve ``browser_app:<factory>`` under uvicorn (uvloop, httptools, no access log) on a free loopback port."""
    server = ServerProcess(settings)
    run_env = {**os.environ, "STORMGUARD_SERVER_SETTINGS": json.dumps(server.settings), **(env or {})}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", f"browser_app:{factory}", "--app-dir",
           str(PROJECT_ROOT / "tests"), "--host", "127.0.0.1", "--port", str(server.port), "--loop", "uvloop",
           "--http", "httptools", "--no-access-log", "--log-level", "warning", "--backlog", "4096"]
    server.proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=run_env, stdout=server.log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.output()}")
            try:
                if httpx.get(server.url + "/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not become healthy within {timeout} s:\n{server.output()}")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()
        Path(server.log.name).unlink(missing_ok=True)


def connlog(server: ServerProcess) -> list[dict[str, Any]]:
    return httpx.get(server.url + CONNLOG_PATH, timeout=10.0).json()


def read_audit(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def vm_rss_kb(pid: int) -> int:
    """Resident set size of a process, from ``/proc/<pid>/status`` (kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
