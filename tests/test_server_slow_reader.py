"""Slow readers over real sockets: a client that stops reading is ended, counted, audited and penalised, with
bounded memory on the server, while readers of the same topic lose nothing.

The slow client sets a small ``SO_RCVBUF`` and never reads, so its window closes after a few events and the
server's kernel queues the rest: the case the hub's own queue and ``send`` never see (server/hub/backlog.py).
Every wait is a condition with a deadline (the server's metrics, its audit log, its reputation store); no sleep
synchronises anything and no assertion is about time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from server_harness import SSEClient, running_server, stream_rating
from stormguard.scoring.engine import ReputationEngine
from stormguard.scoring.stores import open_store
from stormguard.server.context import ClientIdentity, RequestContext
from stormguard.server.hub.backlog import SlowReaderGuard, kernel_backlog
from stormguard.server.live.rules import LiveReputation

from stormguard.config import Config

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


def ctx(ip: str) -> RequestContext:
    return RequestContext(ClientIdentity(ip=ip, port=1, peer_ip=ip))


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


@pytest.mark.parametrize("conn_log", [False, True], ids=["plain", "conn-log"])
def test_reader_that_never_takes_its_replay_is_ended_on_a_quiet_topic(tmp_path: Path, conn_log: bool) -> None:
    """Nothing is published after it connects: the replay alone (a resume from another epoch: all retained events)
    is what it does not read. 40 KB: less than uvicorn buffers before ``send`` blocks, and no heartbeat or
    send deadline comes within the test, so only the check of the socket can find it. With ``--conn-log`` the
    connection log wraps ``send``; the check must still reach the server's socket."""
    settings = {"slow_reader_timeout": 0.5, "heartbeat_interval": 600.0, "send_timeout": 600.0}
    if conn_log:
        settings["conn_log"] = str(tmp_path / "conn.jsonl")
    with running_server(settings) as srv:
        for i in range(40):
            assert srv.publish("q", f"{i}-" + "y" * 1000).status_code == 200
        slow = SSEClient(srv.port, "/events?topic=q", source="127.0.0.91", rcvbuf=2048,
                         headers={"Last-Event-ID": "q:0@another-epoch"})
        assert slow.status == 200
        _until("the replay's reader ended as a slow reader", lambda: srv.metric(SLOW) == 1)
        assert srv.metric("stormguard_stream_backlog_peak_bytes") <= (1 << 20) + 65536   # default bound + one write
        slow.read_all(max_reads=5000)
        assert slow.eof
        slow.close()


# -- the check and the rule without a server: real loopback sockets, a hand-driven clock -----------------------------

class _Transport:
    def __init__(self, buffered: int = 0) -> None:
        self.buffered = buffered

    def get_write_buffer_size(self) -> int:
        return self.buffered


def _stream(sock: socket.socket, transport: _Transport | None = None) -> SimpleNamespace:
    """What the guard reads of a ``Stream`` (its slots of the same names)."""
    return SimpleNamespace(mailbox=deque(), sock=sock, transport=transport or _Transport(), last_write=0.0,
                           drained=-1.0, acked=None, pending=0, stall_since=None)


@pytest.fixture
def stalled_pair():
    """(server side, client side) of a loopback connection whose client (2 KiB receive buffer) does not read, with
    more written to it than its window takes: bytes wait in the server's kernel."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    client.settimeout(10.0)
    sent = server.send(b"x" * 16384)
    assert sent > 4096                                             # more than the client's window takes
    _until("the client's window closed", lambda: kernel_backlog(server) == kernel_backlog(server))
    try:
        yield server, client, sent
    finally:
        server.close()
        client.close()


def test_guard_ends_a_stream_only_after_the_timeout_without_acknowledgement(stalled_pair) -> None:
    server, client, sent = stalled_pair
    guard = SlowReaderGuard(timeout=0.5, max_bytes=1 << 20)
    stream = _stream(server)
    queued, acked = kernel_backlog(server)
    assert queued > 0 and acked is not None and acked < sent       # the window closed: bytes wait, unacknowledged
    assert not guard.check(stream, 100.0)                          # first look: the stall starts now
    assert not guard.check(stream, 100.4)
    assert guard.check(stream, 100.5)                              # nothing acknowledged for the timeout
    assert guard.peak_bytes >= queued
    got = 0
    while got < sent:                                              # the client reads at last: progress
        got += len(client.recv(65536))
    _until("the backlog drained", lambda: kernel_backlog(server)[0] == 0)
    assert not guard.check(stream, 101.0) and stream.stall_since is None and stream.drained == 101.0
    probes = guard.probes
    assert not guard.check(stream, 102.0) and guard.probes == probes   # nothing written since drained: not asked


def test_guard_byte_bound_and_switches(stalled_pair) -> None:
    server, _, _ = stalled_pair
    queued, _ = kernel_backlog(server)
    assert not SlowReaderGuard(timeout=0, max_bytes=queued + 1000).check(_stream(server, _Transport(999)), 1.0)
    assert SlowReaderGuard(timeout=0, max_bytes=queued + 1000).check(_stream(server, _Transport(1001)), 1.0)
    assert not SlowReaderGuard(timeout=0, max_bytes=0).enabled            # both off: the hub does not run it
    no_socket = _stream(server)
    no_socket.sock = None
    assert not SlowReaderGuard(timeout=0.1, max_bytes=1).check(no_socket, 5.0)   # not asked, never accused


def test_live_rule_charges_each_slow_reader_eviction_once() -> None:
    async def run() -> None:
        config = Config()
        engine = ReputationEngine(open_store("memory://", config), config)
        clock = SimpleNamespace(t=1_000_000.0)
        live = LiveReputation(engine, clock=lambda: clock.t)
        penalties = []
        for reason in ("slow_reader", "idle", "disconnect", "slow_reader"):
            c = ctx("10.0.0.9")
            clock.t += 60.0                                       # far apart: no reconnect or short-lived evidence
            live.observer("open", c, {})
            clock.t += 30.0
            live.observer("close", c, {"reason": reason})
            penalties += await live.flush()
        assert [(p.reason, p.delta) for p in penalties] == [("slow_reader", -25.0)] * 2
        assert penalties[-1].score == pytest.approx(-50.0, abs=0.1) and penalties[-1].block_until > clock.t
        assert await live.flush() == []                           # consumed: not charged again

    asyncio.run(run())
