"""Prometheus metrics, one registry per app (several apps in one process — tests — must not collide).

Label children are resolved once and cached: ``Counter.labels()`` takes a lock and a dict lookup, which the hot
path does not need to pay on every request. Refusals — the one counter a flood drives at the request rate — are
plain ints (:class:`RefusalCounts`) that the registry reads at scrape time: no lock, no ``Counter.inc`` per refusal.
The event loop is the only writer and ``/metrics`` is served on the same loop, so a scrape never sees a torn value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Tally:
    """One mutable int: the hot path holds it and does ``tally.n += 1``."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class RefusalCounts:
    """``rate_limit_rejected_total{layer, reason}`` as plain ints, exported by a custom collector at scrape time."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.tallies: dict[tuple[str, str], Tally] = {}

    def tally(self, layer: str, reason: str) -> Tally:
        """The counter cell of one (layer, reason), created at 0 on first use."""
        t = self.tallies.get((layer, reason))
        if t is None:
            t = self.tallies[(layer, reason)] = Tally()
        return t

    def value(self, layer: str, reason: str) -> int:
        t = self.tallies.get((layer, reason))
        return 0 if t is None else t.n

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.documentation, labels=["layer", "reason"])]

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=["layer", "reason"])
        for (layer, reason), t in list(self.tallies.items()):
            family.add_metric([layer, reason], t.n)
        return [family]


class Metrics:
    """Every metric the server exports; names follow issue 4 (``http_sse_connections_total`` …)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if registry is None:  # process_resident_memory_bytes etc.: the storm lab and dashboards read RSS here
            ProcessCollector(registry=r)
        self.connections = Counter("http_sse_connections", "SSE streams opened", ["tier"], registry=r)
        self.rejected = RefusalCounts("rate_limit_rejected", "Requests refused by a defence layer")
        r.register(self.rejected)
        self.shadow = Counter("stormguard_shadow_refusals", "Refusals decided but not enforced (shadow mode)",
                              ["layer", "reason"], registry=r)
        self.degraded = Counter("stormguard_degraded", "Requests admitted past a soft threshold", ["layer"],
                                registry=r)
        self.active = Gauge("stormguard_active_streams", "Open SSE streams", ["tier"], registry=r)
        self.breaker_state = Gauge("stormguard_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
                                   registry=r)
        self.breaker_transitions = Counter("stormguard_breaker_transitions", "Breaker state changes", ["to"],
                                           registry=r)
        self.evictions = Counter("stormguard_evictions", "Streams closed by the server", ["reason"], registry=r)
        self.challenges = Counter("stormguard_challenges", "Proof-of-work challenge outcomes (issued, passed, "
                                  "failed, lifted, cookie_invalid)", ["outcome"], registry=r)
        self.loop_lag = Gauge("stormguard_event_loop_lag_seconds", "Last measured event-loop lag", registry=r)
        self.loop_lag_max = Gauge("stormguard_event_loop_lag_max_seconds", "Largest lag since start", registry=r)
        self.malformed = Counter("stormguard_malformed_headers", "Ignored malformed header values", ["header"],
                                 registry=r)
        self.published = Counter("stormguard_events_published", "Events accepted by POST /publish", registry=r)
        self.audit_dropped = Counter("stormguard_audit_dropped", "Audit records dropped (queue full)", registry=r)
        self.limiter_entries = Gauge("stormguard_limiter_entries", "Buckets held by the limiter", ["kind"],
                                     registry=r)
        self.limiter_evictions = Counter("stormguard_limiter_evictions", "Limiter entries dropped to stay bounded",
                                         ["kind", "lossless"], registry=r)
        self.fast_refusals = Gauge("stormguard_fastpath_refusals", "Blocked-client refusals answered by the fast "
                                   "path (also in rate_limit_rejected_total)", registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """Cached ``metric.labels(*labels)``."""
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def reject(self, layer: str, reason: str) -> None:
        self.rejected.tally(layer, reason).n += 1

    def set_gauge_function(self, gauge: Gauge, fn: Callable[[], float], *labels: str) -> None:
        (gauge.labels(*labels) if labels else gauge).set_function(fn)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
