"""The SSE hub: topics, fan-out, replay, heartbeats and shutdown for every open stream.

Stream ids: an event on a single-topic stream has id ``topic:seq@epoch``; on a multi-topic stream the id carries
the stream's position in every topic, ``a:12,b:7@epoch``, so the one ``Last-Event-ID`` a browser echoes restores
all positions. Streams also receive an id-only message right at the start (it sets the EventSource's last id
without dispatching an event), so a client cut off before its first event still resumes without loss.

Timers are not per stream: one ticker walks all streams to queue heartbeats and enforce idle/lifetime limits —
per-stream timers are objects the garbage collector must walk (DESIGN.md: GC stalls at 10k streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from stormguard.server.history import Event, HistoryBackend

if TYPE_CHECKING:
    from stormguard.server.sse import Stream

TOPIC_RE = re.compile(r"^[A-Za-z0-9_.\-/]{1,64}$")


def format_id(positions: dict[str, int], topics: tuple[str, ...], epoch: str) -> str:
    return ",".join(f"{t}:{positions[t]}" for t in topics) + "@" + epoch


def parse_last_event_id(text: str, epoch: str) -> dict[str, int] | None:
    """Positions per topic from a ``Last-Event-ID``; None when malformed. Another epoch → replay all retained."""
    body, sep, their_epoch = text.strip().rpartition("@")
    if not sep or not body:
        return None
    positions: dict[str, int] = {}
    for part in body.split(","):
        topic, sep, seq = part.rpartition(":")
        if not sep or not TOPIC_RE.match(topic) or not seq.isdigit() or len(seq) > 18:
            return None
        positions[topic] = int(seq)
    if their_epoch != epoch:
        return dict.fromkeys(positions, 0)
    return positions


class Hub:
    """Topic registry and fan-out. Synchronous publish: subscribe+replay and publish never interleave."""

    def __init__(self, history: HistoryBackend, *, heartbeat: float = 15.0,
                 on_evict: Callable[[Stream, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.history = history
        self.heartbeat = heartbeat
        self.on_evict = on_evict or (lambda stream, reason: None)
        self.clock = clock
        self.streams: set[Stream] = set()
        self.subscribers: dict[str, set[Stream]] = {}
        self.closing = False
        self._ticker: asyncio.Task[None] | None = None

    # -- streams ------------------------------------------------------------------------------------------------
    def attach(self, stream: Stream, positions: dict[str, int] | None) -> list[bytes]:
        """Register ``stream`` and return the replay frames it missed (gap notices included)."""
        history = self.history
        chunks: list[bytes] = []
        missed: list[Event] = []
        for topic in stream.topics:                       # positions first: every frame's id names all topics
            if positions is not None and topic in positions:
                after = positions[topic]
                events, gap = history.since(topic, after)
                stream.positions[topic] = after
                if gap:
                    chunks.append(b'event: gap\ndata: {"topic": "%s", "after": %d}\n\n' % (topic.encode(), after))
                missed.extend(events)
            else:
                stream.positions[topic] = history.last_seq(topic)
        missed.sort(key=lambda ev: ev.ts)                 # topics interleaved in publish order (stable per topic)
        chunks.extend(stream.frame(ev) for ev in missed)
        self.streams.add(stream)
        for topic in stream.topics:
            self.subscribers.setdefault(topic, set()).add(stream)
        return chunks

    def detach(self, stream: Stream) -> None:
        self.streams.discard(stream)
        for topic in stream.topics:
            subs = self.subscribers.get(topic)
            if subs is not None:
                subs.discard(stream)
                if not subs:
                    del self.subscribers[topic]

    def publish(self, topic: str, data: str, event: str | None = None, pub_id: str | None = None) -> tuple[Event, bool]:
        """Append to history and fan out; (event, duplicate) — a repeated publisher id is not published twice."""
        if pub_id is not None:
            existing = self.history.find(topic, pub_id)
            if existing is not None:
                return existing, True
        ev = self.history.append(topic, data, event, pub_id)
        for stream in tuple(self.subscribers.get(topic, ())):
            if not stream.push(ev):
                self.evict(stream, "slow")      # its bounded send queue is full: drop it, it resumes by id
        return ev, False

    def evict(self, stream: Stream, reason: str) -> None:
        if stream.close_reason is None:
            stream.close(reason)
            self.on_evict(stream, reason)

    # -- background ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick_loop(), name="stormguard-hub-ticker")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None

    async def _tick_loop(self) -> None:
        interval = max(0.05, min(1.0, self.heartbeat / 2))
        while True:
            await asyncio.sleep(interval)
            self.tick(self.clock())

    def tick(self, now: float) -> None:
        """Heartbeats for streams quiet for ``heartbeat`` s; idle and lifetime eviction by tier."""
        for stream in tuple(self.streams):
            limits = stream.limits
            if limits is not None:
                if limits.max_lifetime and now - stream.started >= limits.max_lifetime:
                    self.evict(stream, "lifetime")
                    continue
                if limits.idle_timeout and now - stream.last_data >= limits.idle_timeout:
                    self.evict(stream, "idle")
                    continue
            if now - stream.last_write >= self.heartbeat:
                stream.ping()

    def begin_shutdown(self, streams: Iterable[Stream] | None = None) -> None:
        """Every open stream gets a final jittered ``retry:`` and closes; new streams are refused (idempotent)."""
        self.closing = True
        for stream in tuple(streams if streams is not None else self.streams):
            self.evict(stream, "shutdown")
