"""Slow readers over real sockets: a client that stops reading is ended, counted, audited and penalised, with
bounded memory on the server, while readers of the same topic lose nothing.

The slow client sets a small ``SO_RCVBUF`` and never reads, so its window closes after a few events and the
server's kernel queues the rest: the case the hub's own queue and ``send`` never see (server/hub/backlog.py).
Every wait is a condition with a deadline (the server's metrics, its audit log, its reputation store); no sleep
synchronises anything and no assertion is about time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from server_harness import SSEClient, running_server, stream_rating

SLOW = 'stormguard_evictions_total{reason="slow_reader"}'
PENALTIES = 'stormguard_reputation_penalties_total{rule="slow_reader"}'
ROUNDS = "stormguard_slow_reader_check_rounds"
DEADLINE_S = 90.0                         # for a loaded 2-core machine; a bound, never a measurement


def _data(messages) -> list[str]:
    return [m.text for m in messages if m.data]


def _until(what: str, check, deadline_s: float = DEADLINE_S, pause: float = 0.05):
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            pytest.fail(f"not within {deadline_s} s: {what}")
        time.sleep(pause)


def _audit(path: Path, client: str, action: str) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("client") == client and r.get("action") == action
            and r.get("reason") == "slow_reader"]


def _reputation(srv, key: str) -> dict:
    return httpx.get(srv.url + "/_test/reputation", params={"op": "get", "key": key}, timeout=10).json()


def _open_stream(port: int, source: str) -> SSEClient | None:
    """A stream that opened (its first message carries an id), not a pace (``retry:`` and a reason, then closed)."""
    c = SSEClient(port, "/events?topic=t", source=source, rcvbuf=2048)
    first = c.messages(1)
    if c.status == 200 and first and first[0].id is not None:
        return c
    c.close()
    return None


def _penalised(srv, key: str) -> dict | None:
    rep = _reputation(srv, key)
    return rep if "slow_reader" in rep["reasons"] else None


def _publish_until_evicted(srv, topic: str, readers: list[SSEClient], sent: list[str], *, pad: int,
                           lockstep: bool = False, max_events: int = 3000) -> None:
    """Publish one event at a time, each read by every healthy reader, until a slow-reader eviction shows (bounded
    by count and deadline). ``lockstep``: after each event wait for two rounds of the server's check, so at most
    one event is written between two looks at the slow stream's backlog."""
    before = srv.metric(SLOW)
    end = time.monotonic() + DEADLINE_S
    for i in range(max_events):
        text = f"{topic}-{len(sent)}-" + "x" * pad
        assert srv.publish(topic, text).status_code == 200
        sent.append(text)
        for r in readers:
            assert _data(r.messages(1, want=lambda m: bool(m.data))) == [text]
        if lockstep:
            rounds = srv.metric(ROUNDS)
            _until("two slow-reader check rounds", lambda r=rounds: srv.metric(ROUNDS) >= r + 2, pause=0.01)
        if (lockstep or i % 4 == 3) and srv.metric(SLOW) > before:
            return
        if time.monotonic() > end:
            break
    seen = {k: v for k, v in srv.metrics().items() if "slow_reader" in k or "stream" in k or "evictions" in k}
    pytest.fail(f"no slow_reader eviction after {len(sent)} events: {seen}\n{srv.output()[-3000:]}")


def test_stalled_reader_is_reset_counted_audited_penalised_then_blocked(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    settings = {"slow_reader_timeout": 0.5, "heartbeat_interval": 1.0, "audit_path": str(audit),
                "enable_test_routes": True, "live_flush_interval": 0.02, "block_recheck_seconds": 0.2}
    with running_server(settings) as srv:
        ip = "127.0.0.71"
        slow = SSEClient(srv.port, "/events?topic=t", source=ip, rcvbuf=2048)
        readers = [SSEClient(srv.port, "/events?topic=t", source=f"127.0.0.{n}") for n in (72, 73)]
        for r in readers:
            r.messages(1)
        sent: list[str] = []
        _publish_until_evicted(srv, "t", readers, sent, pad=200)
        for _ in range(3):                                  # the topic goes on for everyone else
            text = f"after-{len(sent)}"
            srv.publish("t", text)
            sent.append(text)
        for r in readers:
            got = _data(r.messages(3, want=lambda m: bool(m.data)))
            assert got == sent[-3:]
        assert srv.metric(SLOW) == 1                        # the slow one only; healthy readers stay
        _until("the slow stream closed", lambda: srv.metric('stormguard_active_streams{tier="neutral"}') == 2)
        slow.read_all(max_reads=5000)                       # what its kernel held, then the reset
        assert slow.eof
        slow.close()
        assert _until("the eviction in the audit log", lambda: _audit(audit, ip, "evict"))[0]["layer"] == "hub"
        rep = _until("the slow_reader penalty", lambda: _penalised(srv, ip))
        assert rep["score"] == pytest.approx(-25.0, abs=0.01)
        assert _until("the penalty in the audit log", lambda: _audit(audit, ip, "penalty"))[0]["delta"] == -25.0
        assert stream_rating(srv.port, ip) == (200, "low")   # paced: the lowest tier on reconnect
        # it does it again: a second eviction costs 25 more (−50) and the next connection is refused
        # (until the quota has released the probe's stream, the one stream of the low tier, it is paced: try again)
        slow = _until("a second stream opened", lambda: _open_stream(srv.port, ip))
        _publish_until_evicted(srv, "t", readers, sent, pad=200)
        slow.close()
        _until("the second penalty", lambda: _reputation(srv, ip)["score"] <= -49.99)
        assert stream_rating(srv.port, ip)[0] in (204, 403, 429)   # blocked: refused on reconnect
        assert srv.metric(PENALTIES) == 2 and srv.metric(SLOW) == 2
        assert srv.metric("stormguard_stream_queue_peak") <= 256          # send_queue_size
        for r in readers:
            r.close()


def test_reader_falling_behind_is_ended_at_the_byte_bound_and_backlog_stays_bounded() -> None:
    bound = 32768
    pad = 4096
    # the stall check off: only the byte bound can end it; ticks every 0.1 s (heartbeat / 2)
    settings = {"slow_reader_timeout": 0, "slow_reader_max_bytes": bound, "heartbeat_interval": 0.2,
                "send_timeout": 60.0, "send_queue_size": 64}
    with running_server(settings) as srv:
        slow = SSEClient(srv.port, "/events?topic=b", source="127.0.0.81", rcvbuf=2048)
        reader = SSEClient(srv.port, "/events?topic=b", source="127.0.0.82")
        reader.messages(1)
        sent: list[str] = []
        _publish_until_evicted(srv, "b", [reader], sent, pad=pad, lockstep=True)
        assert srv.metric(SLOW) == 1
        frame = pad + 256                                  # one event on the wire: id, data, chunk framing
        peak = srv.metric("stormguard_stream_backlog_peak_bytes")
        assert bound < peak <= bound + frame               # ended at the first look past the bound
        assert srv.metric("stormguard_stream_queue_peak") <= 64
        assert len(sent) * frame > peak                    # what was published is more than what was held
        text = "after"
        srv.publish("b", text)
        assert _data(reader.messages(1, want=lambda m: bool(m.data))) == [text]
        slow.read_all(max_reads=5000)
        assert slow.eof
        slow.close()
        reader.close()
