"""The reputation gate and store-driven tiers under real uvicorn over sockets, with memory:// and a real Redis.

Every wait is a bounded poll (a count of attempts), never a timing assertion.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis_server import RedisServer, redis_server_fixture  # noqa: F401 - fixture
from server_harness import PROJECT_ROOT, ServerProcess, SSEClient, running_server

FAST = {"enable_test_routes": True, "block_recheck_seconds": 0.2, "live_flush_interval": 0.02}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``stormguard …`` as an operator would run it (the real CLI, not a helper)."""
    return subprocess.run([sys.executable, "-m", "stormguard", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=60)


class StoreControl:
    """Changes the server's reputation store: the in-process one through the test route (memory://), a Redis one
    with ``stormguard reputation --store URL …``."""

    def __init__(self, server: ServerProcess, url: str | None) -> None:
        self.server, self.url = server, url

    def _route(self, **params: str) -> dict[str, Any]:
        return httpx.get(self.server.url + "/_test/reputation", params=params, timeout=10).json()

    def _cli(self, *args: str) -> dict[str, Any]:
        assert self.url is not None
        proc = cli("reputation", "--store", self.url, "--json", *args)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.splitlines()[-1])

    def block(self, key: str) -> dict[str, Any]:
        return self._cli("block", key, "--for", "300") if self.url else self._route(op="block", key=key)

    def unblock(self, key: str) -> dict[str, Any]:
        return self._cli("unblock", key) if self.url else self._route(op="unblock", key=key)

    def set(self, key: str, score: float) -> dict[str, Any]:
        return self._cli("set", key, str(score)) if self.url else self._route(op="set", key=key, score=str(score))

    def get(self, key: str) -> dict[str, Any]:
        return self._cli("get", key) if self.url else self._route(op="get", key=key)


# timeout=2: a loaded CI machine must not push the store into its local fallback (tested in test_store_redis.py)
@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    redis: RedisServer = request.getfixturevalue("redis_server")
    return f"{redis.url}?prefix=t{uuid.uuid4().hex[:8]}&timeout=2"


@contextmanager
def reputation_server(store_url: str | None, settings: dict[str, Any] | None = None,
                      args: tuple[str, ...] = ()) -> Iterator[tuple[ServerProcess, StoreControl]]:
    store_args = ("--store", store_url) if store_url else ()
    with running_server({**FAST, **(settings or {})}, args=(*store_args, *args)) as srv:
        yield srv, StoreControl(srv, store_url)


def until(predicate: Callable[[], Any], attempts: int = 100, pause: float = 0.05) -> Any:
    """Poll ``predicate`` at most ``attempts`` times; its last value."""
    value = None
    for _ in range(attempts):
        value = predicate()
        if value:
            return value
        time.sleep(pause)
    return value


def status_of(port: int, source: str, topic: str = "r") -> tuple[int, dict[str, str]]:
    c = SSEClient(port, f"/events?topic={topic}", source=source)
    try:
        return c.status, c.headers
    finally:
        c.close()


def test_blocked_client_gets_204_until_unblocked(store_url: str | None, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with reputation_server(store_url, {"audit_path": str(audit)}) as (srv, store):
        ip = "127.0.0.70"
        assert status_of(srv.port, ip)[0] == 200                    # unknown client: admitted, neutral
        store.block(ip)
        assert until(lambda: status_of(srv.port, ip)[0] == 204)     # EventSource: do not come back
        assert status_of(srv.port, ip)[0] == 204                    # and stays refused while the block runs
        assert status_of(srv.port, "127.0.0.71")[0] == 200          # another address is not affected
        assert srv.metric('rate_limit_rejected_total{layer="reputation",reason="blocked"}') >= 2
        store.unblock(ip)
        assert until(lambda: status_of(srv.port, ip)[0] == 200)     # admitted again once the store says so
        assert until(lambda: audit.exists() and '"layer":"reputation"' in audit.read_text())
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    blocked = [r for r in records if r["layer"] == "reputation" and r["client"] == ip]
    assert blocked and blocked[0]["action"] == "stop" and blocked[0]["tier"] == "blocked"


TIERS_TOML = """
[reputation]
[[reputation.tiers]]
name = "trusted"
min_score = 60
streams = 8
idle_seconds = 900
[[reputation.tiers]]
name = "neutral"
min_score = -20
streams = 3
idle_seconds = 300
[[reputation.tiers]]
name = "low"
min_score = -100
streams = 1
idle_seconds = 30
session_seconds = 1.0
"""


def test_tiers_from_the_store_drive_quota_rating_and_low_lifetime(store_url: str | None, tmp_path: Path) -> None:
    config = tmp_path / "stormguard.toml"
    config.write_text(TIERS_TOML)            # the one tier table; the low tier's session shortened for the test
    audit = tmp_path / "audit.jsonl"
    with reputation_server(store_url, {"audit_path": str(audit), "live_rules": False},
                           args=("--config", str(config))) as (srv, store):
        trusted, low, neutral = "127.0.0.72", "127.0.0.73", "127.0.0.74"
        store.set(trusted, 75)
        store.set(low, -30)
        streams = [SSEClient(srv.port, "/events?topic=q", source=trusted) for _ in range(5)]
        assert all(c.status == 200 and c.headers["x-ip-rating"] == "trusted" for c in streams)
        assert all(c.messages(1) and not c.eof for c in streams)          # 5 > neutral's 3: trusted quota holds
        n = [SSEClient(srv.port, "/events?topic=q", source=neutral) for _ in range(4)]
        assert [c.headers.get("x-ip-rating") for c in n[:3]] == ["neutral"] * 3
        paced = n[3].read_all()
        assert paced and "quota" in paced[0].comments and paced[0].retry            # the 4th: paced, not stopped
        first = SSEClient(srv.port, "/events?topic=q", source=low)
        assert first.headers["x-ip-rating"] == "low"
        second = SSEClient(srv.port, "/events?topic=q", source=low).read_all()
        assert "quota" in second[0].comments                                      # low: one stream
        closing = first.read_all()                                                 # and closed after its session
        assert first.eof and any("lifetime" in m.comments and m.retry for m in closing)
        for c in streams + n:
            c.close()
        assert until(lambda: audit.exists() and '"reason":"lifetime"' in audit.read_text())
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert any(r["reason"] == "lifetime" and r["action"] == "evict" and r["tier"] == "low" and r["client"] == low
               and r["score"] == pytest.approx(-30, abs=0.01) for r in records)


def test_reconnect_storm_from_one_address_ends_blocked(store_url: str | None, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with reputation_server(store_url, {"audit_path": str(audit)}) as (srv, store):
        ip = "127.0.0.80"
        statuses = []
        for _ in range(200):                         # bounded storm: connect, first bytes, hang up, again
            c = SSEClient(srv.port, "/events?topic=storm", source=ip)
            statuses.append(c.status)
            if c.status == 204:
                c.close()
                break
            c.messages(1)
            c.close()
        assert statuses[0] == 200 and statuses[-1] == 204
        rep = store.get(ip)
        assert rep["block_until"] > time.time() and rep["score"] < -45     # blocked at <= -50, decaying since
        assert {"reconnect_storm", "short_disconnects"} & {r for reason in rep["reasons"] for r in reason.split("+")}
        assert status_of(srv.port, "127.0.0.81")[0] == 200                     # its neighbour is fine
        assert srv.metric('stormguard_reputation_penalties_total{rule="short_disconnects"}') >= 1
        assert until(lambda: audit.exists() and '"action":"block"' in audit.read_text())
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert any(r["layer"] == "reputation" and r["action"] == "block" and r["client"] == ip for r in records)


def test_two_server_processes_share_reputation_through_redis(redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:8]}&timeout=2"
    with reputation_server(url) as (a, _), reputation_server(url) as (b, store):
        ip = "127.0.0.90"
        assert status_of(b.port, ip)[0] == 200
        for _ in range(200):                          # the storm hits server A only
            c = SSEClient(a.port, "/events?topic=shared", source=ip)
            if c.status == 204:
                c.close()
                break
            c.messages(1)
            c.close()
        assert status_of(a.port, ip)[0] == 204
        assert status_of(b.port, ip)[0] == 204        # B never saw this client misbehave: the store told it
        store.unblock(ip)                             # lifting the block readmits, though the score is still low
        assert until(lambda: status_of(a.port, ip)[0] == 200) and until(lambda: status_of(b.port, ip)[0] == 200)


def test_shadow_mode_admits_a_blocked_client_but_counts_it(tmp_path: Path) -> None:
    with reputation_server(None, args=("--shadow",)) as (srv, store):
        ip = "127.0.0.95"
        store.block(ip)
        c = SSEClient(srv.port, "/events?topic=s", source=ip)
        assert c.status == 200 and c.messages(1) and not c.eof
        c.close()
        assert srv.metric('stormguard_shadow_refusals_total{layer="reputation",reason="blocked"}') == 1
        assert srv.metric("stormguard_block_threshold") == -50.0          # the dynamic threshold is running


def test_reputation_can_be_switched_off() -> None:
    with reputation_server(None, {"reputation": False}) as (srv, _):
        assert httpx.get(srv.url + "/_test/reputation", timeout=10).status_code == 404
        assert status_of(srv.port, "127.0.0.96")[1]["x-ip-rating"] == "neutral"


def test_unreachable_redis_admits_instead_of_failing() -> None:
    """A store outage must not refuse everybody nor turn into 500s: the failover store answers locally."""
    from server_harness import free_port

    url = f"redis://127.0.0.1:{free_port()}/0?timeout=0.05&retry_seconds=0.5"
    with reputation_server(url) as (srv, _):
        for i in range(3):
            status, headers = status_of(srv.port, f"127.0.0.{97 + i}")
            assert status == 200 and headers["x-ip-rating"] == "neutral"
        assert httpx.get(srv.url + "/healthz", timeout=10).status_code == 200


def test_gate_reports_store_errors_and_admits() -> None:
    import asyncio

    from stormguard.server.context import ClientIdentity, RequestContext
    from stormguard.server.layers.reputation_gate import ReputationGateAdapter

    class Broken:
        async def decide(self, *a: Any, **k: Any) -> Any:
            raise ConnectionError("store down")

    errors: list[BaseException] = []
    gate = ReputationGateAdapter(Broken(), on_error=errors.append)
    decision = asyncio.run(gate(RequestContext(ClientIdentity(ip="10.1.1.1"))))
    assert decision is None and gate.errors == 1 and isinstance(errors[0], ConnectionError)
