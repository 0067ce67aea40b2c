"""Circuit breaker — the outermost defence layer: when the server itself is failing, shed load before any work.

States: *closed* → *open* when, over a **full** window, at least ``min_requests`` outcomes were seen and the
failure share reaches ``threshold`` (a full window, so that a few errors right after start or recovery cannot trip
it); *open* → *half-open* after ``open_timeout``; *half-open* admits at most ``probes`` requests at once and refuses
the rest (pybreaker/aiobreaker admit everyone, which re-creates the stampede); a probe success closes it, a probe
failure re-opens it. Failures are handler errors (5xx or exceptions) and event-loop lag (:mod:`loopmon`, through
:meth:`CircuitBreaker.record_failure`). Store outages are NOT failures of this server: the reputation store's
``fail_mode`` and the hub's pacing cover them, and a 503 caused by the store is marked ``ctx.refused`` — counting
them here opened the breaker during a Redis outage and kept refusing for ``open_timeout`` after Redis was back.
The clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from stormguard.server.context import get_context

REFUSED, NORMAL, PROBE = 0, 1, 2


class CircuitBreaker:
    """Bucketed sliding-window breaker; O(buckets) memory, O(1) per request (O(buckets) per evaluation)."""

    def __init__(self, *, window: float = 10.0, buckets: int = 10, threshold: float = 0.5, min_requests: int = 20,
                 open_timeout: float = 30.0, probes: int = 3, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.window = window
        self.buckets = max(1, buckets)
        self.bucket_len = window / self.buckets
        self.threshold = threshold
        self.min_requests = min_requests
        self.open_timeout = open_timeout
        self.probes = probes
        self.clock = clock
        self.on_change = on_change or (lambda state: None)
        self.state = "closed"
        self._epochs = [-1] * self.buckets
        self._total = [0] * self.buckets
        self._fail = [0] * self.buckets
        self._since = clock()          # start of the current closed period: "full window" is measured from here
        self._opened_at = 0.0
        self._in_flight = 0

    # -- window -------------------------------------------------------------------------------------------------
    def _add(self, failed: bool) -> None:
        idx = int(self.clock() / self.bucket_len)
        slot = idx % self.buckets
        if self._epochs[slot] != idx:
            self._epochs[slot], self._total[slot], self._fail[slot] = idx, 0, 0
        self._total[slot] += 1
        if failed:
            self._fail[slot] += 1

    def counts(self) -> tuple[int, int]:
        """(outcomes, failures) within the window."""
        idx = int(self.clock() / self.bucket_len)
        total = fail = 0
        for slot in range(self.buckets):
            if idx - self.buckets < self._epochs[slot] <= idx:
                total += self._total[slot]
                fail += self._fail[slot]
        return total, fail

    def _reset_window(self) -> None:
        self._epochs = [-1] * self.buckets
        self._since = self.clock()

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.on_change(state)

    # -- decisions ----------------------------------------------------------------------------------------------
    def allow(self) -> int:
        """REFUSED, NORMAL or PROBE (a probe must be reported back through :meth:`record` with ``probe=True``)."""
        if self.state == "closed":
            return NORMAL
        if self.state == "open":
            if self.clock() - self._opened_at < self.open_timeout:
                return REFUSED
            self._set("half_open")
            self._in_flight = 0
        if self._in_flight < self.probes:
            self._in_flight += 1
            return PROBE
        return REFUSED

    def record(self, success: bool | None, probe: bool = False) -> None:
        """Outcome of an admitted request; ``None`` releases a probe slot without a verdict (client went away)."""
        if probe:
            self._in_flight = max(0, self._in_flight - 1)
            if self.state == "half_open" and success is not None:
                if success:
                    self._close()
                else:
                    self._open()
                return
        if success is None or self.state != "closed":
            return
        self._add(not success)
        if not success:
            self._evaluate()

    def record_failure(self, kind: str = "error") -> None:
        """A failure not tied to one request (event-loop lag, store error): counts in the window; re-opens half-open."""
        if self.state == "half_open":
            self._open()
        elif self.state == "closed":
            self._add(True)
            self._evaluate()

    def _evaluate(self) -> None:
        if self.clock() - self._since < self.window:
            return
        total, fail = self.counts()
        if total >= self.min_requests and fail >= self.threshold * total:
            self._open()

    def _open(self) -> None:
        self._opened_at = self.clock()
        self._set("open")

    def _close(self) -> None:
        self._reset_window()
        self._set("closed")


class BreakerMiddleware:
    """Pure-ASGI wrapper: asks the breaker, records the outcome at ``http.response.start`` (no buffering)."""

    def __init__(self, app: Any, *, breaker: CircuitBreaker, refuser: Any, exempt_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.breaker = breaker
        self.refuser = refuser
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        breaker = self.breaker
        ticket = breaker.allow()
        if ticket == REFUSED:
            if await self.refuser.refuse(scope, send, layer="breaker", reason="breaker"):
                return
            ticket = NORMAL
        probe = ticket == PROBE
        recorded = False
        ctx = get_context(scope)

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal recorded
            if not recorded and message["type"] == "http.response.start":
                recorded = True
                # an inner layer's 503 refusal is the defence working, not the server failing
                breaker.record(message["status"] < 500 or ctx.refused is not None, probe)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if not recorded:
                recorded = True
                breaker.record(False, probe)
            raise
        finally:
            if not recorded:
                breaker.record(None, probe)
