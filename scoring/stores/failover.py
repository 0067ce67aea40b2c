"""A Redis store that never lets Redis trouble reach a request handler.

Every hot-path call is bounded by ``timeout``. The first failure switches the store to *degraded*: one warning is
logged, a counter and a gauge change, and calls are answered by a local :class:`~.memory.MemoryStore` that has been
mirroring what Redis returned (so known blocks survive the outage in ``fail_mode="closed"``; ``"open"`` admits
everyone while degraded). Redis is probed again at most every ``retry_seconds``; the first success ends the
degraded mode (logged once). Updates made during the outage are journalled (bounded, ``journal_max``) and replayed
to Redis in the background, in order and with their own timestamps, once it is back; beyond the bound the oldest
are dropped and counted (``journal_dropped_total``), never blocking a request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from stormguard.scoring.reputation import Reputation
from stormguard.scoring.stores.base import ReputationStore
from stormguard.scoring.stores.memory import MemoryStore

log = logging.getLogger("stormguard.scoring.store")

FAIL_MODES = ("open", "closed")


class FailoverStore(ReputationStore):
    """``primary`` (Redis) with a local ``fallback``; see the module docstring for the behaviour."""

    def __init__(self, primary: ReputationStore, fallback: MemoryStore, timeout: float = 0.05,
                 retry_seconds: float = 1.0, fail_mode: str = "closed", journal_max: int = 100_000) -> None:
        super().__init__(primary.options)
        if fail_mode not in FAIL_MODES:
            raise ValueError(f"fail_mode must be one of {FAIL_MODES}, got {fail_mode!r}")
        self.primary = primary
        self.fallback = fallback
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.fail_mode = fail_mode
        self.scheme = primary.scheme
        self.degraded = False
        self._next_probe = 0.0
        self.errors = 0
        self.degraded_events = 0
        self.fallback_calls = 0
        self.journal: deque[tuple[Any, ...]] = deque()
        self.journal_max = journal_max
        self.journal_dropped = 0
        self.replayed = 0
        self._replay_task: asyncio.Task[None] | None = None

    # -- state changes ---------------------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        self.errors += 1
        self._next_probe = time.monotonic() + self.retry_seconds
        if not self.degraded:
            self.degraded = True
            self.degraded_events += 1
            log.warning("reputation store degraded: %s unreachable (%s: %s); serving from local memory, fail-%s",
                        self.primary.scheme, type(exc).__name__, exc or "timeout", self.fail_mode)

    def _ok(self) -> None:
        if self.degraded:
            self.degraded = False
            log.warning("reputation store recovered: %s answers again; replaying %d journalled updates",
                        self.primary.scheme, len(self.journal))
            if self.journal and (self._replay_task is None or self._replay_task.done()):
                self._replay_task = asyncio.ensure_future(self._replay())

    def _journal(self, args: tuple[Any, ...]) -> None:
        if len(self.journal) >= self.journal_max:
            self.journal.popleft()
            self.journal_dropped += 1
        self.journal.append(args)

    async def _replay(self) -> None:
        """Send the outage's updates to Redis, oldest first; stop (keeping the rest) at the first failure."""
        while self.journal and not self.degraded:
            args = self.journal[0]
            try:
                async with asyncio.timeout(max(self.timeout, 1.0)):
                    await self.primary.update(*args)
            except Exception as exc:  # noqa: BLE001 - Redis went away again: degrade, keep the journal
                self._fail(exc)
                return
            self.journal.popleft()
            self.replayed += 1

    async def drain(self) -> None:
        """Wait for a running replay (tests, shutdown)."""
        if self._replay_task is not None:
            await self._replay_task

    def _view(self, rep: Reputation) -> Reputation:
        if self.degraded and self.fail_mode == "open" and rep.block_until:
            return dataclasses.replace(rep, block_until=0.0)
        return rep

    async def _call(self, call: Callable[[], Awaitable[Any]], local: Callable[[], Awaitable[Any]],
                    timeout: float | None) -> Any:
        if self.degraded and time.monotonic() < self._next_probe:
            self.fallback_calls += 1
            return await local()
        if self.degraded:  # this caller probes; the others keep using the fallback meanwhile
            self._next_probe = time.monotonic() + self.retry_seconds
        try:
            if timeout is None:
                result = await call()
            else:
                async with asyncio.timeout(timeout):
                    result = await call()
        except Exception as exc:  # noqa: BLE001 - any Redis trouble means "use the fallback"
            self._fail(exc)
            self.fallback_calls += 1
            return await local()
        self._ok()
        return result

    def _mirror(self, rep: Reputation) -> Reputation:
        if rep.score or rep.block_until or rep.reasons or rep.key in self.fallback._data:
            self.fallback.put(rep)
        return rep

    # -- API ---------------------------------------------------------------------------------------------------
    async def get(self, key: str, now: float | None = None) -> Reputation:
        now = self.now() if now is None else now

        async def remote() -> Reputation:
            return self._mirror(await self.primary.get(key, now))

        rep = await self._call(remote, lambda: self.fallback.get(key, now), self.timeout)
        return self._view(rep)

    async def update(self, key: str, op: str, value: float = 0.0, reason: str = "", now: float | None = None,
                     block_score: float | None = None, block_seconds: float = 0.0) -> Reputation:
        now = self.now() if now is None else now
        args = (key, op, value, reason, now, block_score, block_seconds)

        async def remote() -> Reputation:
            return self._mirror(await self.primary.update(*args))

        async def local() -> Reputation:
            self._journal(args)
            return await self.fallback.update(*args)

        return self._view(await self._call(remote, local, self.timeout))

    async def delete(self, key: str) -> bool:
        local = await self.fallback.delete(key)
        remote = await self._call(lambda: self.primary.delete(key), lambda: _const(local), self.timeout)
        return bool(remote or local)

    async def top(self, n: int = 10, worst: bool = True, now: float | None = None) -> list[Reputation]:
        return await self._call(lambda: self.primary.top(n, worst, now), lambda: self.fallback.top(n, worst, now),
                                None if not self.timeout else max(self.timeout, 5.0))

    async def blocks(self, now: float | None = None, limit: int = 1_000_000) -> list[Reputation]:
        return await self._call(lambda: self.primary.blocks(now, limit), lambda: self.fallback.blocks(now, limit),
                                None if not self.timeout else max(self.timeout, 5.0))

    async def load_scores(self, scores: Iterable[tuple[str, float]], now: float | None = None,
                          reason: str = "model") -> int:
        """Not wrapped: a batch job must learn that its load did not reach Redis."""
        return await self.primary.load_scores(scores, now, reason)

    async def count(self) -> int:
        return await self._call(self.primary.count, self.fallback.count, max(self.timeout, 5.0))

    async def clear(self) -> None:
        await self.fallback.clear()
        await self.primary.clear()

    async def close(self) -> None:
        if self._replay_task is not None and not self._replay_task.done():
            self._replay_task.cancel()
        try:
            await self.primary.close()
        except Exception:  # noqa: BLE001 - closing a dead connection is not an error worth raising
            pass

    def metrics(self) -> dict[str, float]:
        return {"degraded": float(self.degraded), "redis_errors_total": float(self.errors),
                "degraded_events_total": float(self.degraded_events),
                "fallback_calls_total": float(self.fallback_calls),
                "script_reloads_total": float(getattr(self.primary, "script_reloads", 0)),
                "journal_pending": float(len(self.journal)), "journal_dropped_total": float(self.journal_dropped),
                "journal_replayed_total": float(self.replayed),
                **{f"fallback_{k}": v for k, v in self.fallback.metrics().items()}}


async def _const(value: Any) -> Any:
    return value
