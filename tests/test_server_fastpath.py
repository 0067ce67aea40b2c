"""The blocked-client fast path under real uvicorn over sockets (memory store, blocks set through the test route).

The first refusal of a blocked address goes through the full stack (the gate reads the store and remembers the
block); later ones, while the block is remembered, through the fast path — ``stormguard_fastpath_refusals`` tells
which. Every wait is a bounded poll, never a timing assertion.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_harness import ServerProcess, running_server

BASE = {"enable_test_routes": True, "block_recheck_seconds": 60.0, "live_flush_interval": 0.02,
        "reputation_paths": ["/events", "/publish"]}
FAST = "stormguard_fastpath_refusals"
BLOCKED = 'rate_limit_rejected_total{layer="reputation",reason="blocked"}'


def request(port: int, path: str, source: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str],
                                                                                            bytes]:
    """One raw ``GET`` from ``source`` with ``Connection: close``: (status, headers without date/server, body).

    A streaming response (an admitted ``/events``) is cut after its head: its body is ``b""``.
    """
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        for _ in range(1000):                       # bounded: until the head, then the announced body
            chunk = s.recv(65536)
            data += chunk
            if not chunk or b"\r\n\r\n" in data:
                break
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        hdrs = {}
        for line in header_lines:
            k, _, v = line.partition(":")
            if k.lower() not in ("date", "server"):
                hdrs[k.lower()] = v.strip()
        length = int(hdrs.get("content-length", "0"))
        for _ in range(1000):
            if len(body) >= length:
                break
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(status_line.split()[1]), hdrs, body[:length]


def block(srv: ServerProcess, key: str, seconds: float = 300.0) -> None:
    httpx.get(srv.url + "/_test/reputation", params={"op": "block", "key": key, "seconds": str(seconds)}, timeout=10)


def unblock(srv: ServerProcess, key: str) -> None:
    httpx.get(srv.url + "/_test/reputation", params={"op": "unblock", "key": key}, timeout=10)


def until(predicate: Callable[[], Any], attempts: int = 100, pause: float = 0.05) -> Any:
    value = None
    for _ in range(attempts):
        value = predicate()
        if value:
            return value
        time.sleep(pause)
    return value


def same_response(full: tuple[int, dict[str, str], bytes], fast: tuple[int, dict[str, str], bytes]) -> None:
    """Equal status, headers and body; ``Retry-After`` and a pace ``retry:`` count down, so within a second."""
    assert fast[0] == full[0]
    assert fast[1].keys() == full[1].keys()
    for k, v in full[1].items():
        if k == "retry-after":
            assert abs(int(fast[1][k]) - int(v)) <= 1
        elif k != "content-length" or not full[2].startswith(b"retry:"):
            assert fast[1][k] == v, k
    if full[2].startswith(b"retry:"):
        full_ms, fast_ms = int(full[2].split()[1]), int(fast[2].split()[1])
        assert 0 <= full_ms - fast_ms <= 5000
        assert fast[2].split(b"\n", 1)[1] == full[2].split(b"\n", 1)[1]
    else:
        assert fast[2] == full[2]


def test_fast_path_answers_as_the_full_path_counts_and_audits(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with running_server({**BASE, "audit_path": str(audit)}) as srv:
        ip = "127.0.0.80"
        assert request(srv.port, "/events?topic=f", ip)[0] == 200
        block(srv, ip)
        full = request(srv.port, "/events?topic=f", ip)             # the gate reads the store: full path
        assert full[0] == 204 and srv.metric(FAST) == 0
        fast = [request(srv.port, "/events?topic=f", ip) for _ in range(20)]
        assert srv.metric(FAST) == 20
        for f in fast:
            same_response(full, f)
        # non-SSE path the gate guards: 403 + Retry-After on both paths (another address, so its first is full)
        ip2 = "127.0.0.81"
        block(srv, ip2)
        full403 = request(srv.port, "/publish", ip2)
        fast403 = request(srv.port, "/publish", ip2)
        assert full403[0] == 403 and 290 <= int(full403[1]["retry-after"]) <= 300
        same_response(full403, fast403)
        # an EventSource on a non-stream path (Accept header) is *stop* on the fast path too
        assert request(srv.port, "/publish", ip2, {"Accept": "text/event-stream"})[0] == 204
        assert srv.metric(FAST) == 22
        # exempt paths never refused; other addresses unaffected
        assert request(srv.port, "/healthz", ip)[0] == 200
        assert request(srv.port, "/events?topic=f", "127.0.0.82")[0] == 200
        assert srv.metric(BLOCKED) == 1 + 20 + 2 + 1                  # every refusal counted, both paths
        assert until(lambda: audit.exists() and '"client":"127.0.0.81"' in audit.read_text())
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    mine = [r for r in records if r["client"] == ip and r["layer"] == "reputation"]
    assert mine and all(r["action"] == "stop" and r["tier"] == "blocked" and r["reason"] == "blocked" for r in mine)
    assert all(r["score"] is not None and r["retry_ms"] > 0 for r in mine)
    # one record per address per second on the fast path: the records plus their folded repeats never exceed 21
    assert 1 <= sum(1 + r.get("repeats", 0) for r in mine) <= 21
    assert any(r["client"] == ip2 and r["action"] == "403" for r in records)


@pytest.mark.parametrize("action", ["pace", "429", "503"])
def test_configured_blocked_action_is_the_same_on_the_fast_path(action: str) -> None:
    with running_server({**BASE, "refusal_actions": {"blocked": action}}) as srv:
        ip = "127.0.0.83"
        block(srv, ip)
        full = request(srv.port, "/events?topic=f", ip)
        fast = request(srv.port, "/events?topic=f", ip)
        assert srv.metric(FAST) == 1
        assert full[0] == (200 if action == "pace" else int(action))
        if action == "pace":
            assert full[1]["content-type"].startswith("text/event-stream")
            assert 250_000 <= int(full[2].split()[1]) <= 300_000      # retry: until the block ends
        else:
            assert "retry-after" in full[1]
        same_response(full, fast)
        assert srv.metric(BLOCKED) == 2


def test_shadow_mode_admits_blocked_addresses() -> None:
    with running_server({**BASE, "shadow": True}) as srv:
        ip = "127.0.0.84"
        block(srv, ip)
        statuses = [request(srv.port, "/publish", ip)[0] for _ in range(3)]
        assert 403 not in statuses and 204 not in statuses
        assert srv.metric(FAST) == 0 and srv.metric(BLOCKED) == 0
        assert srv.metric('stormguard_shadow_refusals_total{layer="reputation",reason="blocked"}') == 3


def test_unblock_in_the_store_is_honoured_after_the_recheck() -> None:
    with running_server({**BASE, "block_recheck_seconds": 0.3}) as srv:
        ip = "127.0.0.85"
        block(srv, ip)
        assert request(srv.port, "/events?topic=f", ip)[0] == 204
        assert request(srv.port, "/events?topic=f", ip)[0] == 204
        assert srv.metric(FAST) >= 1
        unblock(srv, ip)
        assert until(lambda: request(srv.port, "/events?topic=f", ip)[0] == 200)


def test_trusted_proxy_peer_goes_through_the_identity_layer() -> None:
    proxy, other = "127.0.0.90", "127.0.0.91"
    with running_server({**BASE, "trusted_proxies": [f"{proxy}/32"]}) as srv:
        block(srv, proxy)
        assert request(srv.port, "/events?topic=f", proxy)[0] == 204          # the proxy's own request: blocked
        assert request(srv.port, "/events?topic=f", proxy)[0] == 204
        # a client behind the proxy is not the proxy: admitted although the proxy's address is blocked
        assert request(srv.port, "/events?topic=f", proxy, {"X-Forwarded-For": "203.0.113.7"})[0] == 200
        block(srv, "203.0.113.8")
        for _ in range(3):
            assert request(srv.port, "/events?topic=f", proxy, {"X-Forwarded-For": "203.0.113.8"})[0] == 204
        assert srv.metric(FAST) == 0                                          # all of it through the full path
        # an untrusted peer's forwarding header is ignored: its own block holds, on the fast path
        block(srv, other)
        for _ in range(3):
            assert request(srv.port, "/events?topic=f", other, {"X-Forwarded-For": "203.0.113.7"})[0] == 204
        assert srv.metric(FAST) == 2
        assert srv.metric(BLOCKED) == 2 + 3 + 3
