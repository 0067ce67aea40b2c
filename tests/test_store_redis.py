"""Redis-only promises: Cluster-compatible keys, TTLs, NOSCRIPT recovery, several processes, and outages.

The outage tests own their ``redis-server``: they stop it mid-run, check that every call is still answered from
the local fallback (one log line, counters up), then start a new server on the same port and check recovery.
"""

from __future__ import annotations

import asyncio
import logging
import math
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
import redis
from redis_server import RedisServer, own_redis_server_fixture, redis_server_fixture  # noqa: F401 - fixtures
from stormguard.scoring.engine import ReputationEngine
from stormguard.scoring.stores import open_store
from stormguard.scoring.stores.failover import FailoverStore
from stormguard.scoring.stores.redis_store import RedisStore
from stormguard.scoring.stores.sync import SyncStore

from stormguard.config import Config


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def test_keys_share_a_hash_tag_per_operation(redis_server: RedisServer) -> None:
    from redis.crc import key_slot

    with SyncStore(open_store(f"{redis_server.url}?prefix=sg&shards=16&failover=0")) as s:
        store: RedisStore = s.store
        for client in ("1.2.3.4", "2001:db8::1", "weird{key}", ""):
            keys = store.keys_for(client)
            assert len({key_slot(k.encode()) for k in keys}) == 1, keys
        tags = {store.tag(f"10.0.0.{i}") for i in range(256)}
        assert len(tags) == 16 and len({key_slot(t.encode()) for t in tags}) > 1  # spread over slots


def test_ttl_covers_decay_and_block(redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url)
    with SyncStore(open_store(f"{redis_server.url}?prefix={_prefix()}&failover=0&idle_ttl=60")) as s:
        s.add("quiet", 0.1)
        s.add("bad", -100)
        s.block("long", time.time() + 10 * 86400)
        ttl = {k: r.ttl(s.store.keys_for(k)[0]) for k in ("quiet", "bad", "long")}
        assert 0 < ttl["quiet"] <= 60
        assert ttl["bad"] > 86400 * 5  # ~ln(200)/λ: until the score has decayed to ~0
        assert ttl["long"] >= 10 * 86400 - 5
        s.clear()


def test_noscript_is_reloaded(redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url)
    with SyncStore(open_store(f"{redis_server.url}?prefix={_prefix()}&failover=0")) as s:
        s.add("k", -5, now=10.0)  # scripts loaded now (a test before may have flushed them: that reload counts)
        before = s.store.script_reloads
        r.script_flush()
        assert s.add("k", -5, now=10.0).score == -10
        assert s.store.script_reloads == before + 1
        s.clear()


def test_expired_members_leave_the_ranking(redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with SyncStore(open_store(f"{redis_server.url}?prefix={_prefix()}&failover=0")) as s:
        s.add("gone", -10, now=100.0)
        r.delete(s.store.keys_for("gone")[0])  # as if its TTL ran out
        assert [x.key for x in s.top(5)] == []
        s.add("a", -1, now=100.0)
        h, z, x, _ = s.store.keys_for("a")
        r.zadd(x, {"gone2": 0})
        r.zadd(z, {"gone2": 0})
        s.add("a", -1, now=200.0)  # the write sweeps expired members
        assert r.zscore(z, "gone2") is None and r.zscore(x, "gone2") is None
        s.clear()


_WORKER = """
import sys
from stormguard.scoring.stores import open_store
from stormguard.scoring.stores.sync import SyncStore
url, n = sys.argv[1], int(sys.argv[2])
with SyncStore(open_store(url, failover=False)) as s:
    async def go():
        import asyncio
        await asyncio.gather(*(s.store.add("shared", 0.0625, now=1000.0) for _ in range(n)))
    s.run(go())
"""


def test_processes_lose_no_update(redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?prefix={_prefix()}"
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, url, "200"]) for _ in range(4)]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    with SyncStore(open_store(url, failover=False)) as s:
        assert s.get("shared", now=1000.0).score == 4 * 200 * 0.0625
        s.clear()


def _failover(server: RedisServer, mode: str = "closed") -> SyncStore:
    store = open_store(f"{server.url}?prefix=out&timeout=0.2&retry_seconds=0.2&fail_mode={mode}")
    assert isinstance(store, FailoverStore)
    return SyncStore(store)


def test_outage_and_recovery(own_redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="stormguard.scoring.store")
    with _failover(own_redis_server) as s:
        store: FailoverStore = s.store
        blocked = s.add("bad", -60, "storm", block_score=-50, block_seconds=3600)
        assert blocked.blocked(time.time()) and not store.degraded
        s.add("good", 30)

        own_redis_server.stop()
        answers = []
        errors_before = store.errors
        for i in range(50):  # requests keep being answered, no exception
            answers.append(s.get("bad"))
            s.add(f"new{i}", -1, "outage")
        assert store.degraded and store.metrics()["degraded"] == 1.0
        assert all(a.blocked(time.time()) for a in answers)  # fail-closed: the known block holds
        assert s.get("good").score == pytest.approx(30, abs=0.01)  # mirrored before the outage
        assert s.get("new3").score == pytest.approx(-1, abs=0.01)  # local updates during the outage
        # calls must not each try the dead Redis: one probe per retry_seconds, the rest go straight to the fallback
        assert 1 <= store.errors - errors_before < 25 and store.fallback_calls >= 100
        engine = ReputationEngine(store, Config())  # what the server's gate calls: answers, no exception
        decision = s.run(engine.decide("bad"))
        assert decision.blocked and not decision.allow
        verdict, rep = s.run(engine.observe("198.51.100.77", {"short_lived_2s": 5}))
        assert verdict.delta == -30 and rep is not None and rep.score == pytest.approx(-30)
        assert store.errors >= 1 and store.fallback_calls >= 100
        assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
        assert sum("degraded" in r.message for r in caplog.records) == 1  # one log line, not one per call

        own_redis_server.start()  # a new, empty Redis on the same port
        time.sleep(0.3)
        deadline = time.monotonic() + 10
        while store.degraded and time.monotonic() < deadline:
            s.add("probe", -1)
            time.sleep(0.05)
        assert not store.degraded, "the store must resume Redis"
        assert any("recovered" in r.message for r in caplog.records)
        assert s.add("after", -7).score == pytest.approx(-7)
        s.run(store.drain())
        assert store.replayed >= 50 and not store.journal  # the outage's updates reached the new Redis
        assert s.store.primary is store.primary
        assert s.run(store.primary.get("new3")).score == pytest.approx(-1, abs=0.01)
        assert store.primary.script_reloads >= 1  # a fresh server knows no scripts: NOSCRIPT -> reload
        r = redis.Redis(port=own_redis_server.port)
        assert r.exists(store.primary.keys_for("after")[0]) == 1
        assert store.metrics()["degraded_events_total"] == 1


def test_fail_open_admits_while_degraded(own_redis_server: RedisServer) -> None:
    with _failover(own_redis_server, "open") as s:
        assert s.add("bad", -60, block_score=-50, block_seconds=3600).blocked(time.time())
        own_redis_server.stop()
        assert not s.get("bad").blocked(time.time())
        assert s.store.degraded


def test_slow_redis_times_out_into_fallback(own_redis_server: RedisServer) -> None:
    admin = redis.Redis(port=own_redis_server.port)
    with _failover(own_redis_server) as s:
        s.add("k", -10)
        admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        started = time.monotonic()
        rep = s.get("k")
        assert time.monotonic() - started < 1.0 and s.store.degraded
        assert rep.score == pytest.approx(-10, abs=0.01)
        time.sleep(1.7)
        s.add("k", -1)
        s.add("k", -1)
        assert not s.store.degraded


def test_concurrent_tasks_through_failover(redis_server: RedisServer) -> None:
    with SyncStore(open_store(f"{redis_server.url}?prefix={_prefix()}&timeout=5")) as s:
        async def go() -> None:
            await asyncio.gather(*(s.store.add("c", 0.125, now=50.0) for _ in range(400)))

        s.run(go())
        assert s.get("c", now=50.0).score == 50.0
        assert not s.store.degraded
        s.clear()


def test_load_equals_set_for_repeats_and_expired_hashes(redis_server: RedisServer) -> None:
    """A bulk load equals one ``set`` per row, also for a member repeated within one script call and across calls,
    and for a member whose hash expired while it is still ranked (guards any load-script shortcut)."""
    from stormguard.scoring.stores import MemoryStore

    r = redis.Redis.from_url(redis_server.url)
    with SyncStore(open_store(f"{redis_server.url}?prefix={_prefix()}&failover=0")) as s:
        ref = SyncStore(MemoryStore(s.store.options, max_keys=1000))
        for st in (s, ref):
            st.add("gone", -60, "storm", now=100.0, block_score=-50, block_seconds=300)
        r.delete(s.store.keys_for("gone")[0])  # its TTL ran out; the member is still in :z and :x
        ref.delete("gone")
        rows = [("dup", -10.0), ("a", 5.0), ("dup", 30.0), ("gone", 7.0), ("dup", -99.5)]
        for chunk in (1000, 2):  # repeats of a new member within one script call, then across calls
            s.load_scores(rows, now=200.0, chunk=chunk)
            ref.load_scores(rows, now=200.0)
            for k in ("dup", "a", "gone"):
                assert s.get(k, now=300.0) == ref.get(k, now=300.0), (chunk, k)
        assert s.get("dup", now=200.0).reasons == ("model",) * 4 and s.get("dup", now=200.0).score == -99.5
        assert [x.key for x in s.top(3, now=300.0)] == [x.key for x in ref.top(3, now=300.0)]
        s.clear()


def test_top_prunes_only_members_still_without_hash(redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with SyncStore(open_store(f"{redis_server.url}?prefix={_prefix()}&failover=0")) as s:
        store: RedisStore = s.store
        s.add("live", -5, now=100.0)
        _, z, x, _ = store.keys_for("live")
        r.zadd(z, {"stale": -1e9})
        r.zadd(x, {"stale": 0})
        assert [e.key for e in s.top(5, now=100.0)] == ["live"]
        assert r.zscore(z, "stale") is None and r.zscore(x, "stale") is None
        # a prune racing with a write: the member got its hash back, so it must stay ranked
        assert s.run(store._evalsha("prune", [z, x], [store.tag("live") + ":k:", "live"])) == 0
        assert r.zscore(z, "live") is not None
        s.clear()


# --- batch load: score-sorted windows, prepared ranks and TTLs, expiry tokens -----------------------------------

def _edge_rows(n: int, seed: int) -> list[tuple[str, float]]:
    """Unsorted continuous scores plus every boundary of ``rank`` and ``life`` (0, tiny, ±0.5, the idle/decay
    crossover near ±1.19, ±100, clamped values); a non-ASCII key too."""
    import random

    rnd = random.Random(seed)
    rows = [(f"r{i}", rnd.uniform(-100.0, 100.0)) for i in range(n)]
    edges = [0.0, -0.0, 1e-13, -1e-13, 0.5, -0.5, 0.5000001, -0.5000001, 1.19, -1.19, 1.2, -1.2, 100.0, -100.0,
             250.0, -250.0, 99.99999999999999]
    rows += [(f"e{i}", v) for i, v in enumerate(edges)] + [("grüße-ключ", -42.5)]
    rnd.shuffle(rows)
    return rows


def _state(r: redis.Redis, store: RedisStore, key: str) -> tuple[Any, ...]:
    h, z, _, _ = store.keys_for(key)
    raw = {b"b": b"0", b"u": b"0", **r.hgetall(h)}  # a load does not write b / u when they are unset
    return ({f: float(v) if f in (b"s", b"t", b"b", b"u") else v for f, v in raw.items()}, r.zscore(z, key))


@pytest.mark.parametrize("window", [2_000_000, 333, 0])
def test_load_equals_sets_bit_for_bit(redis_server: RedisServer, window: int) -> None:
    """Unsorted input, loaded in score-sorted windows (or streamed), leaves exactly what one ``set`` per row
    leaves: the same hash fields, the same rank to the last bit (ranks and TTLs are prepared in Python for the
    common case and by Lua otherwise: a clock ahead, a long block, reasons to keep), the same TTLs."""
    r = redis.Redis.from_url(redis_server.url)
    rows = _edge_rows(2000, seed=window)
    with SyncStore(open_store(f"{redis_server.url}?prefix={_prefix()}&failover=0")) as loaded, \
            SyncStore(open_store(f"{redis_server.url}?prefix={_prefix()}&failover=0")) as setted:
        for s in (loaded, setted):  # prior state: reasons, a long block, a clock ahead of the load, a short block
            s.add("r5", -60, "storm", now=100.0, block_score=-50, block_seconds=300)
            s.block("r6", 200.0 + 30 * 86400, "manual", now=150.0)
            s.add("r7", 10, "good", now=500.0)
            for i in range(6):
                s.add("e3", -1, f"x{i}", now=150.0)
        started = time.monotonic()
        assert loaded.load_scores(rows, now=200.0, sort_window=window) == len(rows)
        for k, v in rows:
            setted.set(k, v, "model", now=200.0)
        for k, _ in rows:
            assert _state(r, loaded.store, k) == _state(r, setted.store, k), k
            ttl_l, ttl_s = (r.ttl(s.store.keys_for(k)[0]) for s in (loaded, setted))
            # Both wrote the same logical TTL; Redis counts it down in real time from each write, and the two
            # writes and reads lie within what this test has spent so far (whole seconds, rounded down by TTL).
            spent = math.ceil(time.monotonic() - started) + 1
            assert abs(ttl_l - ttl_s) <= spent, (k, ttl_l, ttl_s, spent)
        assert r.ttl(loaded.store.keys_for("r6")[0]) > 29 * 86400  # the block outlives the score: Lua's path
        assert loaded.get("e3", now=300.0).reasons == ("x3", "x4", "x5", "model")
        assert float(r.hget(loaded.store.keys_for("r7")[0], "t")) == 500.0  # the clock ahead of the load is kept
        for worst in (True, False):
            assert [e.key for e in loaded.top(50, worst, now=1e5)] == [e.key for e in setted.top(50, worst, now=1e5)]
        assert loaded.count() == setted.count() == len(rows)
        loaded.clear()
        setted.clear()


def test_load_buffers_at_most_one_window(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from stormguard.scoring.stores import redis_store

    sizes: list[int] = []
    real = redis_store._Loader.window

    async def spy(self: Any, keys: list[str], vals: Any, sort: bool) -> int:
        sizes.append(len(keys))
        return await real(self, keys, vals, sort)

    monkeypatch.setattr(redis_store._Loader, "window", spy)
    with SyncStore(open_store(f"{redis_server.url}?prefix={_prefix()}&failover=0")) as s:
        rows = ((f"w{i}", float((i * 7919) % 201 - 100)) for i in range(2500))
        assert s.load_scores(rows, now=10.0, sort_window=1000) == 2500
        assert sizes == [1000, 1000, 500]
        sizes.clear()
        assert s.load_scores(((f"w{i}", 1.0) for i in range(2500)), now=10.0, sort_window=0, chunk=100, depth=4) \
            == 2500
        assert max(sizes) <= 400  # streaming: one round trip's worth
        assert s.get("w17", now=10.0).score == 1.0 and s.count() == 2500
        with pytest.raises(ValueError, match="NaN"):
            s.load_scores([("ok", 1.0), ("nan", float("nan"))], now=10.0)
        s.clear()


def test_load_tokens_keep_the_ranking_bounded(redis_server: RedisServer) -> None:
    """A load gives ``:x`` one token per script call instead of one entry per key; due tokens are swept like
    single entries, at most four members per write: expired members leave ``:z``, live ones get their own entry,
    and the token goes with its emptied list."""
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with SyncStore(open_store(f"{redis_server.url}?prefix={_prefix()}&failover=0&idle_ttl=60")) as s:
        store: RedisStore = s.store
        _, z, x, _ = store.keys_for("a")
        rows = [(f"m{i}", 0.25 * (i % 3)) for i in range(25)]  # |score| <= 0.5: idle TTL, token due at 160
        s.load_scores(rows, now=100.0, chunk=10)
        tokens = r.zrange(x, 0, -1, withscores=True)
        assert len(tokens) == 3 and all(m.startswith("\x1e") and m.endswith("@100.0") and v == 160.0
                                        for m, v in tokens)
        assert sorted(m for t, _ in tokens for m in r.lrange(x + t, 0, -1)) == sorted(k for k, _ in rows)
        for i in range(20):  # m0..m19 expire; m20..m24 stay (as if rewritten or a clock behind Redis's)
            r.delete(store.keys_for(f"m{i}")[0])
        s.add("a", -1, now=150.0)  # nothing due yet
        assert r.zcard(z) == 26 and r.zcard(x) == 4
        s.add("a", -1, now=161.0)
        assert r.zcard(z) == 26 - 4  # one write checks four members, no more
        for _ in range(10):
            s.add("a", -1, now=161.0)
        assert sorted(r.zrange(z, 0, -1)) == sorted(["a", *(f"m{i}" for i in range(20, 25))])
        assert sorted(r.zrange(x, 0, -1)) == sorted(["a", *(f"m{i}" for i in range(20, 25))])  # own entries now
        assert not [k for k in r.scan_iter(match=x.replace("{", "\\{").replace("}", "\\}") + "*") if k != x]
        assert [e.key for e in s.top(10, now=161.0)][0] == "a"
        # a client key that merely looks like a token is swept as a key
        s.add("\x1efake", -1, now=161.0)
        r.delete(store.keys_for("\x1efake")[0])
        for _ in range(3):  # the live members m20..m24 come first (re-queued at their real expiry)
            s.add("a", -1, now=1e9)
        assert r.zscore(z, "\x1efake") is None and r.zscore(x, "\x1efake") is None
        s.clear()
        assert not list(r.scan_iter(match=x.replace("{", "\\{").replace("}", "\\}") + "*"))


def test_loads_drain_due_tokens_and_skip_rewritten_members(redis_server: RedisServer) -> None:
    """Reloading the same keys with no other writes keeps ``:x`` and the token lists bounded: a load checks as many
    due members as it writes, and a member written since its token's load is left to that later write's entry."""
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with SyncStore(open_store(f"{redis_server.url}?prefix={_prefix()}&failover=0&idle_ttl=60")) as s:
        store: RedisStore = s.store
        _, z, x, _ = store.keys_for("a")
        lists = x.replace("{", "\\{").replace("}", "\\}") + "\x1e*"
        rows = [(f"m{i}", 0.25) for i in range(30)]
        for day in range(1, 8):  # due after 60 s, reloaded every 100 s (the hashes live: real TTL 60 s)
            s.load_scores(rows, now=100.0 * day, chunk=10)
            assert r.zcard(z) == 30
            # the previous load's tokens were due and every member was rewritten since: dropped, no own entries
            assert r.zcard(x) == 3 and all(m.endswith(f"@{100.0 * day}") for m in r.zrange(x, 0, -1))
            assert len(list(r.scan_iter(match=lists))) == 3
        r.delete(*(store.keys_for(f"m{i}")[0] for i in range(10)))  # ten expire
        s.load_scores(rows[10:], now=900.0, chunk=10)
        assert sorted(r.zrange(z, 0, -1)) == sorted(k for k, _ in rows[10:])  # the first due token held m0..m9
        assert r.zcard(x) == 3  # 20 keys loaded, 20 of 30 due members checked: one old token left
        for day in range(10, 20):  # steady state: the backlog does not grow
            s.load_scores(rows[10:], now=100.0 * day, chunk=10)
            backlog = sum(r.llen(k) for k in r.scan_iter(match=lists))
            assert r.zcard(z) == 20 and r.zcard(x) <= 3 and backlog <= 30
        s.clear()
