"""Run the real server under uvicorn in a subprocess on 127.0.0.1, and talk SSE to it over raw sockets.

Every wait here is bounded (by a deadline and a count), so a broken server fails a test instead of hanging CI.
Distinct clients: bind the client socket to another loopback address (127.0.0.2, 127.0.0.3, …).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-publish-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0, **get: Any) -> bool:
    """Poll ``url`` until it answers 200 (True), or ``proc`` exits or ``timeout`` passes (False). The deadline is for a
    loaded machine (starts took 30-46 s under heavy load), not a bound on how fast a start should be."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1.0, **get).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


def uvicorn_factory_cmd(target: str, port: int) -> list[str]:
    """``uvicorn --factory MODULE:FACTORY`` for a factory in ``tests/``, as the harness runs every app."""
    return [sys.executable, "-m", "uvicorn", "--factory", target, "--app-dir", str(PROJECT_ROOT / "tests"), "--host",
            "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning"]


class ServerProcess:
    """``python -m stormguard.server.cli serve`` in a subprocess, settings through the environment."""

    def __init__(self, settings: dict[str, Any] | None = None, *, args: tuple[str, ...] = ()) -> None:
        self.settings = {"publish_token": TOKEN, "ip_rate": 1000.0, "ip_burst": 1000.0, **(settings or {})}
        self.args = args
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="stormguard-server-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:  # a deadline on a loaded machine, not a bound
        env = {**os.environ, "STORMGUARD_SERVER_SETTINGS": json.dumps(self.settings)}
        env.pop("STORMGUARD_PUBLISH_TOKEN", None)
        cmd = [sys.executable, "-m", "stormguard.server.cli", "serve", "--host", "127.0.0.1", "--port",
               str(self.port), "--log-level", "warning", *self.args]
        self.proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        if wait_healthy(self.url + "/healthz", self.proc, timeout):
            return self
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
        self.stop()
        raise RuntimeError(f"server did not become healthy within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        return self.proc.returncode

    def publish(self, topic: str, data: Any, **extra: Any) -> httpx.Response:
        return httpx.post(self.url + "/publish", json={"topic": topic, "data": data, **extra},
                          headers={"authorization": f"Bearer {TOKEN}"}, timeout=10.0)

    def metrics(self) -> dict[str, float]:
        """The /metrics samples as ``{'name{labels}': value}``."""
        text = httpx.get(self.url + "/metrics", timeout=10.0).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def metric(self, name: str, default: float = 0.0) -> float:
        return self.metrics().get(name, default)


def stream_rating(port: int, source: str, path: str = "/events?topic=t") -> tuple[int, str | None]:
    """Open one stream from ``source``, read its status and ``X-IP-Rating``, close it (a short-lived connection)."""
    c = SSEClient(port, path, source=source)
    try:
        return c.status, c.headers.get("x-ip-rating")
    finally:
        c.close()


@contextmanager
def running_server(settings: dict[str, Any] | None = None, *, args: tuple[str, ...] = ()) -> Iterator[ServerProcess]:
    server = ServerProcess(settings, args=args).start()
    try:
        yield server
    finally:
        server.stop()
        os.unlink(server.log.name)


@dataclass
class Message:
    """One parsed SSE message (fields as the EventSource would see them) or a comment."""

    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.data)


class SSEClient:
    """A raw-socket SSE client: exact control over the source address, buffers and abrupt disconnects."""

    def __init__(self, port: int, path: str, *, source: str = "127.0.0.1", headers: dict[str, str] | None = None,
                 rcvbuf: int | None = None, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunked = False
        self.eof = False
        self._body = b""
        self._read_head()

    def _recv(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _read_head(self) -> None:
        for _ in range(1000):
            if b"\r\n\r\n" in self.buf:
                break
            if not self._recv():
                raise ConnectionError("connection closed before the response head")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"

    def _decode(self) -> None:
        """Move complete body bytes from ``buf`` to ``_body`` (de-chunking if needed)."""
        if not self.chunked:
            self._body += self.buf
            self.buf = b""
            return
        while b"\r\n" in self.buf:
            size_line, rest = self.buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self.eof = True
                self.buf = b""
                return
            if len(rest) < size + 2:
                return
            self._body += rest[:size]
            self.buf = rest[size + 2:]

    def messages(self, count: int = 1, *, max_reads: int = 2000, want=None) -> list[Message]:
        """Read until ``count`` messages (matching ``want`` if given) arrived, EOF, or ``max_reads`` recv calls."""
        out: list[Message] = []
        for _ in range(max_reads):
            self._decode()
            while b"\n\n" in self._body:
                block, self._body = self._body.split(b"\n\n", 1)
                msg = parse_block(block.decode())
                if want is None or want(msg):
                    out.append(msg)
            if len(out) >= count or self.eof:
                break
            if not self._recv():
                self._decode()
        return out

    def read_all(self, max_reads: int = 2000) -> list[Message]:
        """Everything until the server closes the stream (bounded)."""
        return self.messages(count=10**9, max_reads=max_reads)

    def abort(self) -> None:
        """Close with RST (SO_LINGER 0): a hard, forced disconnect."""
        import struct

        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def parse_block(block: str) -> Message:
    msg = Message()
    for line in block.split("\n"):
        if line.startswith(":"):
            msg.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            msg.id = value
        elif name == "event":
            msg.event = value
        elif name == "data":
            msg.data.append(value)
        elif name == "retry" and value.isdigit():
            msg.retry = int(value)
    return msg


def seamed_app() -> Any:
    """uvicorn ``--factory`` target exercising the seams: a reputation gate and tiers (no scoring/ needed).

    127.0.0.66 is blocked; 127.0.0.67 is tier *low* (1 stream, short lifetime); 127.0.0.68 is *trusted*.
    """
    from stormguard.server.app import create_app
    from stormguard.server.layers.gate import GateDecision
    from stormguard.server.ops.settings import ServerSettings, TierLimits

    async def gate(ctx: Any) -> GateDecision | None:
        ip = ctx.identity.ip
        if ip == "127.0.0.66":
            return GateDecision(allow=False, score=-80.0, reason="blocked", retry_ms=300000)
        if ip == "127.0.0.67":
            return GateDecision(tier="low", score=-20.0)
        if ip == "127.0.0.68":
            return GateDecision(tier="trusted", score=75.0)
        return None

    from starlette.responses import JSONResponse
    from starlette.routing import Route

    seen: list[dict[str, Any]] = []

    def observer(kind: str, ctx: Any, info: dict[str, Any]) -> None:
        seen.append({"kind": kind, "ip": ctx.identity.ip, "tier": ctx.tier,
                     **{k: v for k, v in info.items() if isinstance(v, str | None)}})

    async def observed(request: Any) -> JSONResponse:
        return JSONResponse(seen)

    settings = ServerSettings.from_env()
    settings.tiers = {"trusted": TierLimits(8, 900.0), "neutral": TierLimits(3, 300.0), "low": TierLimits(1, 300.0, 0.5)}
    app = create_app(settings, reputation_gate=gate, observers=[observer])
    app.router.routes.append(Route("/_test/observed", observed))
    return app


@contextmanager
def running_factory(factory: str, settings: dict[str, Any] | None = None) -> Iterator[ServerProcess]:
    """Like :func:`running_server`, but plain ``uvicorn --factory`` on a factory of this module."""
    server = ServerProcess(settings)

    def start(timeout: float = 120.0) -> ServerProcess:
        env = {**os.environ, "STORMGUARD_SERVER_SETTINGS": json.dumps(server.settings)}
        cmd = uvicorn_factory_cmd(f"server_harness:{factory}", server.port)
        server.proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=server.log, stderr=subprocess.STDOUT)
        if wait_healthy(server.url + "/healthz", server.proc, timeout):
            return server
        server.stop()
        raise RuntimeError(f"server did not start:\n{server.output()}")

    start()
    try:
        yield server
    finally:
        server.stop()
        os.unlink(server.log.name)
