"""``stormguard.server.protect``: the defence layers mounted by one call into a real FastAPI app and a plain
Starlette app, served by uvicorn on loopback and exercised over sockets."""

from __future__ import annotations

import httpx
import pytest
from mounted_apps import running_mounted
from server_harness import SSEClient

pytest.importorskip("fastapi")

SETTINGS = {"ip_rate": 0.001, "ip_burst": 2.0}     # no refill during a test: the third new request is refused


def test_fastapi_app_keeps_its_routes_and_lifespan() -> None:
    with running_mounted("fastapi_app", SETTINGS) as srv:
        health = httpx.get(srv.url + "/healthz", timeout=10).json()
        assert health == {"ok": True, "own_lifespan": True}          # the app's own lifespan ran, inside ours
        transport = httpx.HTTPTransport(local_address="127.0.0.61")
        with httpx.Client(transport=transport, timeout=10.0) as client:
            statuses = [client.get(srv.url + "/items/7").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]                            # the limiter guards a plain JSON route
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.62"), timeout=10.0)
        assert other.get(srv.url + "/items/8").json() == {"item": 8}  # another address: its own bucket
        other.close()
        metrics = httpx.get(srv.url + "/metrics", timeout=10).text
        assert 'rate_limit_rejected_total{layer="limiter",reason="rate"} 1.0' in metrics


def test_fastapi_sse_route_is_paced_and_counted_by_the_quota() -> None:
    with running_mounted("fastapi_app", {"ip_rate": 1000.0, "ip_burst": 1000.0}) as srv:
        streams = [SSEClient(srv.port, "/stream", source="127.0.0.63") for _ in range(3)]
        for s in streams:
            assert s.status == 200 and s.messages(1)[0].id == "0"
        fourth = SSEClient(srv.port, "/stream", source="127.0.0.63")   # neutral tier: 3 concurrent streams
        body = fourth.read_all()
        assert fourth.status == 200 and body and body[0].retry is not None and fourth.eof   # paced, not an error
        assert streams[0].headers.get("x-ip-rating") == "neutral"                  # the tier, announced
        assert 'rate_limit_rejected_total{layer="quota"' in httpx.get(srv.url + "/metrics", timeout=10).text
        for s in streams:
            s.close()


def test_plain_starlette_app() -> None:
    with running_mounted("starlette_app", SETTINGS) as srv:
        transport = httpx.HTTPTransport(local_address="127.0.0.64")
        with httpx.Client(transport=transport, timeout=10.0) as client:
            assert client.get(srv.url + "/hello").text == "hello\n"
            assert client.get(srv.url + "/hello").status_code == 200
            third = client.get(srv.url + "/hello")
        assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1
        feed = SSEClient(srv.port, "/feed", source="127.0.0.65")
        assert feed.status == 200 and feed.headers.get("x-ip-rating") == "neutral"
        assert feed.messages(2)[1].text == '{"n": 1}'
        feed.close()


def test_protect_refuses_what_it_cannot_mount() -> None:
    from starlette.applications import Starlette
    from stormguard.server import protect

    with pytest.raises(TypeError, match="stormguard proxy"):
        protect(object())
    app = Starlette()
    app.middleware_stack = app.build_middleware_stack()
    with pytest.raises(RuntimeError, match="before the app starts"):
        protect(app)
