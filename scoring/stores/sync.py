"""A blocking facade over any store, for the command line, notebooks and benchmarks.

It owns one private event loop for its whole life: ``redis.asyncio`` connections belong to the loop that opened
them, so a fresh ``asyncio.run`` per call would strand the connection pool.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from stormguard.scoring.stores.base import ReputationStore


class SyncStore:
    """``SyncStore(open_store(url)).get("1.2.3.4")`` — every coroutine method of the store, called synchronously."""

    def __init__(self, store: ReputationStore) -> None:
        self.store = store
        self._runner = asyncio.Runner()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._runner.run(attr(*args, **kwargs))

        return call

    def run(self, coro: Any) -> Any:
        """Run any coroutine on this facade's loop (e.g. a batch of concurrent calls)."""
        return self._runner.run(coro)

    def close(self) -> None:
        try:
            self._runner.run(self.store.close())
        finally:
            self._runner.close()

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
