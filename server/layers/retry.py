"""The ``retry:`` chooser: how long a client should wait before reconnecting, for streams and refusals alike.

Formula (milliseconds)::

    nominal = base[reason] × tier_factor[tier] × (1 + load_gain × load) × (degrade_factor if degraded else 1)
    retry   = clamp(nominal × U(1 − j, 1 + j), min_ms, max_ms)        j = jitter (shutdown_jitter for "shutdown")

``load`` is in [0, 1] (streams / capacity, event-loop lag, breaker state — see ``Runtime.load``). Why: a fixed
``retry:`` synchronises a storm (everyone cut at once comes back at once); multiplicative jitter spreads the herd,
the load term stretches it while the server is struggling, and tiers let trusted clients come back first. A
*shutdown* uses a wide jitter so a restart's reconnect wave is spread over several seconds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping


class RetryChooser:
    """Pure, deterministic given its ``rng``: tests inject ``random.Random(seed)``."""

    def __init__(self, base_ms: Mapping[str, int], tier_factor: Mapping[str, float], *, load_gain: float = 3.0,
                 degrade_factor: float = 2.0, jitter: float = 0.25, shutdown_jitter: float = 0.9,
                 min_ms: int = 500, max_ms: int = 600000, rng: random.Random | None = None) -> None:
        self.base_ms = dict(base_ms)
        self.tier_factor = dict(tier_factor)
        self.load_gain = load_gain
        self.degrade_factor = degrade_factor
        self.jitter = jitter
        self.shutdown_jitter = shutdown_jitter
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.rng = rng or random.Random()

    def nominal(self, reason: str, tier: str = "neutral", load: float = 0.0, degraded: bool = False) -> float:
        """The un-jittered value (exposed for tests and dashboards)."""
        base = self.base_ms.get(reason, self.base_ms.get("stream", 3000))
        load = min(max(load, 0.0), 1.0)
        value = base * self.tier_factor.get(tier, 1.0) * (1.0 + self.load_gain * load)
        return value * (self.degrade_factor if degraded else 1.0)

    def choose(self, reason: str, tier: str = "neutral", load: float = 0.0, degraded: bool = False) -> int:
        """A jittered ``retry:`` in milliseconds."""
        j = self.shutdown_jitter if reason == "shutdown" else self.jitter
        value = self.nominal(reason, tier, load, degraded) * self.rng.uniform(1.0 - j, 1.0 + j)
        return int(min(max(value, self.min_ms), self.max_ms))

    @staticmethod
    def seconds(ms: int) -> int:
        """``Retry-After`` is whole seconds: round up so a client never comes back early."""
        return max(1, math.ceil(ms / 1000))
