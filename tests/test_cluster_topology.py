"""The reputation store on the session's Redis Cluster while its topology changes under load: a manual failover
(``CLUSTER FAILOVER`` on a replica) and a slot migration (ASK while migrating, MOVED after). A writer thread keeps
updating throughout; every update must succeed (no error reaches the caller) and every accepted update must be in
the final scores (no lost write). Bounded by count and deadline; no timing assertions."""

from __future__ import annotations

import threading
import time
import uuid

from redis_server import RedisClusterNodes
from stormguard.scoring.stores import open_store
from stormguard.scoring.stores.sync import SyncStore

KEYS = 200          # clients written round robin; each gets at most 90 adds of +1 (scores clamp at 100)
MAX_OPS = KEYS * 90


class Writer(threading.Thread):
    """Adds +1 to client keys round robin until stopped or MAX_OPS; counts accepted writes per key and errors."""

    def __init__(self, store: SyncStore) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.accepted = [0] * KEYS
        self.errors: list[str] = []
        self.ops = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.ops < MAX_OPS:
            i = self.ops % KEYS
            self.ops += 1
            try:
                self.store.add(f"203.0.113.{i}", 1, "t", now=100.0)
            except Exception as exc:  # noqa: BLE001 - counted and reported by the test
                self.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                self.accepted[i] += 1

    def wait_ops(self, n: int, timeout: float = 60.0) -> None:
        """Until ``n`` more writes were made (progress, not time)."""
        target = self.ops + n
        deadline = time.monotonic() + timeout
        while self.ops < target and self.is_alive():
            assert time.monotonic() < deadline, f"writer stalled at {self.ops} ops"
            time.sleep(0.01)


def test_store_keeps_every_write_through_failover_and_migration(redis_cluster: RedisClusterNodes) -> None:
    prefix = "topo" + uuid.uuid4().hex[:6]
    url = f"{redis_cluster.url}?cluster=1&prefix={prefix}&failover=0&timeout=5"
    tag = "{" + prefix + "}"
    slot = redis_cluster.slot(tag)
    with SyncStore(open_store(url)) as store:
        writer = Writer(store)
        writer.start()
        try:
            writer.wait_ops(300)
            master = redis_cluster.owner(slot)
            promoted = redis_cluster.failover(master)           # the replica takes over mid-run
            assert redis_cluster.owner(slot) == promoted
            writer.wait_ops(300)
            dst = next(port for port in redis_cluster.masters() if port != promoted)

            def during(phase: str) -> None:                     # writes while ASK / after MOVED
                writer.wait_ops(200)

            redis_cluster.migrate_slot(slot, dst, between=during)
            assert redis_cluster.owner(slot) == dst
            writer.wait_ops(200)
        finally:
            writer.stop.set()
            writer.join(60)
        assert not writer.is_alive()
        assert writer.errors == [], writer.errors[:5]
        assert writer.ops >= 1500
        got = [store.get(f"203.0.113.{i}", now=100.0).score for i in range(KEYS)]
        assert got == [float(n) for n in writer.accepted]
        assert store.count() == KEYS
        store.clear()
