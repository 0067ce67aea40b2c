"""The seams other issues plug into, under real uvicorn: a reputation gate (block → stop, tiers → quota/lifetime)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from server_harness import SSEClient, running_factory, running_server


def test_blocked_client_gets_stop_and_tiers_drive_quota(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with running_factory("seamed_app", {"audit_path": str(audit)}) as srv:
        blocked = SSEClient(srv.port, "/events?topic=g", source="127.0.0.66")
        assert blocked.status == 204                                       # EventSource: do not come back
        assert srv.metric('rate_limit_rejected_total{layer="reputation",reason="blocked"}') == 1

        trusted = [SSEClient(srv.port, "/events?topic=g", source="127.0.0.68") for _ in range(5)]
        assert all(c.headers["x-ip-rating"] == "trusted" and c.messages(1) and not c.eof for c in trusted)

        low = SSEClient(srv.port, "/events?topic=g", source="127.0.0.67")
        assert low.headers["x-ip-rating"] == "low"
        second = SSEClient(srv.port, "/events?topic=g", source="127.0.0.67")
        refused = second.read_all()
        assert "quota" in refused[0].comments and refused[0].retry
        closing = low.read_all()                                          # low tier: closed after its lifetime
        assert low.eof and any("lifetime" in m.comments and m.retry for m in closing)
        assert srv.metric('stormguard_evictions_total{reason="lifetime"}') == 1
        for c in trusted:
            c.close()
        events = []
        for _ in range(100):                                    # bounded: until the closes have been observed
            events = httpx.get(srv.url + "/_test/observed", timeout=10).json()
            if sum(e["kind"] == "close" for e in events) >= 6:
                break
            time.sleep(0.05)
        kinds = {(e["kind"], e["ip"]) for e in events}
        assert {("refusal", "127.0.0.66"), ("open", "127.0.0.68"), ("first_byte", "127.0.0.68"),
                ("close", "127.0.0.68"), ("eviction", "127.0.0.67"), ("refusal", "127.0.0.67")} <= kinds
        assert any(e["kind"] == "refusal" and e["reason"] == "blocked" and e["action"] == "stop" for e in events)
    records = audit.read_text().splitlines()
    assert any('"reason":"lifetime"' in r and '"action":"evict"' in r and '"tier":"low"' in r for r in records)
    assert any('"reason":"blocked"' in r and '"action":"stop"' in r and '"score":-80.0' in r for r in records)


def test_event_loop_lag_trips_the_breaker() -> None:
    settings = {"enable_test_routes": True, "loop_lag_threshold": 0.2, "loop_monitor_interval": 0.05,
                "breaker_window": 0.2, "breaker_buckets": 2, "breaker_min_requests": 1, "breaker_open_timeout": 60.0}
    with running_server(settings) as srv:
        time.sleep(0.3)                                     # let the breaker's first window fill (not an assertion)
        assert httpx.get(srv.url + "/_test/block?seconds=0.6", timeout=10).status_code == 200
        state = 0.0
        for _ in range(100):                                # bounded poll: the monitor reports after the stall
            state = srv.metric("stormguard_breaker_state")
            if state == 2:
                break
            time.sleep(0.05)
        assert state == 2
        assert srv.metric("stormguard_event_loop_lag_max_seconds") > 0.2
        assert httpx.get(srv.url + "/_test/error?ok=1", timeout=10).status_code == 503
