"""In-process tests of the server's pure parts (fake clocks, no sockets): limiter, breaker, retry, identity, ids."""

from __future__ import annotations

import random

import pytest
from stormguard.server.hub.history import MemoryHistory
from stormguard.server.hub.topics import parse_last_event_id
from stormguard.server.layers.breaker import NORMAL, PROBE, REFUSED, CircuitBreaker
from stormguard.server.layers.identity import IdentityMiddleware, parse_ip
from stormguard.server.layers.limiter import GcraBuckets
from stormguard.server.layers.retry import RetryChooser


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- limiter -------------------------------------------------------------------------------------------------------
def test_bucket_burst_then_refuse_then_refill() -> None:
    clock = Clock()
    b = GcraBuckets(3.0, 2.0, clock=clock)
    ok1, left1, _ = b.take("a")
    ok2, left2, _ = b.take("a")
    ok3, _, wait = b.take("a")
    assert (ok1, ok2, ok3) == (True, True, False)
    assert left1 == pytest.approx(1.0) and left2 == pytest.approx(0.0)
    assert wait == pytest.approx(1 / 3)
    clock.t += 1 / 3
    assert b.take("a")[0] is True
    assert b.take("b")[0] is True           # other keys are independent


def test_bucket_memory_bounded_and_idle_entries_dropped_losslessly() -> None:
    clock = Clock()
    evictions: list[bool] = []
    b = GcraBuckets(3.0, 2.0, max_entries=1000, clock=clock, on_evict=evictions.append)
    for i in range(200_000):                 # 200k distinct addresses, 1 ms apart: ~670 active at any time
        clock.t += 0.001
        b.take(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        assert len(b) <= 1000
    # entries older than burst/rate (0.67 s) are full buckets: every drop so far was lossless
    assert evictions.count(False) == 0 and evictions.count(True) > 190_000
    for i in range(20_000):                  # a denser flood: the hard cap holds, the excess drops are lossy
        clock.t += 0.00001
        b.take(f"flood-{i}")
        assert len(b) <= 1000
    assert evictions.count(False) > 0
    clock.t += 10
    for i in range(600):
        b.take(f"new-{i}")
    assert len(b) <= 1000


def test_full_bucket_equals_no_entry() -> None:
    clock = Clock()
    b = GcraBuckets(3.0, 2.0, clock=clock)
    b.take("x")
    clock.t += 5
    b.take("y")                               # trims the expired "x"
    b.take("y")
    assert "x" not in b._tat
    assert b.take("x")[1] == pytest.approx(1.0)   # as if it had never been seen


# -- breaker -------------------------------------------------------------------------------------------------------
def _breaker(clock: Clock, **kw: float) -> CircuitBreaker:
    opts = {"window": 10.0, "buckets": 10, "threshold": 0.5, "min_requests": 4, "open_timeout": 5.0, "probes": 2}
    opts.update(kw)
    return CircuitBreaker(clock=clock, **opts)  # type: ignore[arg-type]


def test_breaker_needs_a_full_window_and_min_requests() -> None:
    clock = Clock()
    br = _breaker(clock)
    for _ in range(10):                       # errors right after start: the window is not full yet
        br.record(False)
    assert br.state == "closed"
    clock.t += 11                             # old bucket contents expired too
    br.record(False)
    assert br.state == "closed"               # 1 < min_requests
    for _ in range(3):
        br.record(True)
    br.record(False)                          # 2 failures / 5 = 0.4 < 0.5
    assert br.state == "closed"
    br.record(False)                          # 3 / 6 = 0.5
    assert br.state == "open"
    assert br.allow() == REFUSED


def test_breaker_half_open_admits_bounded_probes() -> None:
    clock = Clock()
    br = _breaker(clock)
    clock.t += 11
    for _ in range(4):
        br.record(False)
    assert br.state == "open"
    clock.t += 5
    tickets = [br.allow() for _ in range(5)]
    assert tickets == [PROBE, PROBE, REFUSED, REFUSED, REFUSED]
    assert br.state == "half_open"
    br.record(None, probe=True)               # a probe whose client went away: slot freed, no verdict
    assert br.allow() == PROBE
    br.record(False, probe=True)              # probe failure: open again
    assert br.state == "open" and br.allow() == REFUSED
    clock.t += 5
    assert br.allow() == PROBE
    br.record(True, probe=True)               # probe success: closed, fresh window
    assert br.state == "closed" and br.allow() == NORMAL
    for _ in range(10):
        br.record(False)
    assert br.state == "closed"               # a new full window is needed before it can trip again


def test_breaker_external_failures_count_and_reopen_half_open() -> None:
    clock = Clock()
    br = _breaker(clock)
    clock.t += 11
    for _ in range(4):
        br.record_failure("loop_lag")
    assert br.state == "open"
    clock.t += 5
    assert br.allow() == PROBE
    br.record_failure("store")
    assert br.state == "open"


# -- retry ---------------------------------------------------------------------------------------------------------
def test_retry_formula_jitter_and_bounds() -> None:
    ch = RetryChooser({"stream": 3000, "rate": 5000}, {"trusted": 0.5, "neutral": 1.0, "low": 3.0},
                      load_gain=3.0, degrade_factor=2.0, jitter=0.25, min_ms=500, max_ms=60000,
                      rng=random.Random(7))
    assert ch.nominal("rate", "neutral", 0.0) == 5000
    assert ch.nominal("rate", "low", 1.0, degraded=True) == 5000 * 3 * 4 * 2
    values = {ch.choose("stream", "neutral", 0.0) for _ in range(200)}
    assert len(values) > 50                                   # spread, not synchronised
    assert all(2250 <= v <= 3750 for v in values)
    assert ch.choose("rate", "low", 1.0, degraded=True) == 60000   # clamped
    assert ch.choose("unknown-reason") >= 500
    assert RetryChooser.seconds(1001) == 2


# -- identity ------------------------------------------------------------------------------------------------------
def _scope(peer: str, headers: dict[str, str]) -> dict:
    return {"type": "http", "client": (peer, 5555), "path": "/",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}


def test_identity_rightmost_untrusted_hop() -> None:
    bad: list[str] = []
    mw = IdentityMiddleware(None, trusted_proxies=["10.0.0.0/8"], on_malformed=bad.append)
    ident = mw.identify(_scope("10.1.1.1", {"X-Forwarded-For": "6.6.6.6, 1.2.3.4, 10.2.2.2"}))
    assert ident.ip == "1.2.3.4" and ident.via_proxy
    ident = mw.identify(_scope("8.8.8.8", {"X-Forwarded-For": "1.2.3.4"}))       # untrusted peer: ignored
    assert ident.ip == "8.8.8.8" and not ident.via_proxy
    ident = mw.identify(_scope("10.1.1.1", {"Forwarded": 'for="[2001:db8::1]:443";proto=https, for=10.3.3.3'}))
    assert ident.ip == "10.1.1.1"         # the default believes X-Forwarded-For only: Forwarded is client-controlled
    fwd = IdentityMiddleware(None, trusted_proxies=["10.0.0.0/8"], proxy_headers=("forwarded",))
    ident = fwd.identify(_scope("10.1.1.1", {"Forwarded": 'for="[2001:db8::1]:443";proto=https, for=10.3.3.3'}))
    assert ident.ip == "2001:db8::1"
    ident = mw.identify(_scope("10.1.1.1", {"X-Forwarded-For": "1.2.3.4, not-an-ip"}))
    assert ident.ip == "10.1.1.1" and bad == ["x-forwarded-for"]
    ident = mw.identify(_scope("10.1.1.1", {"Forwarded": "for=unknown", "X-JA4": "t13d1516h2_8daaf6152771_e5627efa2ab1",
                                             "X-JA3": "771,4865-4866,0-23,29-23,0", "X-TLS-SNI": "Example.COM"}))
    assert ident.ip == "10.1.1.1"
    assert ident.ja4 == "t13d1516h2_8daaf6152771_e5627efa2ab1" and len(ident.ja3 or "") == 32
    assert ident.sni == "example.com"
    ident = mw.identify(_scope("10.1.1.1", {"X-JA3": "'; drop table", "X-TLS-SNI": "a b"}))
    assert ident.ja3 is None and ident.sni is None
    assert bad.count("ja3") == 1 and bad.count("sni") == 1
    assert parse_ip("1.2.3.4:80") == "1.2.3.4" and parse_ip("[::1]:8080") == "::1" and parse_ip("_hidden") is None


# -- ids and history -----------------------------------------------------------------------------------------------
def test_last_event_id_parsing() -> None:
    assert parse_last_event_id("a:3,b/c:7@e1", "e1") == {"a": 3, "b/c": 7}
    assert parse_last_event_id("a:3@old", "e1") == {"a": 0}       # other epoch: replay what is retained
    for bad in ("", "12", "a:x@e1", "a:3", "@e1", "a b:1@e1"):
        assert parse_last_event_id(bad, "e1") is None


def test_history_bounded_by_count_and_age_with_gap_flag() -> None:
    clock = Clock()
    h = MemoryHistory(max_events=3, max_age=10.0, clock=clock)
    for i in range(5):
        h.append("t", str(i))
    events, gap = h.since("t", 0)
    assert [e.seq for e in events] == [3, 4, 5] and gap
    events, gap = h.since("t", 3)
    assert [e.seq for e in events] == [4, 5] and not gap
    assert h.since("t", 5) == ([], False)
    clock.t += 11
    assert h.since("t", 4) == ([], True)
    assert h.last_seq("t") == 5


# -- refusals and the breaker --------------------------------------------------------------------------------------
def _call(app, path: str = "/events", accept: str = "text/event-stream") -> list[dict]:
    import asyncio

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "method": "GET", "client": ("127.0.0.1", 1),
             "headers": [(b"accept", accept.encode())]}
    asyncio.run(app(scope, receive, send))
    return sent


def test_refusal_actions_and_non_sse_fallback() -> None:
    from stormguard.server.layers.refuse import Refuser

    refuser = Refuser(retry=RetryChooser({"stream": 3000}, {}, rng=random.Random(1)),
                      actions={"rate": "pace", "quota": "503", "blocked": "stop"})

    def app_refusing(reason: str):
        async def app(scope, receive, send) -> None:
            await refuser.refuse(scope, send, layer="test", reason=reason)
        return app

    pace = _call(app_refusing("rate"))
    assert pace[0]["status"] == 200 and pace[1]["body"].startswith(b"retry: ")
    assert _call(app_refusing("blocked"))[0]["status"] == 204
    quota = _call(app_refusing("quota"))
    assert quota[0]["status"] == 503 and int(dict(quota[0]["headers"])[b"retry-after"]) in (3, 4)
    api = _call(app_refusing("rate"), path="/api", accept="application/json")      # not EventSource: no pace
    assert api[0]["status"] == 429 and b"retry-after" in dict(api[0]["headers"])
    assert _call(app_refusing("blocked"), path="/api", accept="*/*")[0]["status"] == 403
    with pytest.raises(ValueError):
        Refuser(retry=RetryChooser({}, {}), actions={"rate": "teapot"})


def test_breaker_does_not_count_inner_503_refusals_as_failures() -> None:
    from stormguard.server.layers.breaker import BreakerMiddleware
    from stormguard.server.layers.refuse import Refuser

    clock = Clock()
    br = _breaker(clock, min_requests=2)
    clock.t += 11
    refuser = Refuser(retry=RetryChooser({}, {}), actions={"quota": "503"})

    async def inner(scope, receive, send) -> None:
        await refuser.refuse(scope, send, layer="quota", reason="quota")

    async def failing(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    for _ in range(5):
        assert _call(BreakerMiddleware(inner, breaker=br, refuser=refuser))[0]["status"] == 503
    assert br.state == "closed" and br.counts() == (5, 0)
    for _ in range(6):
        _call(BreakerMiddleware(failing, breaker=br, refuser=refuser))
    assert br.state == "open"


def test_fresh_bucket_reports_whole_tokens_left() -> None:
    """A new client's first connection leaves exactly burst - 1 tokens (not 0.999…, which read as 'degraded')."""
    from stormguard.server.layers.limiter import GcraBuckets

    buckets = GcraBuckets(rate=3.0, burst=2, clock=lambda: 1000.0)
    for i in range(1000):
        ok, left, _ = buckets.take(f"10.0.{i // 256}.{i % 256}")
        assert ok and left == 1.0


# -- refusal counters and the blocked-client fast path ------------------------------------------------------------
def test_refusal_counts_are_plain_ints_exported_at_scrape_time() -> None:
    from stormguard.server.ops.metrics import Metrics

    m = Metrics()
    m.reject("limiter", "rate")
    m.reject("limiter", "rate")
    m.rejected.tally("reputation", "blocked").n += 5
    text = m.render()[0].decode()
    assert 'rate_limit_rejected_total{layer="limiter",reason="rate"} 2.0' in text
    assert 'rate_limit_rejected_total{layer="reputation",reason="blocked"} 5.0' in text
    assert m.rejected.value("limiter", "rate") == 2 and m.rejected.value("x", "y") == 0


def _fast_path(clock: Clock, *, actions: dict[str, str] | None = None, audit_path: str | None = "-",
               trusted: tuple[str, ...] = ()) -> tuple[object, object, list[dict[str, object]]]:
    from stormguard.server.layers.fastpath import BlockedFastPath
    from stormguard.server.layers.refuse import Refuser
    from stormguard.server.layers.reputation_gate import ReputationGateAdapter
    from stormguard.server.ops.audit import AuditLog
    from stormguard.server.ops.metrics import Metrics

    audit = AuditLog(audit_path)
    refuser = Refuser(retry=RetryChooser({}, {}), actions=actions, metrics=Metrics(), audit=audit)
    gate = ReputationGateAdapter(engine=None, recheck=1.0, clock=clock)
    gate.note_block("10.0.0.1", clock.t + 300.0, -80.0)
    fast = BlockedFastPath(cache=gate, refuser=refuser, breaker=CircuitBreaker(clock=clock), trusted_proxies=trusted,
                           exempt_paths=("/healthz",), audit=audit)
    return fast, refuser, audit._queue  # type: ignore[return-value]


def _req(path: str, ip: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, object]:
    return {"type": "http", "path": path, "client": (ip, 5000), "headers": headers or []}


def test_fast_path_refuses_remembered_blocks_until_the_recheck() -> None:
    clock = Clock()
    fast, refuser, _ = _fast_path(clock)
    start, body = fast.check(_req("/events", "10.0.0.1"))            # type: ignore[attr-defined]
    assert start["status"] == 204 and body["body"] == b""
    start, body = fast.check(_req("/other", "10.0.0.1"))             # type: ignore[attr-defined]
    assert start["status"] == 403 and (b"retry-after", b"300") in start["headers"]
    accept = [(b"accept", b"text/event-stream")]
    assert fast.check(_req("/other", "10.0.0.1", accept))[0]["status"] == 204   # type: ignore[attr-defined]
    assert fast.check(_req("/events", "10.0.0.2")) is None           # type: ignore[attr-defined]
    assert fast.check(_req("/healthz", "10.0.0.1")) is None          # type: ignore[attr-defined]
    assert refuser.metrics.rejected.value("reputation", "blocked") == 3   # type: ignore[attr-defined]
    clock.t += 1.0                                                       # due for the store re-read: full path
    assert fast.check(_req("/events", "10.0.0.1")) is None           # type: ignore[attr-defined]


def test_fast_path_skips_trusted_proxies_and_an_open_breaker() -> None:
    clock = Clock()
    fast, _, _ = _fast_path(clock, trusted=("10.0.0.0/24",))
    assert fast.check(_req("/events", "10.0.0.1")) is None           # type: ignore[attr-defined]
    fast, _, _ = _fast_path(clock)
    fast.breaker.state = "open"                                          # type: ignore[attr-defined]
    assert fast.check(_req("/events", "10.0.0.1")) is None           # type: ignore[attr-defined]


def test_fast_path_pace_carries_time_to_block_end() -> None:
    clock = Clock()
    fast, _, _ = _fast_path(clock, actions={"blocked": "pace"})
    start, body = fast.check(_req("/events", "10.0.0.1"))            # type: ignore[attr-defined]
    assert start["status"] == 200 and body["body"] == b"retry: 300000\n: blocked\n\n"
    assert (b"content-length", str(len(body["body"])).encode()) in start["headers"]


def test_fast_path_audit_is_one_record_per_address_per_second_with_repeats() -> None:
    clock = Clock(1000.25)
    fast, refuser, queue = _fast_path(clock)
    for _ in range(5):
        fast.check(_req("/events", "10.0.0.1"))                      # type: ignore[attr-defined]
    clock.t = 1000.9
    fast.check(_req("/events", "10.0.0.1"))                          # type: ignore[attr-defined]
    assert len(queue) == 1 and "repeats" not in queue[0]
    clock.t = 1001.1
    fast.check(_req("/events", "10.0.0.1"))                          # type: ignore[attr-defined]
    assert len(queue) == 2 and queue[1]["repeats"] == 5
    rec = queue[1]
    assert (rec["client"], rec["tier"], rec["score"], rec["layer"], rec["reason"], rec["action"]) == (
        "10.0.0.1", "blocked", -80.0, "reputation", "blocked", "stop")
    assert refuser.metrics.rejected.value("reputation", "blocked") == 7   # type: ignore[attr-defined]
