"""A bounded reconnect storm against the real server (issue 4, item 3) — bounded in counts, not timed.

200 aggressive clients from 50 loopback addresses (127.0.1.1–127.0.1.50, 4 per address) reconnect without backoff,
30 attempts each (6,000 connections), beside 20 well-behaved EventSource-like clients (127.0.2.1–127.0.2.20) that
honour ``retry:`` and resume with ``Last-Event-ID`` — half of them cut their own connection once mid-stream — while
a publisher (127.0.3.1) posts 60 events. The server runs the default limiter (3/s, burst 2 per address) and a
stand-in reputation gate that blocks an address after 20 attempts within 10 s (:func:`browser_app.storm_app`).

Asserted: every well-behaved client receives every event exactly once and in order; each of the 50 aggressive
addresses has refusals in the audit log and every aggressive client's last attempt was refused (paced or stopped);
no well-behaved address is refused; the server's resident memory grows by at most ``RSS_BOUND_MB``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
from browser_app import BLOCK_AFTER_ENV, read_audit, running_app, vm_rss_kb
from browser_sse import Hammer, PoliteClient
from server_harness import TOKEN

AGGRESSIVE_ADDRESSES = [f"127.0.1.{i}" for i in range(1, 51)]
CLIENTS_PER_ADDRESS = 4
ATTEMPTS = 30
POLITE_ADDRESSES = [f"127.0.2.{i}" for i in range(1, 21)]
PUBLISHER = "127.0.3.1"
EVENTS = 60
RSS_BOUND_MB = 150
TOPIC = "storm"

SETTINGS = {
    "ip_rate": 3.0,                 # DESIGN.md defaults (the harness would otherwise open the limiter wide)
    "ip_burst": 2.0,
    "heartbeat_interval": 5.0,
    "history_max_events": 1000,
    "audit_queue_size": 100_000,
}


async def publish_all(port: int, start: asyncio.Event) -> list[str]:
    sent: list[str] = []
    transport = httpx.AsyncHTTPTransport(local_address=PUBLISHER)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
        await start.wait()
        for i in range(EVENTS):
            text = f"storm-{i}"
            r = await client.post("/publish", json={"topic": TOPIC, "data": text},
                                  headers={"authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200, r.text
            sent.append(text)
            await asyncio.sleep(0.03)
    return sent


async def storm(port: int) -> tuple[list[PoliteClient], list[Hammer], list[str], float, dict[str, float]]:
    polite = [PoliteClient(src, port, TOPIC, EVENTS, cut_after=EVENTS // 3 if i % 2 == 0 else None)
              for i, src in enumerate(POLITE_ADDRESSES)]
    polite_tasks = [asyncio.create_task(c.run()) for c in polite]
    await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in polite)), 15)

    hammers = [Hammer(src, port, TOPIC, ATTEMPTS) for src in AGGRESSIVE_ADDRESSES for _ in range(CLIENTS_PER_ADDRESS)]
    go = asyncio.Event()
    publisher = asyncio.create_task(publish_all(port, go))
    t0 = time.monotonic()
    hammer_tasks = [asyncio.create_task(h.run()) for h in hammers]
    go.set()
    await asyncio.wait_for(asyncio.gather(*hammer_tasks), 60)
    storm_s = time.monotonic() - t0
    sent = await asyncio.wait_for(publisher, 30)
    await asyncio.wait_for(asyncio.gather(*polite_tasks), 40)
    return polite, hammers, sent, storm_s, {"storm_s": storm_s, "total_s": time.monotonic() - t0}


def test_storm_well_behaved_clients_lose_nothing(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.jsonl"
    settings = {**SETTINGS, "audit_path": str(audit_path)}
    with running_app("storm_app", settings, env={BLOCK_AFTER_ENV: "20"}) as server:
        assert server.proc is not None
        rss_before = vm_rss_kb(server.proc.pid)
        polite, hammers, sent, storm_s, times = asyncio.run(storm(server.port))
        rss_after = vm_rss_kb(server.proc.pid)
        metrics = server.metrics()
        assert httpx.get(server.url + "/healthz", timeout=5.0).status_code == 200

        # every well-behaved client: every event, once, in order (the cut ones resumed with Last-Event-ID)
        assert sent == [f"storm-{i}" for i in range(EVENTS)]
        for c in polite:
            assert c.received == sent, (c.source, len(c.received), c.statuses)
            assert not c.stopped and set(c.statuses) == {200}, (c.source, c.statuses)
        assert sum(len(c.statuses) for c in polite) >= len(polite) + len(polite) // 2  # the cut half reconnected

        # the aggressive addresses end limited or blocked
        for h in hammers:
            assert len(h.outcomes) == ATTEMPTS
            assert h.outcomes[-1] in ("pace", "stop"), (h.source, h.outcomes)
        assert not [o for h in hammers for o in h.outcomes if o == "error" or o.startswith("status-")]

        audit = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:     # the audit log is written asynchronously (every 0.2 s)
            audit = read_audit(audit_path)
            refused = {r["client"] for r in audit if r["action"] in ("pace", "stop")}
            if refused >= set(AGGRESSIVE_ADDRESSES):
                break
            time.sleep(0.2)
        by_client = Counter(r["client"] for r in audit if r["action"] in ("pace", "stop"))
        missing = [a for a in AGGRESSIVE_ADDRESSES if not by_client[a]]
        assert not missing, f"no refusal audited for {missing}"
        blocked = {r["client"] for r in audit if r["reason"] == "blocked"}
        assert blocked == set(AGGRESSIVE_ADDRESSES), sorted(set(AGGRESSIVE_ADDRESSES) - blocked)
        polite_records = [r for r in audit if r["client"] in set(POLITE_ADDRESSES + [PUBLISHER])]
        assert not polite_records, polite_records[:5]
        assert metrics.get('rate_limit_rejected_total{layer="limiter",reason="rate"}', 0) > 0
        assert metrics.get('rate_limit_rejected_total{layer="reputation",reason="blocked"}', 0) > 0
        assert metrics.get("stormguard_audit_dropped_total", 0) == 0

        growth_mb = (rss_after - rss_before) / 1024
        assert growth_mb <= RSS_BOUND_MB, f"server RSS grew {growth_mb:.1f} MB (bound {RSS_BOUND_MB} MB)"

    outcomes = Counter(o for h in hammers for o in h.outcomes)
    print(f"storm: {sum(outcomes.values())} aggressive attempts {dict(outcomes)} in {storm_s:.1f} s "
          f"(all done {times['total_s']:.1f} s); polite connects {sum(len(c.statuses) for c in polite)}; "
          f"audit {dict(Counter((r['layer'], r['reason'], r['action']) for r in audit))}; RSS {rss_before / 1024:.1f} → {rss_after / 1024:.1f} MB")
