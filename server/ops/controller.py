"""Dynamic quotas (seed 4.3): the server watches its own refusals and connection rate and moves the quota table.

Every ``interval`` seconds (default 30) :meth:`QuotaController.evaluate` samples two cumulative counters — refusals
(``rate_limit_rejected_total``) and streams opened (``http_sse_connections_total``) — and decides:

* **downgrade** (level ``streams`` + 1: tier stream quotas and tenant pools one step down) when the rejection ratio
  over ``window`` (refusals / (refusals + streams opened), default 5 min) has stayed above ``reject_ratio`` (0.1)
  for ``reject_hold`` seconds (2 min);
* **tighten** (level ``rates`` + 1: new connections per address and per token one step down) when the streams
  opened in the last interval exceed ``surge_factor`` (1.1) × the p95 of the previous intervals (at least
  ``min_history`` of them, and at least ``surge_min`` streams, so an idle server's 0 → 3 is not a surge);
* **step back** (each raised level − 1) once the service has been healthy — ratio below ``healthy_ratio`` (0.05,
  lower than the trigger: hysteresis), no surge, no firing alert — for ``cooldown`` seconds; the cooling period
  restarts after every step, so the way back is as gradual as the way down.

After any step of a kind, that kind does not step again (either way) for ``reject_hold`` seconds. How far one step
goes, the floor and the most steps are the table's :class:`~stormguard.server.ops.quota_table.StepPolicy`.

The same actions come from outside through :meth:`alert` (Alertmanager's webhook, ``POST /admin/alerts``): a newly
firing ``StormguardRejectionsHigh`` downgrades, ``StormguardConnectionSurge`` tightens (each alert once, by its
fingerprint: Alertmanager's repeated notifications do not step again), and a resolution steps that kind back one
level and restarts the cooling period for the rest.

The clock is injected (``clock``), and nothing here sleeps except :meth:`run`, so tests drive decisions directly.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from stormguard.server.ops.quota_table import QuotaTable

ALERT_KINDS = {"StormguardRejectionsHigh": "streams", "StormguardConnectionSurge": "rates"}
ACTION_OF = {"streams": "downgrade", "rates": "tighten"}


@dataclass(frozen=True)
class Decision:
    """One controller step, as audited, exported and shown on the dashboard."""

    time: float                 # wall-clock (UNIX) time
    action: str                 # downgrade | tighten | step_back
    kind: str                   # streams | rates
    level_from: int
    level_to: int
    signal: str                 # rejection_ratio | connection_surge | healthy | alert:<name>
    value: float                # the signal's value when decided
    source: str                 # controller | alertmanager

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class QuotaController:
    """Decides quota levels from ``signals() -> (refusals_total, streams_opened_total)`` (cumulative counts)."""

    def __init__(self, table: QuotaTable, signals: Callable[[], tuple[float, float]], *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 interval: float = 30.0, window: float = 300.0, reject_ratio: float = 0.1,
                 reject_hold: float = 120.0, healthy_ratio: float = 0.05, surge_factor: float = 1.1,
                 surge_min: float = 10.0, history: int = 120, min_history: int = 10, cooldown: float = 300.0,
                 on_decision: Callable[[Decision], None] | None = None, max_decisions: int = 100) -> None:
        if healthy_ratio > reject_ratio:
            raise ValueError("healthy_ratio must not exceed reject_ratio (hysteresis)")
        self.table = table
        self.signals = signals
        self.clock = clock
        self.wall = wall
        self.interval = interval
        self.window = window
        self.reject_ratio = reject_ratio
        self.reject_hold = reject_hold
        self.healthy_ratio = healthy_ratio
        self.surge_factor = surge_factor
        self.surge_min = surge_min
        self.min_history = min_history
        self.cooldown = cooldown
        self.on_decision = on_decision or (lambda d: None)
        self.decisions: deque[Decision] = deque(maxlen=max_decisions)
        self.rates: deque[float] = deque(maxlen=history)      # streams opened per interval, oldest first
        self._samples: deque[tuple[float, float, float]] = deque()   # (t, refusals, opened)
        self.ratio = 0.0
        self.last_rate = 0.0
        self.surge_p95: float | None = None
        self.high_since: float | None = None
        self.calm_since: float | None = None
        self.last_step: dict[str, float] = {}
        self.alerts: dict[str, str] = {}        # firing alert fingerprint -> kind
        self.evaluations = 0

    # -- signals ------------------------------------------------------------------------------------------------
    def _sample(self, now: float) -> tuple[float, float | None]:
        """Record the counters; (rejection ratio over the window, streams opened since the previous sample)."""
        refusals, opened = self.signals()
        prev = self._samples[-1] if self._samples else None
        self._samples.append((now, refusals, opened))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()          # keep one sample at or before the window's start as its base
        t0, r0, o0 = self._samples[0]
        d_ref, d_open = max(0.0, refusals - r0), max(0.0, opened - o0)
        ratio = d_ref / (d_ref + d_open) if d_ref + d_open > 0 else 0.0
        rate = None if prev is None else max(0.0, opened - prev[2])
        return ratio, rate

    def state(self) -> dict[str, Any]:
        return {"rejection_ratio": round(self.ratio, 6), "streams_last_interval": self.last_rate,
                "surge_p95": self.surge_p95, "high_since": self.high_since, "calm_since": self.calm_since,
                "firing_alerts": sorted(set(self.alerts.values())), "levels": dict(self.table.levels),
                "evaluations": self.evaluations, "interval": self.interval,
                "decisions": [d.as_dict() for d in list(self.decisions)[-20:]]}

    # -- decisions ----------------------------------------------------------------------------------------------
    def _held(self, kind: str, now: float) -> bool:
        last = self.last_step.get(kind)
        return last is not None and now - last < self.reject_hold

    def _step(self, kind: str, delta: int, signal: str, value: float, source: str, now: float) -> Decision | None:
        before = self.table.levels[kind]
        if not self.table.set_level(kind, before + delta):
            return None
        self.last_step[kind] = now
        d = Decision(time=self.wall(), action=ACTION_OF[kind] if delta > 0 else "step_back", kind=kind,
                     level_from=before, level_to=self.table.levels[kind], signal=signal, value=round(value, 6),
                     source=source)
        self.decisions.append(d)
        self.on_decision(d)
        return d

    def evaluate(self, now: float | None = None) -> list[Decision]:
        """Sample the signals and take the steps they call for (the background task calls this every interval)."""
        now = self.clock() if now is None else now
        self.evaluations += 1
        ratio, rate = self._sample(now)
        self.ratio = ratio
        out: list[Decision] = []
        surge = False
        if rate is not None:
            self.last_rate = rate
            if len(self.rates) >= self.min_history:
                self.surge_p95 = p95(list(self.rates))
                surge = rate >= self.surge_min and rate > self.surge_factor * self.surge_p95
            self.rates.append(rate)
        if ratio > self.reject_ratio:
            self.high_since = now if self.high_since is None else self.high_since
            if now - self.high_since >= self.reject_hold and not self._held("streams", now):
                d = self._step("streams", +1, "rejection_ratio", ratio, "controller", now)
                if d is not None:
                    out.append(d)
                self.high_since = now            # another full hold before the next step
        else:
            self.high_since = None
        if surge and not self._held("rates", now):
            d = self._step("rates", +1, "connection_surge", rate or 0.0, "controller", now)
            if d is not None:
                out.append(d)
        healthy = ratio < self.healthy_ratio and not surge and not self.alerts
        if not healthy:
            self.calm_since = None
        else:
            self.calm_since = now if self.calm_since is None else self.calm_since
            if now - self.calm_since >= self.cooldown:
                for kind in self.table.levels:
                    if self.table.levels[kind] > 0 and not self._held(kind, now):
                        d = self._step(kind, -1, "healthy", ratio, "controller", now)
                        if d is not None:
                            out.append(d)
                self.calm_since = now            # the next step back needs another cooling period
        return out

    def alert(self, name: str, status: str, fingerprint: str, now: float | None = None) -> Decision | None:
        """One alert of an Alertmanager notification. Unknown names are ignored (None)."""
        kind = ALERT_KINDS.get(name)
        if kind is None:
            return None
        now = self.clock() if now is None else now
        key = fingerprint or name
        if status == "firing":
            if key in self.alerts:
                return None                      # a repeated notification of an alert already acted on
            self.alerts[key] = kind
            self.calm_since = None
            return self._step(kind, +1, f"alert:{name}", 1.0, "alertmanager", now)
        if self.alerts.pop(key, None) is None:
            return None
        self.calm_since = now                    # cooling starts now for whatever is left
        if kind in self.alerts.values():
            return None                          # another alert of this kind still fires
        return self._step(kind, -1, f"alert:{name}", 0.0, "alertmanager", now)

    async def run(self) -> None:
        """Evaluate every ``interval`` seconds (a background task; cancel to stop)."""
        self.evaluate()
        while True:
            await asyncio.sleep(self.interval)
            self.evaluate()
