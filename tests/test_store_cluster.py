"""The Redis store against a real three-node Redis Cluster: every script's keys share a slot, the shards spread
over the nodes, and scripts are reloaded on whichever node lost them."""

from __future__ import annotations

import redis
from redis_server import RedisClusterNodes
from stormguard.scoring.stores import open_store
from stormguard.scoring.stores.sync import SyncStore


def test_store_on_cluster(redis_cluster: RedisClusterNodes) -> None:
    url = f"{redis_cluster.url}?cluster=1&shards=32&prefix=cl&failover=0&timeout=2"
    with SyncStore(open_store(url)) as s:
        rep = s.add("198.51.100.1", -60, "storm", now=100.0, block_score=-50, block_seconds=300)
        assert rep.block_until == 400.0 and s.get("198.51.100.1", now=100.0) == rep
        n = s.load_scores(((f"10.0.{i >> 8}.{i & 255}", (i % 200) - 100) for i in range(5000)), now=100.0)
        assert n == 5000 and s.count() == 5001
        assert s.get("10.0.0.5", now=100.0).score == -95
        worst = s.top(3, now=100.0)
        assert [r.score for r in worst] == [-100, -100, -100]
        assert s.top(1, worst=False, now=100.0)[0].score == 99
        # keys really live on every node
        per_node = [redis.Redis(port=n["port"]).dbsize() for n in redis_cluster.nodes() if n["master"]]
        assert all(c > 0 for c in per_node), per_node
        for p in redis_cluster.ports:
            redis.Redis(port=p).script_flush()
        assert s.add("198.51.100.1", -1, now=100.0).score == -61  # NOSCRIPT on its node -> reloaded
        assert s.delete("198.51.100.1") is True and s.get("198.51.100.1", now=100.0).score == 0
        s.clear()
        assert s.count() == 0
