"""The SSE hub: topics, fan-out, replay, heartbeats and shutdown for every open stream.

Stream ids: an event on a single-topic stream has id ``topic:seq@epoch``; on a multi-topic stream the id carries
the stream's position in every topic, ``a:12,b:7@epoch``, so the one ``Last-Event-ID`` a browser echoes restores
all positions. Streams also receive an id-only message right at the start (it sets the EventSource's last id
without dispatching an event), so a client cut off before its first event still resumes without loss.

Timers are not per stream: one ticker walks all streams to queue heartbeats and enforce idle/lifetime limits —
per-stream timers are objects the garbage collector must walk (DESIGN.md: GC stalls at 10k streams).

With a shared (asynchronous) history — Redis Streams, ``history_redis.py`` — publishing only appends; one reader
task per process blocks on ``XREAD`` over the topics that have local subscribers and fans out in memory, so Redis
sees one round trip per publish and per new stream, never one per event per client. A new stream registers before
its replay is fetched (nothing published meanwhile is lost) and the writer drops an event at or below the stream's
position (nothing is sent twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from stormguard.server.hub.backlog import SLOW_READER, SlowReaderGuard
from stormguard.server.hub.history import AsyncHistoryBackend, Event, HistoryBackend, HistoryUnavailable
from stormguard.server.tasks import cancel_tasks

if TYPE_CHECKING:
    from stormguard.server.hub.sse import Stream

TOPIC_RE = re.compile(r"^[A-Za-z0-9_.\-/]{1,64}$")
log = logging.getLogger("stormguard.server.hub.topics")


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
        if not sep or not TOPIC_RE.match(topic) or not seq.isdigit() or len(seq) > 19:   # Redis ids: 19 digits
            return None
        positions[topic] = int(seq)
    if their_epoch != epoch:
        return dict.fromkeys(positions, 0)
    return positions


class Hub:
    """Topic registry and fan-out. Synchronous publish: subscribe+replay and publish never interleave."""

    def __init__(self, history: HistoryBackend | AsyncHistoryBackend, *, heartbeat: float = 15.0,
                 on_evict: Callable[[Stream, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, slow_reader: SlowReaderGuard | None = None) -> None:
        self.history = history
        self.slow_reader = slow_reader if slow_reader is not None and slow_reader.enabled else None
        self.heartbeat = heartbeat
        self.on_evict = on_evict or (lambda stream, reason: None)
        self.clock = clock
        self.streams: set[Stream] = set()
        self.subscribers: dict[str, set[Stream]] = {}
        self.closing = False
        self._ticker: asyncio.Task[None] | None = None
        self.shared = bool(getattr(history, "is_async", False))
        self._reader: asyncio.Task[None] | None = None
        self._cursors: dict[str, int] = {}       # shared history: per topic, the last id fanned out here

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
        self._register(stream)
        return chunks

    def _register(self, stream: Stream) -> None:
        self.streams.add(stream)
        for topic in stream.topics:
            self.subscribers.setdefault(topic, set()).add(stream)

    async def open(self, stream: Stream, positions: dict[str, int] | None) -> list[bytes]:
        """:meth:`attach` for any backend; raises :class:`HistoryUnavailable` when a shared history is down."""
        if not self.shared:
            return self.attach(stream, positions)
        history: AsyncHistoryBackend = self.history  # type: ignore[assignment]
        plan = {t: positions[t] if positions is not None and t in positions else None for t in stream.topics}
        self._register(stream)                          # first: whatever the reader fans out meanwhile is queued
        try:
            fetched = await history.fetch(plan)
        except BaseException:
            self.detach(stream)
            raise
        chunks: list[bytes] = []
        missed: list[Event] = []
        new_topics = False
        for topic in stream.topics:
            events, gap, last = fetched[topic]
            after = plan[topic]
            position = last if after is None else after
            stream.positions[topic] = position
            if gap:
                chunks.append(b'event: gap\ndata: {"topic": "%s", "after": %d}\n\n' % (topic.encode(), position))
            missed.extend(events)
            if topic not in self._cursors:
                # the reader starts this topic here; a topic it reads already is covered: its cursor was read
                # before this stream registered, and the replay above reached at least that far
                self._cursors[topic] = position
                new_topics = True
        missed.sort(key=lambda ev: ev.seq)              # stream ids are time based: publish order across topics
        chunks.extend(stream.frame(ev) for ev in missed)
        if new_topics and stream.close_reason is None:
            with contextlib.suppress(HistoryUnavailable):
                await history.wake()                    # the reader's XREAD now includes the new topic(s)
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
                self.evict(stream, SLOW_READER)      # its bounded send queue is full: drop it, it resumes by id
        return ev, False

    async def publish_async(self, topic: str, data: str, event: str | None = None,
                            pub_id: str | None = None) -> tuple[Event, bool]:
        """:meth:`publish` for any backend. Shared history: append only — the reader of every process (this one
        included) fans the event out, so all processes deliver it the same way, with the same id."""
        if not self.shared:
            return self.publish(topic, data, event, pub_id)
        return await self.history.publish(topic, data, event, pub_id)  # type: ignore[misc,union-attr]

    def fan_out(self, events: Iterable[Event]) -> None:
        """Events read from the shared history, in order: to every local subscriber, once."""
        cursors = self._cursors
        for ev in events:
            cursor = cursors.get(ev.topic)
            if cursor is None or ev.seq <= cursor:
                continue
            cursors[ev.topic] = ev.seq
            for stream in tuple(self.subscribers.get(ev.topic, ())):
                if not stream.push(ev):
                    self.evict(stream, SLOW_READER)

    def evict(self, stream: Stream, reason: str) -> None:
        if stream.close_reason is None:
            stream.close(reason)
            if reason == SLOW_READER:
                stream.abort()          # its buffers go now, not when a blocked write gives up
            self.on_evict(stream, reason)

    # -- background ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._ticker is None:
            self._ticker = loop.create_task(self._tick_loop(), name="stormguard-hub-ticker")
        if self.shared and self._reader is None:
            self._reader = loop.create_task(self._read_loop(), name="stormguard-hub-reader")

    async def stop(self) -> None:
        await cancel_tasks(self._ticker, self._reader)
        self._ticker = self._reader = None
        if self.shared:
            await self.history.aclose()  # type: ignore[union-attr]

    async def _read_loop(self) -> None:
        """The process's one reader: blocking XREAD over the topics with local subscribers, fan-out in memory.

        Never ends on an error: while the store is down it retries with a bounded backoff (the backend logs and
        counts the outage once); open streams keep their connections and heartbeats meanwhile.
        """
        history: AsyncHistoryBackend = self.history  # type: ignore[assignment]
        backoff = 0.05
        while True:
            subscribers = self.subscribers
            self._cursors = cursors = {t: c for t, c in self._cursors.items() if t in subscribers}
            try:
                events = await history.read(dict(cursors))
            except HistoryUnavailable:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            except Exception:       # a bug must not kill fan-out for the whole process
                log.exception("hub reader: unexpected error; retrying")
                await asyncio.sleep(1.0)
                continue
            backoff = 0.05
            if events:
                self.fan_out(events)

    async def _tick_loop(self) -> None:
        interval = max(0.05, min(1.0, self.heartbeat / 2))
        while True:
            await asyncio.sleep(interval)
            self.tick(self.clock())

    def tick(self, now: float) -> None:
        """Heartbeats for streams quiet for ``heartbeat`` s; idle and lifetime eviction by tier; slow readers."""
        guard = self.slow_reader
        if guard is not None:
            guard.rounds += 1
        for stream in tuple(self.streams):
            limits = stream.limits
            if limits is not None:
                if limits.max_lifetime and now - stream.started >= limits.max_lifetime:
                    self.evict(stream, "lifetime")
                    continue
                if limits.idle_timeout and now - stream.last_data >= limits.idle_timeout:
                    self.evict(stream, "idle")
                    continue
            if guard is not None and guard.check(stream, now):
                self.evict(stream, SLOW_READER)
                continue
            if now - stream.last_write >= self.heartbeat:
                stream.ping()

    def begin_shutdown(self, streams: Iterable[Stream] | None = None) -> None:
        """Every open stream gets a final jittered ``retry:`` and closes; new streams are refused (idempotent)."""
        self.closing = True
        for stream in tuple(streams if streams is not None else self.streams):
            self.evict(stream, "shutdown")
