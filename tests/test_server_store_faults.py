"""Redis faults under load, against the real server (``stormguard serve --store redis://…``) and a real
``redis-server`` (issue 17). Bounded in count and time; no timing assertions.

* Redis SIGKILLed during a storm of a few hundred clients, then restarted: no 5xx on ``/events``, the breaker never
  mistakes the store outage for a failure of its own (publishing works on the first try once Redis is back), open
  streams keep their heartbeats, a block known before the kill still holds (``fail_mode`` closed), Streams history
  resumes, and a reputation update accepted during the outage (journalled by the failover store) is in Redis after
  recovery.
* A burst of 50 clients connecting at once with a small pool: queued, never ``MaxConnectionsError``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from redis_server import RedisServer, own_redis_server_fixture, redis_binary  # noqa: F401 - fixture
from server_harness import SSEClient, running_server

BREAKER = {"breaker_window": 1.0, "breaker_buckets": 5, "breaker_min_requests": 10, "breaker_threshold": 0.5,
           "breaker_open_timeout": 60.0}


def connect(port: int, source: str, topic: str = "storm") -> int:
    """Open a stream, read its head, close: the status (0 when the connection failed outright)."""
    try:
        client = SSEClient(port, f"/events?topic={topic}", source=source, timeout=15)
    except (ConnectionError, OSError):
        return 0
    status = client.status
    client.close()
    return status


def wave(port: int, n: int, second_octet: int) -> list[int]:
    sources = [f"127.{second_octet}.{i // 250}.{i % 250 + 1}" for i in range(n)]
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda src: connect(port, src), sources))


def stored_score(url: str, key: str) -> float | None:
    from stormguard.scoring.stores import open_store

    async def read() -> float | None:
        store = open_store(url, failover=False)
        try:
            rep = await store.get(key)
            return rep.score if rep.reasons else None
        finally:
            await store.close()

    return asyncio.run(read())


def test_redis_sigkill_during_a_storm(own_redis_server: RedisServer) -> None:
    redis_srv = own_redis_server
    url = redis_srv.url
    settings = {**BREAKER, "heartbeat_interval": 0.3, "ip_rate": 1000.0, "ip_burst": 1000.0,
                "enable_test_routes": True}
    with running_server(settings, args=("--store", url, "--no-model")) as srv:
        watcher = SSEClient(srv.port, "/events?topic=storm", source="127.0.0.20", timeout=15)
        assert watcher.status == 200
        assert srv.publish("storm", "before").status_code == 200
        assert [m.text for m in watcher.messages(1, want=lambda m: bool(m.data))] == ["before"]
        assert all(s == 200 for s in wave(srv.port, 200, 10))
        blocked = httpx.get(srv.url + "/_test/reputation", params={"op": "block", "key": "127.0.77.1"}, timeout=10)
        assert blocked.status_code == 200
        assert connect(srv.port, "127.0.77.1") == 204

        redis_srv.kill()
        during = wave(srv.port, 200, 11)
        assert all(s == 200 for s in during), sorted(set(during))     # streams or paced: never 5xx, never refused
        assert connect(srv.port, "127.0.77.1") == 204                 # fail_mode closed: a known block stays
        accepted = httpx.get(srv.url + "/_test/reputation", params={"op": "set", "key": "198.51.100.7",
                                                                    "score": "-60"}, timeout=10)
        assert accepted.status_code == 200                            # accepted locally, journalled for Redis
        down = srv.publish("storm", "not accepted")
        assert down.status_code == 503 and "history store unavailable" in down.text   # told to retry, not "breaker"
        assert watcher.messages(2, want=lambda m: "ping" in m.comments)              # open stream: heartbeats

        redis_srv.start()                                             # same port, empty
        status = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:                            # bounded in time: until Redis answers again
            status = srv.publish("storm", "after").status_code
            if status == 200:
                break
            assert status == 503
            time.sleep(0.05)
        assert status == 200
        assert [m.text for m in watcher.messages(1, want=lambda m: bool(m.data))] == ["after"]   # Streams resume
        assert all(s == 200 for s in wave(srv.port, 100, 12))

        score = None
        deadline = time.monotonic() + 60   # bounded in time, not in count: the store re-probes Redis on its own
        while time.monotonic() < deadline:  # clock (retry_seconds), and a fast machine runs 200 tries in under that
            score = stored_score(url, "198.51.100.7")
            if score is not None:
                break
            connect(srv.port, "127.0.98.1")   # new connections probe the store; recovery replays the journal
            time.sleep(0.1)
        assert score == pytest.approx(-60, abs=0.1), "an update accepted during the outage must reach Redis"

        m = srv.metrics()
        assert m.get('rate_limit_rejected_total{layer="breaker",reason="breaker"}', 0) == 0
        assert m.get('stormguard_breaker_transitions_total{to="open"}', 0) == 0
        assert m['rate_limit_rejected_total{layer="publish",reason="store"}'] >= 1
        watcher.close()
        out = srv.output()
        assert "Traceback" not in out and "MaxConnectionsError" not in out


def test_fifty_clients_at_once_queue_on_a_small_pool(own_redis_server: RedisServer) -> None:
    url = own_redis_server.url + "?max_connections=2"
    with running_server({"ip_rate": 1000.0, "ip_burst": 1000.0}, args=("--store", url, "--no-model")) as srv:
        sources = [f"127.0.50.{i + 1}" for i in range(50)]
        with ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(lambda src: connect(srv.port, src), sources))
        assert statuses == [200] * 50
        m = srv.metrics()
        assert m['stormguard_redis_pool_max{pool="limiter"}'] == 2
        out = srv.output()
        assert "MaxConnectionsError" not in out and "Too many connections" not in out


def test_redis_paused_longer_than_the_client_timeout() -> None:
    """``DEBUG SLEEP`` freezes Redis with its sockets open (a stalled, not a dead, store): same outcome as a kill."""
    redis_srv = RedisServer(redis_binary(), args=("--enable-debug-command", "yes"))
    redis_srv.start()
    try:
        settings = {**BREAKER, "heartbeat_interval": 0.3, "ip_rate": 1000.0, "ip_burst": 1000.0}
        with running_server(settings, args=("--store", redis_srv.url, "--no-model")) as srv:
            watcher = SSEClient(srv.port, "/events?topic=pause", source="127.0.0.21", timeout=15)
            assert watcher.status == 200
            paused = threading.Event()

            def pause() -> None:        # 4 s: longer than the store (0.05 s) and history (2 s) client timeouts
                with socket.create_connection(("127.0.0.1", redis_srv.port), timeout=30) as s:
                    s.sendall(b"DEBUG SLEEP 4\r\n")
                    paused.set()
                    assert s.recv(16).startswith(b"+OK")

            sleeper = threading.Thread(target=pause)
            sleeper.start()
            assert paused.wait(10)
            during = wave(srv.port, 100, 13)
            assert all(s == 200 for s in during), sorted(set(during))
            stalled = srv.publish("pause", "maybe")
            assert stalled.status_code in (200, 503) and "breaker" not in stalled.text
            assert watcher.messages(1, want=lambda m: "ping" in m.comments)
            sleeper.join(30)
            assert not sleeper.is_alive()
            status = 0
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:       # bounded in time: until publishing works again
                status = srv.publish("pause", "after").status_code
                if status == 200:
                    break
                time.sleep(0.05)
            assert status == 200
            assert [m.text for m in watcher.messages(1, want=lambda m: m.text == "after", max_reads=200)] == ["after"]
            m = srv.metrics()
            assert m.get('rate_limit_rejected_total{layer="breaker",reason="breaker"}', 0) == 0
            assert m.get('stormguard_breaker_transitions_total{to="open"}', 0) == 0
            watcher.close()
            assert "Traceback" not in srv.output()
    finally:
        redis_srv.stop()
