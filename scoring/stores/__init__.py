"""Reputation stores, chosen by URL as in the ``limits`` library.

``memory://?max_keys=100000`` — embedded, bounded LRU (the default).
``redis://host:6379/0?prefix=sg&shards=16&timeout=0.05&fail_mode=closed`` (also ``rediss://`` and
``unix:///path/redis.sock``) — shared across instances, with a local fallback while Redis is unreachable;
``redis://node:7000/0?cluster=1&shards=64`` talks to a Redis Cluster (keys spread over ``shards`` hash tags).

Query parameters override the ``[store]`` config section; Redis connection parameters that redis-py understands
(``password``, ``ssl_cert_reqs``...) pass through to it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from stormguard.scoring.stores.base import ReputationStore, StoreOptions
from stormguard.scoring.stores.memory import MemoryStore

from stormguard.config import Config, ReputationConfig, StoreConfig

__all__ = ["MemoryStore", "ReputationStore", "StoreOptions", "open_store", "split_store_url", "SCHEMES"]

SCHEMES = ("memory", "redis", "rediss", "unix")
_OWN = {"max_keys": int, "prefix": str, "shards": int, "timeout": float, "retry_seconds": float,
        "fail_mode": str, "idle_ttl": float, "failover": str, "max_connections": int,
        "journal_max": int, "cluster": str}


def split_store_url(url: str) -> tuple[str, dict[str, Any]]:
    """(URL without stormguard's own query parameters, those parameters typed)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"unknown store URL scheme {parts.scheme!r} in {url!r} (use one of {', '.join(SCHEMES)})")
    own: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in _OWN:
            try:
                own[k] = _OWN[k](v)
            except ValueError:
                raise ValueError(f"store URL parameter {k}={v!r} is not a {_OWN[k].__name__}") from None
        else:
            rest.append((k, v))
    return urlunsplit(parts._replace(query=urlencode(rest))), own


def store_options(rep: ReputationConfig, store: StoreConfig, idle_ttl: float | None = None) -> StoreOptions:
    return StoreOptions(lam=rep.lam, max_reasons=rep.max_reasons, initial_score=rep.initial_score,
                        idle_ttl=store.idle_ttl if idle_ttl is None else idle_ttl)


def open_store(url: str | None = None, config: Config | None = None, failover: bool = True) -> ReputationStore:
    """The store for ``url`` (default: ``config.store.url``). Redis stores come wrapped in a
    :class:`~stormguard.scoring.stores.failover.FailoverStore` unless ``failover=False`` (or ``?failover=0``)."""
    config = config or Config()
    url = url or config.store.url
    bare, own = split_store_url(url)
    sc = config.store
    options = store_options(config.reputation, sc, own.get("idle_ttl"))
    max_keys = own.get("max_keys", sc.max_keys)
    scheme = urlsplit(bare).scheme
    if scheme == "memory":
        return MemoryStore(options, max_keys=max_keys)
    from stormguard.scoring.stores.redis_store import RedisStore

    timeout = own.get("timeout", sc.timeout)
    primary = RedisStore.from_url(bare, options, prefix=own.get("prefix", sc.prefix),
                                  shards=own.get("shards", sc.shards), timeout=timeout,
                                  max_connections=own.get("max_connections", sc.max_connections),
                                  cluster=own.get("cluster", "0").lower() in ("1", "true", "yes", "on"))
    if not failover or own.get("failover", "1").lower() in ("0", "false", "no", "off"):
        return primary
    from stormguard.scoring.stores.failover import FailoverStore

    return FailoverStore(primary, MemoryStore(options, max_keys=max_keys), timeout=timeout,
                         retry_seconds=own.get("retry_seconds", sc.retry_seconds),
                         fail_mode=own.get("fail_mode", sc.fail_mode),
                         journal_max=own.get("journal_max", sc.journal_max))
