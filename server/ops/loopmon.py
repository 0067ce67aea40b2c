"""Event-loop lag monitor: a sleeping task that measures how late it wakes up.

Why: under a storm the first symptom is not errors but a starved loop (GC pauses, too many handshakes); every
stream then misses heartbeats at once. Lag above a threshold is reported as a breaker failure so load is shed
before clients time out and reconnect together. One task per process, cost ~nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from stormguard.server.tasks import cancel_tasks


class LoopMonitor:
    """Samples lag every ``interval`` s; ``on_lag(lag)`` fires for samples above ``threshold``."""

    def __init__(self, *, interval: float = 0.25, threshold: float = 0.5,
                 on_lag: Callable[[float], None] | None = None,
                 on_sample: Callable[[float], None] | None = None) -> None:
        self.interval = interval
        self.threshold = threshold
        self.on_lag = on_lag or (lambda lag: None)
        self.on_sample = on_sample or (lambda lag: None)
        self.lag = 0.0
        self.max_lag = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stormguard-loopmon")

    async def stop(self) -> None:
        await cancel_tasks(self._task)
        self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            self.lag = max(0.0, loop.time() - start - self.interval)
            self.max_lag = max(self.max_lag, self.lag)
            self.on_sample(self.lag)
            if self.lag > self.threshold:
                self.on_lag(self.lag)
