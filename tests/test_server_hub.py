"""The SSE hub under real uvicorn over sockets: delivery, replay across forced disconnects, slow readers, shutdown."""

from __future__ import annotations

import signal
import subprocess
import time

import httpx
import pytest
from server_harness import SSEClient, running_server


def _data(messages: list) -> list[str]:
    return [m.text for m in messages if m.data]


def test_events_received_with_sse_headers_over_httpx() -> None:
    with running_server() as srv:
        with httpx.Client(timeout=10.0) as client, client.stream("GET", srv.url + "/events?topic=news") as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert resp.headers["x-accel-buffering"] == "no"
            assert resp.headers["cache-control"] == "no-cache"
            assert resp.headers["x-ip-rating"] == "neutral"
            lines = resp.iter_lines()
            head = [next(lines) for _ in range(3)]
            assert head[0].startswith("retry: ") and head[1].startswith("id: news:0@")
            for i in range(3):
                assert srv.publish("news", {"n": i}).status_code == 200
            got: list[str] = []
            for _, line in zip(range(100), lines, strict=False):
                if line.startswith("data: "):
                    got.append(line[6:])
                if len(got) == 3:
                    break
            assert got == ['{"n":0}', '{"n":1}', '{"n":2}']


def test_publish_needs_the_token_and_publisher_ids_are_idempotent() -> None:
    with running_server() as srv:
        assert httpx.post(srv.url + "/publish", json={"topic": "a", "data": 1}).status_code == 401
        bad = httpx.post(srv.url + "/publish", json={"topic": "a", "data": 1},
                         headers={"authorization": "Bearer wrong"})
        assert bad.status_code == 401
        assert srv.publish("bad topic!", 1).status_code == 400
        first = srv.publish("a", "x", id="pub-1").json()
        again = srv.publish("a", "x", id="pub-1").json()
        assert again == {**first, "duplicate": True}
        assert srv.publish("a", "y").json()["seq"] == first["seq"] + 1
        assert httpx.get(srv.url + "/events").status_code == 400       # no topic


def test_heartbeat_pings_arrive() -> None:
    with running_server({"heartbeat_interval": 0.2}) as srv:
        client = SSEClient(srv.port, "/events?topic=quiet")
        pings = client.messages(1, want=lambda m: "ping" in m.comments)
        client.close()
        assert pings


@pytest.mark.parametrize("via", ["header", "query"])
def test_last_event_id_replay_loses_nothing_across_forced_disconnect(via: str) -> None:
    with running_server() as srv:
        client = SSEClient(srv.port, "/events?topic=a&topic=b", source="127.0.0.5")
        opening = client.messages(1)[0]
        srv.publish("a", "a1")
        srv.publish("b", "b1")
        got = client.messages(2, want=lambda m: bool(m.data))
        assert _data(got) == ["a1", "b1"]
        last_id = got[-1].id
        assert last_id is not None and last_id.startswith("a:1,b:1@") and opening.id != last_id
        client.abort()                                             # RST: forced disconnect
        missed = ["a2", "b2", "a3", "b3", "a4"]
        for text in missed:
            srv.publish(text[0], text)
        if via == "header":
            client = SSEClient(srv.port, "/events?topic=a&topic=b", source="127.0.0.5",
                               headers={"Last-Event-ID": last_id})
        else:
            client = SSEClient(srv.port, f"/events?topic=a&topic=b&last_event_id={last_id}", source="127.0.0.5")
        replayed = client.messages(len(missed), want=lambda m: bool(m.data))
        assert _data(replayed) == missed
        srv.publish("b", "b4")
        live = client.messages(1, want=lambda m: bool(m.data))
        assert _data(live) == ["b4"] and live[0].id is not None and live[0].id.startswith("a:4,b:4@")
        client.close()


def test_client_cut_before_its_first_event_still_resumes() -> None:
    with running_server() as srv:
        srv.publish("t", "before")
        client = SSEClient(srv.port, "/events?topic=t")
        opening = client.messages(1)[0]
        assert opening.id is not None and opening.id.startswith("t:1@") and not opening.data
        client.abort()
        srv.publish("t", "while-away")
        client = SSEClient(srv.port, "/events?topic=t", headers={"Last-Event-ID": opening.id})
        assert _data(client.messages(1, want=lambda m: bool(m.data))) == ["while-away"]
        client.close()


def test_slow_reader_is_dropped_and_others_keep_receiving() -> None:
    settings = {"send_queue_size": 8, "send_timeout": 0.5, "heartbeat_interval": 60.0}
    with running_server(settings) as srv:
        slow = SSEClient(srv.port, "/events?topic=bulk", source="127.0.0.6", rcvbuf=4096)
        healthy = SSEClient(srv.port, "/events?topic=other", source="127.0.0.7")
        healthy.messages(1)
        payload = "x" * 131072
        dropped = 0.0
        for i in range(200):                                        # bounded: stops as soon as the drop shows
            srv.publish("bulk", payload)
            if i % 5 == 4:
                dropped = srv.metric('stormguard_evictions_total{reason="slow_reader"}')
                if dropped:
                    break
        assert dropped >= 1
        srv.publish("other", "still here")
        assert _data(healthy.messages(1, want=lambda m: bool(m.data))) == ["still here"]
        healthy.close()
        slow.read_all(max_reads=5000)                               # buffered bytes, then the abort
        assert slow.eof
        slow.close()


def test_sigterm_closes_open_streams_with_a_final_retry_and_exits() -> None:
    with running_server({"shutdown_grace": 3.0}) as srv:
        clients = [SSEClient(srv.port, f"/events?topic=s{i}", source=f"127.0.1.{i + 1}") for i in range(4)]
        for c in clients:
            c.messages(1)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        try:
            code = srv.proc.wait(timeout=10)                        # a bound, not a timing assertion
        except subprocess.TimeoutExpired:
            pytest.fail("uvicorn did not exit within 10 s of SIGTERM with streams open:\n" + srv.output())
        assert code in (0, -signal.SIGTERM), srv.output()
        finals = []
        for c in clients:
            tail = c.read_all()
            assert c.eof
            finals.append(next(m for m in reversed(tail) if m.retry is not None))
            c.close()
        assert all("shutdown" in m.comments for m in finals)
        assert len({m.retry for m in finals}) > 1                  # jittered, not one synchronised value


def test_metrics_and_healthz() -> None:
    with running_server() as srv:
        client = SSEClient(srv.port, "/events?topic=m")
        client.messages(1)
        health = httpx.get(srv.url + "/healthz").json()
        assert health["status"] == "ok" and health["streams"] == 1 and health["breaker"] == "closed"
        text = httpx.get(srv.url + "/metrics").text
        for name in ("http_sse_connections_total", "rate_limit_rejected_total", "stormguard_active_streams",
                     "stormguard_breaker_state", "stormguard_evictions_total", "stormguard_event_loop_lag_seconds",
                     "stormguard_limiter_entries"):
            assert name in text, name
        assert srv.metric('http_sse_connections_total{tier="neutral"}') == 1
        assert srv.metric('stormguard_active_streams{tier="neutral"}') == 1
        client.close()
        time.sleep(0.2)
