"""The SSE hub on Redis Streams: real redis-server, real uvicorn processes sharing it, over sockets.

Two server processes on one Redis serve the same topics: fan-out across processes, ``Last-Event-ID`` replay on
another process, idempotent publish across processes, history bounded by count, and a Redis outage in the middle
of a run (publish 503, streams stay connected, everything resumes when Redis is back on the same port).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from redis_server import RedisServer, own_redis_server_fixture, redis_server_fixture  # noqa: F401 - fixtures
from server_harness import PROJECT_ROOT, TOKEN, ServerProcess, SSEClient, uvicorn_factory_cmd, wait_healthy
from stormguard.server.hub.history import MemoryHistory
from stormguard.server.hub.history_redis import RedisHistory, history_from_url, to_seq, to_stream_id

ENV_URL, ENV_OPTS = "STORMGUARD_TEST_HISTORY_URL", "STORMGUARD_TEST_HISTORY_OPTS"


def redis_app() -> Any:
    """uvicorn ``--factory`` target: the real app with the Redis history from the environment."""
    from stormguard.server.app import create_app
    from stormguard.server.ops.settings import ServerSettings

    opts = json.loads(os.environ.get(ENV_OPTS, "{}"))
    return create_app(ServerSettings.from_env(), history=history_from_url(os.environ[ENV_URL], **opts))


@contextmanager
def redis_hub_server(url: str, prefix: str, settings: dict[str, Any] | None = None,
                     **opts: Any) -> Iterator[ServerProcess]:
    server = ServerProcess({"heartbeat_interval": 1.0, **(settings or {})})
    env = {**os.environ, "STORMGUARD_SERVER_SETTINGS": json.dumps(server.settings), ENV_URL: url,
           ENV_OPTS: json.dumps({"prefix": prefix, "block_ms": 2000, **opts})}
    cmd = uvicorn_factory_cmd("test_server_redis_hub:redis_app", server.port)
    server.proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=server.log, stderr=subprocess.STDOUT)
    try:
        if not wait_healthy(server.url + "/healthz", server.proc):
            raise RuntimeError(f"server did not start:\n{server.output()}")
        yield server
    finally:
        server.stop()
        os.unlink(server.log.name)


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:hub"


def _data(messages: list) -> list[str]:
    return [m.text for m in messages if m.data]


def _subscribed(client: SSEClient) -> None:
    """Wait for the opening id-only message (the stream is registered and its reader covers the topics)."""
    assert client.status == 200
    assert client.messages(1)


def test_ids_are_stream_ids() -> None:
    assert to_seq("1732712345678-3") == 1732712345678000003
    assert to_stream_id(1732712345678000003) == "1732712345678-3"
    assert isinstance(history_from_url("memory://"), MemoryHistory)
    with pytest.raises(ValueError):
        history_from_url("http://example")


def test_client_on_one_process_receives_events_published_to_another(redis_server: RedisServer) -> None:
    prefix = _prefix()
    with redis_hub_server(redis_server.url, prefix) as a, redis_hub_server(redis_server.url, prefix) as b:
        on_a = SSEClient(a.port, "/events?topic=news", source="127.0.0.11")
        on_b = SSEClient(b.port, "/events?topic=news", source="127.0.0.12")
        _subscribed(on_a)
        _subscribed(on_b)
        published = [b.publish("news", f"n{i}").json() for i in range(3)]
        published.append(a.publish("news", "n3").json())
        got_a = on_a.messages(4, want=lambda m: bool(m.data))
        got_b = on_b.messages(4, want=lambda m: bool(m.data))
        assert _data(got_a) == _data(got_b) == ["n0", "n1", "n2", "n3"]
        assert [m.id for m in got_a] == [m.id for m in got_b] == [p["id"] for p in published]  # same ids
        # idempotent publish across processes: the second process finds the first one's event
        first = a.publish("news", "once", id="pub-1").json()
        again = b.publish("news", "once", id="pub-1").json()
        assert again == {**first, "duplicate": True}
        assert _data(on_b.messages(1, want=lambda m: bool(m.data))) == ["once"]
        b.publish("news", "after")
        assert _data(on_a.messages(2, want=lambda m: bool(m.data))) == ["once", "after"]
        on_a.close()
        on_b.close()


def test_last_event_id_replay_across_processes_loses_nothing(redis_server: RedisServer) -> None:
    prefix = _prefix()
    with redis_hub_server(redis_server.url, prefix) as a, redis_hub_server(redis_server.url, prefix) as b:
        client = SSEClient(a.port, "/events?topic=a&topic=b", source="127.0.0.13")
        _subscribed(client)
        a.publish("a", "a1")
        b.publish("b", "b1")
        got = client.messages(2, want=lambda m: bool(m.data))
        assert _data(got) == ["a1", "b1"]
        last_id = got[-1].id
        assert last_id is not None and last_id.startswith("a:") and ",b:" in last_id
        client.abort()                                              # forced disconnect from A
        missed = ["a2", "b2", "a3", "b3", "a4"]
        for i, text in enumerate(missed):
            (a if i % 2 else b).publish(text[0], text)
        client = SSEClient(b.port, "/events?topic=a&topic=b", source="127.0.0.13",
                           headers={"Last-Event-ID": last_id})       # reconnect to B
        replayed = client.messages(len(missed), want=lambda m: bool(m.data))
        assert _data(replayed) == missed
        a.publish("b", "b4")
        live = client.messages(1, want=lambda m: bool(m.data))
        assert _data(live) == ["b4"]
        client.close()
        # and by query parameter, on A again, from the replayed position: only what came after
        client = SSEClient(a.port, f"/events?topic=a&topic=b&last_event_id={replayed[-1].id}", source="127.0.0.13")
        assert _data(client.messages(1, want=lambda m: bool(m.data))) == ["b4"]
        client.close()


def test_history_is_bounded_by_count(redis_server: RedisServer) -> None:
    prefix = _prefix()
    unlimited = {"token_rate": 100000.0, "token_burst": 100000.0, "ip_rate": 100000.0, "ip_burst": 100000.0}
    with redis_hub_server(redis_server.url, prefix, unlimited, max_events=5) as a:
        first = a.publish("bounded", "e0").json()
        with httpx.Client(base_url=a.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=10.0) as http:
            for i in range(1, 300):
                assert http.post("/publish", json={"topic": "bounded", "data": f"e{i}"}).status_code == 200
        client = SSEClient(a.port, "/events?topic=bounded", headers={"Last-Event-ID": first["id"]})
        got = client.messages(6, want=lambda m: bool(m.data))
        client.close()
        assert got[0].event == "gap"
        assert _data(got[1:]) == [f"e{i}" for i in range(295, 300)]
    import redis

    r = redis.Redis.from_url(redis_server.url)
    try:
        assert r.xlen(f"{prefix}:{{bounded}}") < 300                # trimmed in Redis (approximately, ~)
    finally:
        r.close()


def test_replay_bounds_by_count_and_age_on_the_backend(redis_server: RedisServer) -> None:
    async def run() -> None:
        now = [time.time()]
        h = RedisHistory.from_url(redis_server.url, prefix=_prefix(), max_events=3, max_age=60.0)
        h.clock = lambda: now[0]
        try:
            evs = [(await h.publish("t", f"x{i}"))[0] for i in range(5)]
            got = await h.fetch({"t": evs[0].seq, "u": None})
            events, gap, last = got["t"]
            assert [e.data for e in events] == ["x2", "x3", "x4"] and gap and last == evs[-1].seq
            assert got["u"] == ([], False, 0)
            events, gap, _ = (await h.fetch({"t": evs[2].seq}))["t"]
            assert [e.data for e in events] == ["x3", "x4"] and not gap
            now[0] += 120.0                                          # everything is older than max_age now
            events, gap, _ = (await h.fetch({"t": evs[2].seq}))["t"]
            assert events == [] and gap
            read = await h.read({"t": evs[2].seq})
            assert [e.data for e in read] == ["x3", "x4"]
        finally:
            await h.aclose()

    asyncio.run(run())


def test_redis_outage_publish_503_streams_survive_and_resume(own_redis_server: RedisServer) -> None:
    redis_srv = own_redis_server
    prefix = _prefix()
    with redis_hub_server(redis_srv.url, prefix, {"heartbeat_interval": 0.3}) as a, \
            redis_hub_server(redis_srv.url, prefix, {"heartbeat_interval": 0.3}) as b:
        client = SSEClient(a.port, "/events?topic=o", source="127.0.0.14")
        _subscribed(client)
        b.publish("o", "before")
        assert _data(client.messages(1, want=lambda m: bool(m.data))) == ["before"]
        redis_srv.stop()
        down = b.publish("o", "lost")
        assert down.status_code == 503 and "history store unavailable" in down.text
        assert a.publish("o", "lost").status_code == 503
        assert httpx.get(a.url + "/healthz").status_code == 200     # the server stays up
        paced = SSEClient(a.port, "/events?topic=o", source="127.0.0.15")   # a new stream meanwhile: paced
        assert paced.status == 200
        tail = paced.messages(1, want=lambda m: m.retry is not None)
        assert tail and "store" in tail[0].comments
        paced.close()
        assert client.messages(2, want=lambda m: "ping" in m.comments)     # still connected: heartbeats
        redis_srv.start()                                             # same port, empty (no persistence)
        status = 0
        for _ in range(100):                                          # bounded: until publishing works again
            status = b.publish("o", "after").status_code
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200
        assert _data(client.messages(1, want=lambda m: bool(m.data))) == ["after"]
        client.close()
        assert a.metric("stormguard_history_store_outages_total") == 1
        assert b.metric("stormguard_history_store_outages_total") == 1
        assert a.metric("stormguard_history_store_up") == 1
        assert b.output().count("redis history unavailable") == 1   # logged once per outage
        assert "Traceback" not in a.output() and "Traceback" not in b.output()


def test_reconnects_during_a_publish_stream_lose_nothing_and_repeat_nothing(redis_server: RedisServer) -> None:
    """Register-before-replay plus the writer's position check: reconnecting to alternate processes while another
    process publishes yields every event exactly once, in order."""
    import threading

    prefix = _prefix()
    total = 150
    unlimited = {"token_rate": 100000.0, "token_burst": 100000.0, "ip_rate": 100000.0, "ip_burst": 100000.0}
    with redis_hub_server(redis_server.url, prefix, unlimited) as a, \
            redis_hub_server(redis_server.url, prefix, unlimited) as b:
        client = SSEClient(a.port, "/events?topic=r&topic=s", source="127.0.0.16")
        _subscribed(client)

        def publish_all() -> None:
            with httpx.Client(base_url=b.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=10.0) as http:
                for i in range(total):
                    http.post("/publish", json={"topic": "rs"[i % 2], "data": f"m{i}"})
                    time.sleep(0.002)

        publisher = threading.Thread(target=publish_all)
        publisher.start()
        got: list[str] = []
        last_id = None
        servers = [a, b]
        for round_ in range(200):                                   # bounded: reconnect after every few events
            msgs = client.messages(5 if len(got) < total - 5 else total - len(got), want=lambda m: bool(m.data))
            got += _data(msgs)
            last_id = msgs[-1].id if msgs else last_id
            if len(got) >= total:
                break
            client.abort()
            client = SSEClient(servers[round_ % 2].port, "/events?topic=r&topic=s", source="127.0.0.16",
                               headers={"Last-Event-ID": last_id} if last_id else None)
        publisher.join(30)
        client.close()
        assert got == [f"m{i}" for i in range(total)]
