"""A blocking facade over any store, for the command line, notebooks and benchmarks.

It owns one private event loop for its whole life, running in its own thread: ``redis.asyncio`` connections belong
to the loop that opened them (a fresh ``asyncio.run`` per call would strand the connection pool), and a caller that
already runs a loop in its thread — a Jupyter kernel — could not run a second one there.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

from stormguard.scoring.stores.base import ReputationStore


class SyncStore:
    """``SyncStore(open_store(url)).get("1.2.3.4")`` — every coroutine method of the store, called synchronously."""

    def __init__(self, store: ReputationStore) -> None:
        self.store = store
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stormguard-syncstore", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self.run(attr(*args, **kwargs))

        return call

    def run(self, coro: Any) -> Any:
        """Run any coroutine on this facade's loop (e.g. a batch of concurrent calls) and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
