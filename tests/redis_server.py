"""A throw-away ``redis-server`` for tests: free loopback port, no persistence, stoppable and restartable on the
same port (the outage test needs exactly that).

Without the binary the Redis tests skip with the reason, except in CI (``STORMGUARD_CORPUS`` set), where a missing
``redis-server`` is a failure: the store must be tested there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1:``port``."""

    def __init__(self, binary: str, port: int | None = None, args: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.args = args
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "no", "--loglevel", "warning", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} on port {self.port}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to clients (what a crashed or OOM-killed Redis looks like)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def redis_binary() -> str:
    """The redis-server path, or skip (locally) / fail (CI) with the reason."""
    binary = shutil.which("redis-server")
    if binary is None:
        msg = "redis-server not installed (apt-get install redis-server): Redis store tests need it"
        if os.environ.get("STORMGUARD_CORPUS"):
            pytest.fail(msg)
        pytest.skip(msg)
    return binary


# Registered under their short names; test modules import the underscored objects (no shadowing lint).
@pytest.fixture(scope="session", name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    """A Redis shared by the session (tests use distinct key prefixes)."""
    server = RedisServer(redis_binary())
    server.start()
    yield server
    server.stop()


@pytest.fixture(name="own_redis_server")
def own_redis_server_fixture() -> Iterator[RedisServer]:
    """A Redis of this test alone (the outage test stops and restarts it)."""
    server = RedisServer(redis_binary())
    server.start()
    yield server
    server.stop()


class RedisClusterNodes:
    """Three ``redis-server`` cluster nodes (no replicas) joined with ``redis-cli --cluster create``."""

    def __init__(self, binary: str, cli: str, workdir: str) -> None:
        self.binary, self.cli, self.workdir = binary, cli, workdir
        self.ports = [self._cluster_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @staticmethod
    def _cluster_port() -> int:
        """A free port whose cluster-bus port (port + 10000) exists and is free too."""
        for _ in range(100):
            port = free_port()
            if port + 10000 > 65535:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
        raise RuntimeError("no free port pair for a cluster node")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout: float = 30.0) -> None:
        for port in self.ports:
            self.procs.append(subprocess.Popen(
                [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                 "--cluster-node-timeout", "2000", "--dir", self.workdir, "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while subprocess.run([self.cli, "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster node {port} did not start")
                time.sleep(0.05)
        subprocess.run([self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, check=True, timeout=60)
        for port in self.ports:
            while b"cluster_state:ok" not in subprocess.run([self.cli, "-p", str(port), "cluster", "info"],
                                                            capture_output=True).stdout:
                if time.monotonic() > deadline:
                    raise RuntimeError("cluster did not reach state ok")
                time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


@pytest.fixture(scope="session", name="redis_cluster")
def redis_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A three-node Redis Cluster on loopback (skips, or fails in CI, like ``redis_server``)."""
    binary = redis_binary()
    cli = shutil.which("redis-cli")
    if cli is None:
        msg = "redis-cli not installed (it comes with redis-server / redis-tools): cluster test needs it"
        if os.environ.get("STORMGUARD_CORPUS"):
            pytest.fail(msg)
        pytest.skip(msg)
    nodes = RedisClusterNodes(binary, cli, str(tmp_path_factory.mktemp("redis-cluster")))
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
