"""The dynamic block threshold: ``T = base × (1 − fail_weight·fail_rate + heat_weight·heat)`` (DESIGN.md).

Inputs: the global connection-failure rate over a sliding window (default 5 min, per-second buckets, so memory is
bounded by the window and not by traffic) and attack *heat* per country and per ASN — the share of a group's
recent connections that were rejected or penalised, with exponential forgetting. The threshold is recomputed every
``interval_seconds`` (default 30 s), not per request, so the hot path reads a float; a manual ``override`` wins.

Sign convention, as written in DESIGN.md with ``base = block_score`` (−50): a high failure rate moves T toward 0
(blocks sooner while the service struggles); heat moves T away from 0. Operators who want hot origins blocked
*sooner* set a negative ``heat_weight``; the weights are configuration, not code.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque

from stormguard.scoring.geo import GeoLookup

from stormguard.config import ThresholdConfig


class FailureWindow:
    """Failed / total connections over the last ``window`` seconds, in one-second buckets."""

    def __init__(self, window: float = 300.0) -> None:
        self.window = window
        self._buckets: deque[list[int]] = deque()  # [second, total, failed]
        self.total = 0
        self.failed = 0

    def _expire(self, now: float) -> None:
        horizon = int(now - self.window)
        while self._buckets and self._buckets[0][0] <= horizon:
            _, t, f = self._buckets.popleft()
            self.total -= t
            self.failed -= f

    def record(self, failed: bool, now: float) -> None:
        sec = int(now)
        if not self._buckets or self._buckets[-1][0] < sec:
            self._buckets.append([sec, 0, 0])
        bucket = self._buckets[-1]  # late events (clock skew) count in the newest bucket
        bucket[1] += 1
        bucket[2] += int(failed)
        self.total += 1
        self.failed += int(failed)
        self._expire(now)

    def rate(self, now: float) -> float:
        self._expire(now)
        return self.failed / self.total if self.total else 0.0


class HeatMap:
    """Per-group (country or ASN) decayed counts of bad and all connections; heat = bad share in [0, 1]."""

    def __init__(self, half_life: float = 300.0, min_events: float = 5.0, max_groups: int = 100_000) -> None:
        self.lam = math.log(2) / half_life if half_life > 0 else 0.0
        self.min_events = min_events
        self.max_groups = max_groups
        self._groups: OrderedDict[object, list[float]] = OrderedDict()  # group -> [bad, total, t]

    def record(self, group: object, bad: bool, now: float) -> None:
        g = self._groups.get(group)
        if g is None:
            g = self._groups[group] = [0.0, 0.0, now]
            if len(self._groups) > self.max_groups:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(group)
            f = math.exp(-self.lam * max(0.0, now - g[2]))
            g[0] *= f
            g[1] *= f
            g[2] = max(g[2], now)
        g[0] += float(bad)
        g[1] += 1.0

    def heat(self, group: object, now: float) -> float:
        g = self._groups.get(group)
        if g is None:
            return 0.0
        total = g[1] * math.exp(-self.lam * max(0.0, now - g[2]))
        if total < self.min_events:
            return 0.0
        return g[0] / g[1]

    def snapshot(self, now: float) -> dict[object, float]:
        return {k: h for k in self._groups if (h := self.heat(k, now)) > 0}


class DynamicThreshold:
    """Feeds on connection outcomes; ``value(country, asn)`` is the current block score for such a client."""

    def __init__(self, cfg: ThresholdConfig | None = None, base: float = -50.0, geo: GeoLookup | None = None,
                 clock: object = time.time) -> None:
        self.cfg = cfg or ThresholdConfig()
        self.base = base
        self.geo = geo
        self.failures = FailureWindow(self.cfg.window_seconds)
        self.heatmap = HeatMap(self.cfg.heat_half_life)
        self.fail_rate = 0.0
        self._heat: dict[object, float] = {}
        self._last_tick = float("-inf")
        self._clock = clock

    def record(self, ip: str | None, *, failed: bool = False, bad: bool = False, now: float | None = None,
               country: str | None = None, asn: int | None = None) -> None:
        """One connection: ``failed`` (it errored) counts for the failure rate, ``bad`` (rejected/penalised) heats
        its country and ASN (looked up when a GeoIP database is configured and they are not given)."""
        now = self._now(now)
        self.failures.record(failed, now)
        if ip and self.geo is not None and country is None and asn is None:
            info = self.geo.lookup(ip)
            country, asn = info.country, info.asn
        if country:
            self.heatmap.record(("cc", country), bad, now)
        if asn:
            self.heatmap.record(("asn", asn), bad, now)
        self.maybe_tick(now)

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now  # type: ignore[operator]

    def maybe_tick(self, now: float | None = None) -> bool:
        now = self._now(now)
        if now - self._last_tick >= self.cfg.interval_seconds:
            self.tick(now)
            return True
        return False

    def tick(self, now: float | None = None) -> None:
        """Recompute the inputs (the server calls this every interval; ``record`` does it when due)."""
        now = self._now(now)
        self.fail_rate = self.failures.rate(now)
        self._heat = self.heatmap.snapshot(now)
        self._last_tick = now

    def heat(self, country: str | None = None, asn: int | None = None) -> float:
        """The hotter of the client's country and ASN (as of the last tick)."""
        return max(self._heat.get(("cc", country), 0.0) if country else 0.0,
                   self._heat.get(("asn", asn), 0.0) if asn else 0.0)

    def compute(self, fail_rate: float, heat: float) -> float:
        c = self.cfg
        t = self.base * (1.0 - c.fail_weight * fail_rate + c.heat_weight * heat)
        lo, hi = min(c.min_threshold, c.max_threshold), max(c.min_threshold, c.max_threshold)
        return min(hi, max(lo, t))

    def value(self, country: str | None = None, asn: int | None = None) -> float:
        if self.cfg.override is not None:
            return float(self.cfg.override)
        return self.compute(self.fail_rate, self.heat(country, asn))

    async def run(self) -> None:
        """Tick forever every ``interval_seconds`` (a server background task; cancel to stop)."""
        while True:
            self.tick()
            await asyncio.sleep(self.cfg.interval_seconds)
