"""Every per-client structure of the server, its configured bound, its size and its evictions, in one place.

Why: memory per distinct client must stop growing once the configured caps are reached (issue 17 found ~1.6 KB per
new address growing in a straight line, caps notwithstanding: the online features' cap was silently replaced by a
default). Each structure registers here with ``(size, bound, evicted)`` callables; ``/metrics`` exports
``stormguard_client_state_entries{structure}``, ``stormguard_client_state_bound{structure}`` and
``stormguard_client_state_evictions_total{structure}``, and tests assert ``entries <= bound`` for all of them.

| structure        | bound (setting)                 | eviction policy                         |
|------------------|---------------------------------|-----------------------------------------|
| live_features    | ``live_max_keys``               | least recently seen client first        |
| live_consumed    | ``live_max_keys``               | least recently penalised window first   |
| live_queue       | ``live_queue_size``             | new events dropped (counted)            |
| gate_blocks      | ``block_cache_size``            | least recently used block first         |
| limiter_ip/token | ``limiter_max_entries``         | full buckets first, then oldest         |
| store            | store ``max_keys``              | least recently used key first           |
| store_journal    | store ``journal_max``           | oldest outage update first (counted)    |
| model_pending    | ``max_pending`` of the scorer   | new keys dropped (counted)              |
| audit_queue      | ``audit_queue_size``            | new records dropped (counted)           |
| fastpath_audit   | ``max_audit_keys``              | cleared when full                       |
| quota_open       | open streams                    | an entry leaves with its last stream    |
| identity_peers   | 4096 (only with trusted proxies)| least recently seen peer first          |
| fastpath_peers   | 4096 (only with trusted proxies)| least recently seen peer first          |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Size = Callable[[], float]


class ClientStateBounds:
    """Prometheus collector over the registered per-client structures (read at scrape time)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[Size, Size, Size]] = {}

    def add(self, name: str, size: Size, bound: Size | float, evicted: Size | None = None) -> None:
        bound_fn = bound if callable(bound) else (lambda b=float(bound): b)
        self.entries[name] = (size, bound_fn, evicted or (lambda: 0.0))

    def snapshot(self) -> dict[str, tuple[float, float, float]]:
        """``{structure: (entries, bound, evictions)}``."""
        return {name: (float(s()), float(b()), float(e())) for name, (s, b, e) in self.entries.items()}

    def collect(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        size = GaugeMetricFamily("stormguard_client_state_entries", "Entries held by a per-client structure",
                                 labels=["structure"])
        bound = GaugeMetricFamily("stormguard_client_state_bound", "Configured bound of a per-client structure",
                                  labels=["structure"])
        evicted = CounterMetricFamily("stormguard_client_state_evictions", "Entries a per-client structure dropped "
                                      "or refused to stay within its bound", labels=["structure"])
        for name, (s, b, e) in self.snapshot().items():
            size.add_metric([name], s)
            bound.add_metric([name], b)
            evicted.add_metric([name], e)
        return [size, bound, evicted]
