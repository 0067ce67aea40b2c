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
from collections.abc import Callable, Iterator
from typing import Any

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
    """``masters`` ``redis-server`` cluster nodes, each with ``replicas`` replicas, joined with ``redis-cli --cluster
    create`` on loopback; helpers for the topology changes the tests make (manual failover, slot migration)."""

    def __init__(self, binary: str, cli: str, workdir: str, masters: int = 3, replicas: int = 0) -> None:
        self.binary, self.cli, self.workdir = binary, cli, workdir
        self.replicas = replicas
        self.ports = [self._cluster_port() for _ in range(masters * (1 + replicas))]
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

    def cmd(self, port: int, *args: str, timeout: float = 10.0) -> str:
        """One ``redis-cli`` command on a node; its reply as text."""
        out = subprocess.run([self.cli, "-p", str(port), *args], capture_output=True, timeout=timeout)
        return out.stdout.decode(errors="replace").strip()

    def _wait(self, what: str, ok: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis cluster: {what} within {timeout} s")
            time.sleep(0.05)

    def start(self, timeout: float = 30.0) -> None:
        for port in self.ports:
            self.procs.append(subprocess.Popen(
                [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                 "--cluster-node-timeout", "2000", "--dir", self.workdir, "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            self._wait(f"node {port} did not start", lambda p=port: self.cmd(p, "ping") == "PONG", timeout)
        subprocess.run([self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       capture_output=True, check=True, timeout=60)
        self.wait_stable(timeout)

    def nodes(self, port: int | None = None) -> list[dict[str, Any]]:
        """``CLUSTER NODES`` as seen by ``port`` (default: the first live node)."""
        rows = []
        for line in self.cmd(port or self.ports[0], "cluster", "nodes").splitlines():
            f = line.split()
            if len(f) < 8:
                continue
            slots = [tuple(int(x) for x in r.split("-")) if "-" in r else (int(r), int(r))
                     for r in f[8:] if not r.startswith("[")]
            rows.append({"id": f[0], "port": int(f[1].split(":")[1].split("@")[0]),
                         "master": "master" in f[2].split(","), "of": f[3], "slots": slots,
                         "fail": "fail" in f[2]})
        return rows

    def wait_stable(self, timeout: float = 30.0) -> None:
        """Every node says ``cluster_state:ok``, agrees on the masters, and every replica's link is up."""
        def ok() -> bool:
            views = []
            for port in self.ports:
                if "cluster_state:ok" not in self.cmd(port, "cluster", "info"):
                    return False
                views.append(sorted(n["port"] for n in self.nodes(port) if n["master"] and n["slots"]))
                role = self.cmd(port, "info", "replication")
                if "role:slave" in role and "master_link_status:up" not in role:
                    return False
            return all(v == views[0] for v in views) and len(views[0]) == len(self.ports) // (1 + self.replicas)
        self._wait("not stable", ok, timeout)

    def masters(self) -> list[int]:
        """Ports of the masters that serve slots, each confirmed by the node itself (``role:master``): a view
        may still list a node demoted by an earlier failover as a master for a moment."""
        return [n["port"] for n in self.nodes() if n["master"] and n["slots"] and not n["fail"]
                and "role:master" in self.cmd(n["port"], "info", "replication")]

    def owner(self, slot: int) -> int:
        """Port of the master serving ``slot``."""
        for n in self.nodes():
            if n["master"] and any(a <= slot <= b for a, b in n["slots"]):
                return n["port"]
        raise RuntimeError(f"slot {slot} has no master")

    def slot(self, key: str) -> int:
        return int(self.cmd(self.ports[0], "cluster", "keyslot", key))

    def failover(self, master_port: int) -> int:
        """``CLUSTER FAILOVER`` on a replica of ``master_port``; waits until the cluster agrees; the new master."""
        nodes = self.nodes(master_port)
        me = next(n for n in nodes if n["port"] == master_port)
        replica = next(n["port"] for n in nodes if n["of"] == me["id"])
        assert self.cmd(replica, "cluster", "failover") == "OK"
        self._wait("failover not done", lambda: "role:master" in self.cmd(replica, "info", "replication")
                   and "role:slave" in self.cmd(master_port, "info", "replication"))
        self.wait_stable()
        return replica

    def _setslot(self, port: int, slot: int, state: str, node_id: str, timeout: float = 15.0) -> None:
        """``CLUSTER SETSLOT`` retried while the node still takes in a just-finished failover's config epoch."""
        deadline = time.monotonic() + timeout
        while (reply := self.cmd(port, "cluster", "setslot", str(slot), state, node_id)) != "OK":
            if time.monotonic() > deadline:
                raise RuntimeError(f"CLUSTER SETSLOT {slot} {state} on {port}: {reply}")
            time.sleep(0.05)

    def migrate_slot(self, slot: int, dst: int, between: Callable[[str], None] = lambda phase: None) -> int:
        """Move ``slot`` to master ``dst`` key by key as ``redis-cli --cluster reshard`` does, calling
        ``between(phase)`` while the slot is migrating (phase ``"migrating"``: keys still at the source, new keys
        ASK-redirected; ``"moved"``: keys moved, slot not yet reassigned) and after (``"done"``: MOVED).
        Returns the source port."""
        src = self.owner(slot)
        ids = {n["port"]: n["id"] for n in self.nodes()}
        self._setslot(dst, slot, "importing", ids[src])
        self._setslot(src, slot, "migrating", ids[dst])
        between("migrating")
        import redis

        with redis.Redis(port=src) as r:
            while keys := r.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
                r.execute_command("MIGRATE", "127.0.0.1", dst, "", 0, 5000, "KEYS", *keys)
        between("moved")
        for port in (dst, src, *(p for p, n in ids.items() if p not in (src, dst))):
            self.cmd(port, "cluster", "setslot", str(slot), "node", ids[dst])
        self._wait("slot not reassigned", lambda: self.owner(slot) == dst)
        self.wait_stable()
        between("done")
        return src

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
    """A Redis Cluster on loopback for the whole session: three masters, each with one replica (skips, or fails in
    CI, like ``redis_server``). Registered in ``conftest.py`` so it starts once; tests that fail over or migrate
    slots leave it stable (every slot served), never in a fixed shape: look masters and owners up."""
    binary = redis_binary()
    cli = shutil.which("redis-cli")
    if cli is None:
        msg = "redis-cli not installed (it comes with redis-server / redis-tools): cluster test needs it"
        if os.environ.get("STORMGUARD_CORPUS"):
            pytest.fail(msg)
        pytest.skip(msg)
    nodes = RedisClusterNodes(binary, cli, str(tmp_path_factory.mktemp("redis-cluster")), replicas=1)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
