"""The defence layers under real uvicorn over sockets: limiter, trusted proxies, breaker, quota, shadow, audit."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
from server_harness import SSEClient, running_server

SLOW_REFILL = {"ip_rate": 0.001, "ip_burst": 2.0}     # no refill during a test: "immediate" without timing


def test_limiter_paces_the_third_immediate_connection() -> None:
    with running_server(SLOW_REFILL) as srv:
        first = SSEClient(srv.port, "/events?topic=a", source="127.0.0.9")
        second = SSEClient(srv.port, "/events?topic=a", source="127.0.0.9")
        third = SSEClient(srv.port, "/events?topic=a", source="127.0.0.9")
        assert (first.status, second.status) == (200, 200)
        assert third.status == 200 and third.headers["content-type"].startswith("text/event-stream")
        body = third.read_all()
        assert third.eof                                          # the pace response closes the connection
        assert body and body[0].retry is not None and body[0].retry > 0 and "rate" in body[0].comments
        other = SSEClient(srv.port, "/events?topic=a", source="127.0.0.10")   # another address: its own bucket
        assert other.messages(1)[0].retry is not None and not other.eof
        assert srv.metric('rate_limit_rejected_total{layer="limiter",reason="rate"}') == 1
        for c in (first, second, other):
            c.close()


def test_limiter_429_with_retry_after_when_configured() -> None:
    with running_server({**SLOW_REFILL, "refusal_actions": {"rate": "429"}}) as srv:
        transport = httpx.HTTPTransport(local_address="127.0.0.11")
        with httpx.Client(transport=transport, timeout=10.0) as client:
            statuses = []
            for _ in range(3):
                with client.stream("GET", srv.url + "/events?topic=a") as resp:
                    statuses.append(resp.status_code)
                    retry_after = resp.headers.get("retry-after")
            assert statuses == [200, 200, 429]
            assert retry_after is not None and int(retry_after) >= 1


def test_token_bucket_limits_a_publisher() -> None:
    with running_server({"token_rate": 0.001, "token_burst": 2.0}) as srv:
        responses = [srv.publish("t", i) for i in range(3)]
        assert [r.status_code for r in responses] == [200, 200, 429]        # not EventSource: 429, not pace
        assert int(responses[2].headers["retry-after"]) >= 1
        assert srv.metric('rate_limit_rejected_total{layer="limiter",reason="token_rate"}') == 1


def test_forwarded_for_only_from_trusted_proxies() -> None:
    settings = {"trusted_proxies": ["127.0.0.2/32"], "enable_test_routes": True}
    with running_server(settings) as srv:
        def whoami(source: str, headers: dict[str, str]) -> dict:
            transport = httpx.HTTPTransport(local_address=source)
            with httpx.Client(transport=transport, timeout=10.0) as client:
                return client.get(srv.url + "/_test/whoami", headers=headers).json()

        fp = {"X-JA4": "t13d1516h2_8daaf6152771_e5627efa2ab1", "X-TLS-SNI": "api.example.com"}
        trusted = whoami("127.0.0.2", {"X-Forwarded-For": "6.6.6.6, 203.0.113.7", **fp})
        assert trusted["ip"] == "203.0.113.7" and trusted["via_proxy"] and trusted["peer_ip"] == "127.0.0.2"
        assert trusted["ja4"] == fp["X-JA4"] and trusted["sni"] == "api.example.com" and trusted["state"]
        loopback = whoami("127.0.0.1", {"X-Forwarded-For": "203.0.113.7"})  # uvicorn would trust it by default
        assert loopback["ip"] == "127.0.0.1" and loopback["peer_ip"] == "127.0.0.1" and not loopback["via_proxy"]
        untrusted = whoami("127.0.0.3", {"X-Forwarded-For": "203.0.113.7", **fp})
        assert untrusted["ip"] == "127.0.0.3" and not untrusted["via_proxy"]
        assert untrusted["ja4"] is None and untrusted["sni"] is None
        malformed = whoami("127.0.0.2", {"X-Forwarded-For": "203.0.113.7, <script>"})
        assert malformed["ip"] == "127.0.0.2"
        assert srv.metric('stormguard_malformed_headers_total{header="x-forwarded-for"}') == 1


def test_limiter_keys_on_the_forwarded_client_behind_a_trusted_proxy() -> None:
    settings = {**SLOW_REFILL, "ip_burst": 1.0, "trusted_proxies": ["127.0.0.2/32"],
                "refusal_actions": {"rate": "429"}}
    with running_server(settings) as srv:
        def status(source: str, xff: str) -> int:
            transport = httpx.HTTPTransport(local_address=source)
            with httpx.Client(transport=transport, timeout=10.0) as client, \
                    client.stream("GET", srv.url + "/events?topic=a", headers={"X-Forwarded-For": xff}) as resp:
                return resp.status_code

        assert status("127.0.0.2", "198.51.100.1") == 200
        assert status("127.0.0.2", "198.51.100.2") == 200        # another client behind the same proxy
        assert status("127.0.0.2", "198.51.100.1") == 429
        assert status("127.0.0.3", "198.51.100.3") == 200        # untrusted peer: keyed by the peer itself
        assert status("127.0.0.3", "198.51.100.4") == 429


def test_breaker_opens_on_errors_and_half_open_admits_bounded_probes() -> None:
    settings = {"enable_test_routes": True, "breaker_window": 0.5, "breaker_buckets": 5, "breaker_min_requests": 5,
                "breaker_threshold": 0.5, "breaker_open_timeout": 1.0, "breaker_probes": 1}
    with running_server(settings) as srv, httpx.Client(timeout=10.0) as client:
        statuses = []
        for _ in range(400):                                    # bounded: until the breaker answers instead
            resp = client.get(srv.url + "/_test/error")
            statuses.append(resp.status_code)
            if resp.status_code == 503:
                break
            time.sleep(0.01)
        assert statuses[-1] == 503 and set(statuses[:-1]) == {500}
        assert resp.text.strip() == "breaker" and int(resp.headers["retry-after"]) >= 1
        assert srv.metric("stormguard_breaker_state") == 2
        assert client.get(srv.url + "/_test/error?ok=1").status_code == 503     # open: even good requests wait
        sse = SSEClient(srv.port, "/events?topic=a")                            # SSE clients are paced
        paced = sse.read_all()
        assert sse.status == 200 and paced[0].retry is not None and "breaker" in paced[0].comments
        time.sleep(1.2)                                          # past open_timeout (not an assertion)

        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=10.0) as ac:
                rs = await asyncio.gather(*(ac.get(srv.url + "/_test/slow?seconds=1") for _ in range(5)))
            return sorted(r.status_code for r in rs)

        assert asyncio.run(burst()) == [200, 503, 503, 503, 503]   # exactly one probe admitted
        assert srv.metric("stormguard_breaker_state") == 0          # the probe succeeded: closed
        assert client.get(srv.url + "/_test/error?ok=1").status_code == 200
        assert srv.metric('stormguard_breaker_transitions_total{to="half_open"}') == 1


def test_quota_paces_the_fourth_concurrent_stream() -> None:
    with running_server() as srv:
        streams = [SSEClient(srv.port, "/events?topic=q", source="127.0.0.12") for _ in range(3)]
        for s in streams:
            s.messages(1)
        fourth = SSEClient(srv.port, "/events?topic=q", source="127.0.0.12")
        refused = fourth.read_all()
        assert fourth.status == 200 and "quota" in refused[0].comments and refused[0].retry
        streams[0].close()
        for _ in range(100):                                     # bounded wait for the server to notice
            if srv.metric('stormguard_active_streams{tier="neutral"}') == 2:
                break
            time.sleep(0.05)
        again = SSEClient(srv.port, "/events?topic=q", source="127.0.0.12")
        assert not [m for m in again.messages(1) if "quota" in m.comments] and not again.eof
        for s in [*streams[1:], again]:
            s.close()


def test_shadow_mode_admits_but_counts_and_audits(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with running_server({**SLOW_REFILL, "ip_burst": 1.0, "shadow": True, "audit_path": str(audit)}) as srv:
        a = SSEClient(srv.port, "/events?topic=s", source="127.0.0.13")
        b = SSEClient(srv.port, "/events?topic=s", source="127.0.0.13")
        assert a.messages(1) and not [m for m in b.messages(1) if "rate" in m.comments] and not b.eof
        assert srv.metric('stormguard_shadow_refusals_total{layer="limiter",reason="rate"}') == 1
        assert srv.metric('rate_limit_rejected_total{layer="limiter",reason="rate"}') == 0
        records: list[dict] = []
        for _ in range(100):                                     # the audit log is flushed off the hot path
            if audit.exists() and audit.read_text().strip():
                records = [json.loads(line) for line in audit.read_text().splitlines()]
                break
            time.sleep(0.05)
        assert records and records[0]["client"] == "127.0.0.13"
        assert {k: records[0][k] for k in ("layer", "reason", "action", "tier")} == \
            {"layer": "limiter", "reason": "rate", "action": "shadow-pace", "tier": "neutral"}
        assert {"time", "score"} <= set(records[0])
        a.close()
        b.close()


def test_refusals_are_audited(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with running_server({**SLOW_REFILL, "ip_burst": 1.0, "audit_path": str(audit)}) as srv:
        a = SSEClient(srv.port, "/events?topic=s", source="127.0.0.14")
        b = SSEClient(srv.port, "/events?topic=s", source="127.0.0.14")
        b.read_all()
        a.close()

        def paced() -> bool:
            lines = audit.read_text().splitlines() if audit.exists() else []
            return any(r["layer"] == "limiter" and r["action"] == "pace" and r["client"] == "127.0.0.14"
                       for r in map(json.loads, lines))

        deadline = time.monotonic() + 30.0  # written by the drainer every 0.2 s: wait for it, don't guess
        while not paced() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert paced(), "the pace was not audited while the server ran"
    # and what was written stays whole after shutdown (the final flush never interleaves with the drainer)
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert sum(r["layer"] == "limiter" and r["client"] == "127.0.0.14" for r in records) == 1
