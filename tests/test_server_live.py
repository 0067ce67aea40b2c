"""Live rules over sockets: connection events → online features → the engine's rules → the store, off the hot path.

DESIGN.md: ≥5 reconnects within 10 s → −20; ≥3 disconnects within 2 s of opening → −30. Each is checked alone.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import httpx
import pytest
from server_harness import SSEClient, running_server
from stormguard.scoring.engine import ReputationEngine
from stormguard.scoring.stores import open_store
from stormguard.server.context import ClientIdentity, RequestContext
from stormguard.server.layers.reputation_gate import ReputationGateAdapter
from stormguard.server.live.rules import LiveReputation

from stormguard.config import Config

FAST = {"enable_test_routes": True, "live_flush_interval": 0.02, "block_recheck_seconds": 0.2}


def reputation(srv, key: str) -> dict:
    return httpx.get(srv.url + "/_test/reputation", params={"op": "get", "key": key}, timeout=10).json()


def poll(srv, key: str, done, attempts: int = 100) -> dict:
    rep = reputation(srv, key)
    for _ in range(attempts):
        if done(rep):
            break
        time.sleep(0.05)
        rep = reputation(srv, key)
    return rep


def test_five_reconnects_within_ten_seconds_cost_twenty_points() -> None:
    with running_server({**FAST, "reputation_paths": ["/events", "/_test/whoami"]}) as srv:
        ip = "127.0.0.101"
        httpx.get(srv.url + "/_test/reputation", params={"op": "set", "key": ip, "score": "75"}, timeout=10)
        with httpx.Client(transport=httpx.HTTPTransport(local_address=ip), timeout=10) as client:
            assert client.get(srv.url + "/_test/whoami").json()["tier"] == "trusted"
        streams = [SSEClient(srv.port, "/events?topic=l", source=ip) for _ in range(6)]   # kept open: no short ones
        assert all(c.status == 200 and c.messages(1) and not c.eof for c in streams)
        rep = poll(srv, ip, lambda r: "reconnect_storm" in r["reasons"])
        assert rep["reasons"] == ["manual", "reconnect_storm"]
        assert rep["score"] == pytest.approx(55.0, abs=0.01)                 # 75 − 20, exactly once
        with httpx.Client(transport=httpx.HTTPTransport(local_address=ip), timeout=10) as client:
            whoami = client.get(srv.url + "/_test/whoami").json()
        assert whoami["tier"] == "neutral"                                    # 55: no longer trusted
        for c in streams:
            c.close()


def test_three_disconnects_within_two_seconds_cost_thirty_points() -> None:
    with running_server(FAST) as srv:
        ip = "127.0.0.102"
        for _ in range(3):
            c = SSEClient(srv.port, "/events?topic=l", source=ip)
            assert c.status == 200 and c.messages(1)
            c.close()                                      # the client hangs up right after the first bytes
        rep = poll(srv, ip, lambda r: "short_disconnects" in r["reasons"])
        assert rep["reasons"] == ["short_disconnects"] and rep["score"] == pytest.approx(-30.0, abs=0.01)
        low = SSEClient(srv.port, "/events?topic=l", source=ip)
        assert low.headers["x-ip-rating"] == "low"        # −30: below neutral's −20
        low.close()


def test_quota_pacing_is_not_penalised() -> None:
    with running_server(FAST) as srv:
        ip = "127.0.0.103"
        streams = [SSEClient(srv.port, "/events?topic=l", source=ip) for _ in range(3)]
        for _ in range(4):                                 # quota refusals: the server's doing, not a storm
            assert "quota" in SSEClient(srv.port, "/events?topic=l", source=ip).read_all()[0].comments
        time.sleep(0.3)                                    # let a few batches run (not an assertion on time)
        assert reputation(srv, ip)["reasons"] == []
        assert srv.metric('rate_limit_rejected_total{layer="quota",reason="quota"}') == 4
        for c in streams:
            c.close()


def test_limiter_refusals_count_as_reconnects() -> None:
    with running_server({**FAST, "ip_rate": 0.001, "ip_burst": 1.0}) as srv:
        ip = "127.0.0.104"
        first = SSEClient(srv.port, "/events?topic=l", source=ip)
        for _ in range(5):                                 # back sooner than told: paced by the limiter
            assert "rate" in SSEClient(srv.port, "/events?topic=l", source=ip).read_all()[0].comments
        rep = poll(srv, ip, lambda r: "reconnect_storm" in r["reasons"])
        assert rep["reasons"] == ["reconnect_storm"] and rep["score"] == pytest.approx(-20.0, abs=0.01)
        first.close()


# -- the batcher without sockets: exact consumption arithmetic --------------------------------------------------------

def ctx(ip: str) -> RequestContext:
    return RequestContext(ClientIdentity(ip=ip, port=1, peer_ip=ip))


def test_live_batcher_penalises_once_per_crossing_and_feeds_the_gate() -> None:
    async def run() -> None:
        config = Config()
        store = open_store("memory://", config)
        engine = ReputationEngine(store, config)
        clock = SimpleNamespace(t=1_000_000.0)
        gate = ReputationGateAdapter(engine, clock=lambda: clock.t)
        live = LiveReputation(engine, gate=gate, clock=lambda: clock.t)
        penalties = []
        for _ in range(16):                               # 15 gaps of 1 s: crossings at 5, 10 and 15 gaps
            clock.t += 1.0
            live.observer("open", ctx("10.0.0.1"), {})
            penalties += await live.flush()
        assert [p.reason for p in penalties] == ["reconnect_storm"] * 3
        assert penalties[-1].score == pytest.approx(-60.0, abs=0.1) and penalties[-1].block_until > clock.t
        assert len(gate) == 1                                # blocked locally: the next refusal costs no read
        reads = gate.store_reads
        decision = await gate(ctx("10.0.0.1"))
        assert decision is not None and not decision.allow and gate.store_reads == reads
        live.observer("first_byte", ctx("10.0.0.1"), {})
        assert len(live._queue) == 0                        # first_byte is not queued at all

    asyncio.run(run())


def test_live_queue_is_bounded() -> None:
    engine = ReputationEngine(open_store("memory://", Config()), Config())
    dropped = []
    live = LiveReputation(engine, max_queue=3, on_drop=lambda: dropped.append(1))
    for _ in range(5):
        live.observer("open", ctx("10.0.0.2"), {})
    assert len(live._queue) == 3 and live.dropped == 2 and len(dropped) == 2
