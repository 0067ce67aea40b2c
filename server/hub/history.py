"""Event history behind a small interface: memory (synchronous) or Redis Streams (asynchronous, shared).

The backend owns sequence numbers, so that with Redis several processes agree on them (XADD ids), and an
``epoch`` that changes when numbering restarts (a fresh in-memory hub), so an old ``Last-Event-ID`` is never
mistaken for a position in the new numbering.

Two shapes, because the memory backend must stay free of awaits (publish and subscribe+replay never interleave
there) while a shared store cannot be: :class:`HistoryBackend` (memory) and :class:`AsyncHistoryBackend`
(``server/history_redis.py``). The hub tells them apart by ``is_async``.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

_NEWLINES = re.compile(r"\r\n|\r|\n")


class Event:
    """One published event; its wire frame for single-topic streams is built once and shared by all of them."""

    __slots__ = ("topic", "seq", "data", "event", "ts", "pub_id", "_frame", "_body")

    def __init__(self, topic: str, seq: int, data: str, event: str | None, ts: float, pub_id: str | None) -> None:
        self.topic, self.seq, self.data, self.event, self.ts, self.pub_id = topic, seq, data, event, ts, pub_id
        self._frame: bytes | None = None
        self._body: str | None = None

    def body(self) -> str:
        """``event:``/``data:`` lines (without the id), newline-split as the SSE grammar requires (cached)."""
        if self._body is None:
            head = f"event: {self.event}\n" if self.event else ""
            self._body = head + "".join(f"data: {line}\n" for line in _NEWLINES.split(self.data)) + "\n"
        return self._body

    def frame(self, epoch: str) -> bytes:
        """Wire bytes with the single-topic id ``topic:seq@epoch`` (cached)."""
        if self._frame is None:
            self._frame = f"id: {self.topic}:{self.seq}@{epoch}\n{self.body()}".encode()
        return self._frame


class HistoryUnavailable(Exception):
    """The shared history store cannot be reached: publishing answers 503, new streams are paced."""


class HistoryBackend(Protocol):
    """What the hub needs from history storage."""

    epoch: str

    def append(self, topic: str, data: str, event: str | None = None, pub_id: str | None = None) -> Event: ...

    def since(self, topic: str, after: int) -> tuple[list[Event], bool]:
        """Events of ``topic`` with seq > ``after`` and whether some in between are no longer retained (a gap)."""
        ...

    def last_seq(self, topic: str) -> int: ...

    def find(self, topic: str, pub_id: str) -> Event | None:
        """A retained event published with this publisher id (idempotent publish)."""
        ...


class MemoryHistory:
    """Per-topic deque bounded by count (``max_events``) and age (``max_age`` seconds)."""

    def __init__(self, *, max_events: int = 1000, max_age: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_events = max_events
        self.max_age = max_age
        self.clock = clock
        self.epoch = secrets.token_hex(3)
        self._events: dict[str, deque[Event]] = {}
        self._seq: dict[str, int] = {}
        self._pub: dict[str, dict[str, Event]] = {}

    def append(self, topic: str, data: str, event: str | None = None, pub_id: str | None = None) -> Event:
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        ev = Event(topic, seq, data, event, self.clock(), pub_id)
        dq = self._events.setdefault(topic, deque())
        dq.append(ev)
        if pub_id is not None:
            self._pub.setdefault(topic, {})[pub_id] = ev
        self._prune(topic, dq)
        return ev

    def _prune(self, topic: str, dq: deque[Event]) -> None:
        horizon = self.clock() - self.max_age
        while dq and (len(dq) > self.max_events or dq[0].ts < horizon):
            old = dq.popleft()
            if old.pub_id is not None:
                self._pub.get(topic, {}).pop(old.pub_id, None)

    def since(self, topic: str, after: int) -> tuple[list[Event], bool]:
        dq = self._events.get(topic)
        last = self._seq.get(topic, 0)
        if after >= last:
            return [], False
        if not dq:
            return [], True
        self._prune(topic, dq)
        if not dq:
            return [], True
        first = dq[0].seq
        start = max(0, after + 1 - first)
        return list(dq)[start:], after + 1 < first

    def last_seq(self, topic: str) -> int:
        return self._seq.get(topic, 0)

    def find(self, topic: str, pub_id: str) -> Event | None:
        return self._pub.get(topic, {}).get(pub_id)


class AsyncHistoryBackend(Protocol):
    """A shared history (Redis Streams): several processes append, each process runs one reader for fan-out.

    Every coroutine raises :class:`HistoryUnavailable` when the store cannot be reached.
    """

    epoch: str
    is_async: bool      # True

    async def publish(self, topic: str, data: str, event: str | None = None,
                      pub_id: str | None = None) -> tuple[Event, bool]:
        """Append (or find the retained event of this publisher id); (event, duplicate). No local fan-out."""
        ...

    async def fetch(self, plan: dict[str, int | None]) -> dict[str, tuple[list[Event], bool, int]]:
        """Per topic: ``(events after plan[topic], gap, last seq)``; ``None`` asks only for the last seq."""
        ...

    async def read(self, cursors: dict[str, int]) -> list[Event]:
        """Block (bounded) until events after ``cursors`` arrive or :meth:`wake` is called; in publish order."""
        ...

    async def wake(self) -> None:
        """Make a blocked :meth:`read` return, so it picks up a changed set of topics."""
        ...

    async def aclose(self) -> None: ...
