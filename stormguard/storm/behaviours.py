"""How each client class behaves: one coroutine per client, looping sessions until the storm's deadline.

Every loop is bounded by the deadline and stops by itself; every session by the profile's timeout.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any

from stormguard.storm.profile import BROWSER_UAS, ClassSpec, Profile
from stormguard.storm.record import ANSWERED, Recorder
from stormguard.storm.wire import Session, request_bytes, run_session

#: EventSource's own reconnection time when the server sends no ``retry:`` (the WHATWG default is UA-defined;
#: browsers use about 3 s).
DEFAULT_RETRY_S = 3.0


@dataclass
class Context:
    host: str
    port: int
    profile: Profile
    rec: Recorder
    start: float              # monotonic time the storm began
    publish_at: float         # publishing begins (after the warm-up)
    end: float                # no new attempts after this
    close: float              # open streams close now (end + drain)
    token: str | None
    live: Any = None          # shared counters for the progress line: [attempts, successes, open streams, events]
    slot: int = 0

    def count(self, i: int, n: int = 1) -> None:
        if self.live is not None:
            self.live[self.slot * 4 + i] += n


def _path(spec: ClassSpec, profile: Profile, rng: random.Random) -> str:
    return rng.choice(spec.paths).replace("{topic}", profile.topic)


def _sse_headers(ua: str | None, last_id: str | None = None) -> dict[str, str]:
    h = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if ua:
        h["User-Agent"] = ua
    if last_id:
        h["Last-Event-ID"] = last_id
    return h


async def _session(ctx: Context, spec: ClassSpec, source: str, request: bytes, *, hold: float | None,
                   slow: bool = False, delay: float | None = None) -> Session:
    now = time.monotonic()
    hold = min(hold, ctx.close - now) if hold is not None else max(0.0, ctx.close - now)
    s = await run_session(ctx.host, ctx.port, source, request, timeout=ctx.profile.timeout, hold=hold, slow=slow,
                          rcvbuf=spec.rcvbuf if slow else 0)
    ctx.rec.attempt(spec.name, s.started, s.refusal, s.opened, delay, evicted=s.evicted)
    ctx.rec.events(spec.name, s.ended or time.monotonic(), len(s.numbers))
    ctx.count(0)  # attempts and successes are counted as sessions end, so the progress ratio stays a ratio
    if s.opened or s.refusal in ANSWERED:
        ctx.count(1)
    ctx.count(3, len(s.numbers))
    return s


async def _sleep_until(ctx: Context, seconds: float) -> bool:
    """Sleep, but never past the storm's end; False when the storm is over."""
    wake = time.monotonic() + max(0.0, seconds)
    if wake >= ctx.end:
        await asyncio.sleep(max(0.0, ctx.end - time.monotonic()))
        return False
    await asyncio.sleep(max(0.0, seconds))
    return True


async def eventsource(ctx: Context, spec: ClassSpec, i: int, rng: random.Random) -> None:
    """A browser's EventSource: honours ``retry:``, resumes with ``Last-Event-ID``, gives up on 204, and checks
    the publisher's sequence numbers (each once, in order)."""
    source = spec.address(i)
    ua = spec.user_agents[i % len(spec.user_agents)] if spec.user_agents else None
    numbers: list[int] = []
    ctx.rec.numbers[spec.name].append(numbers)
    last_id: str | None = None
    failures = 0
    delay: float | None = None
    await asyncio.sleep(rng.uniform(0, max(0.0, ctx.profile.warmup * 0.5)))
    while time.monotonic() < ctx.end:
        req = request_bytes(f"{ctx.host}:{ctx.port}", _path(spec, ctx.profile, rng), _sse_headers(ua, last_id))
        ctx.count(2)
        s = await _session(ctx, spec, source, req, hold=None, delay=delay)
        ctx.count(2, -1)
        numbers.extend(s.numbers)
        last_id = s.last_id or last_id
        if s.refusal == "stop":
            ctx.rec.stopped[spec.name] += 1
            return                                    # an EventSource never comes back after a 204
        if s.opened or s.refusal == "pace":
            failures = 0
            wait = s.retry_ms / 1000 if s.retry_ms is not None else DEFAULT_RETRY_S
        elif s.refusal in ("429", "503", "403") and s.retry_after is not None:
            wait = s.retry_after
        else:                                         # connect errors, timeouts: exponential backoff
            wait = min(spec.backoff[1], spec.backoff[0] * 2 ** failures) * rng.uniform(0.8, 1.0)
            failures += 1
        delay = wait
        if not await _sleep_until(ctx, wait):
            return


async def short_sessions(ctx: Context, spec: ClassSpec, i: int, rng: random.Random) -> None:
    """no_backoff, flapper, ua_rotator, header_poor, botnet: short sessions, reconnecting on their own terms."""
    b = spec.behaviour
    n_addr = spec.addresses or spec.clients
    k = 0
    await asyncio.sleep(rng.uniform(0, min(1.0, spec.interval)))
    delay: float | None = None
    while time.monotonic() < ctx.end:
        if b == "botnet":                            # each bot walks its own share of the addresses
            source = spec.address(i + k * spec.clients) if n_addr > spec.clients else spec.address(i)
        else:
            source = spec.address(i)
        if b == "header_poor":
            req = request_bytes(f"{ctx.host}:{ctx.port}", _path(spec, ctx.profile, rng), {})
        else:
            ua = (spec.user_agents[(i + k) % len(spec.user_agents)] if b == "ua_rotator"
                  else spec.user_agents[i % len(spec.user_agents)] if spec.user_agents else None)
            req = request_bytes(f"{ctx.host}:{ctx.port}", _path(spec, ctx.profile, rng), _sse_headers(ua))
        k += 1
        hold = rng.uniform(*spec.hold)
        await _session(ctx, spec, source, req, hold=hold, delay=delay)
        wait = 0.0 if b == "no_backoff" else spec.interval * rng.uniform(0.5, 1.5)
        delay = wait
        if not await _sleep_until(ctx, wait):
            return


async def slow_reader(ctx: Context, spec: ClassSpec, i: int, rng: random.Random) -> None:
    source = spec.address(i)
    ua = spec.user_agents[i % len(spec.user_agents)] if spec.user_agents else None
    delay: float | None = None
    while time.monotonic() < ctx.end:
        req = request_bytes(f"{ctx.host}:{ctx.port}", _path(spec, ctx.profile, rng), _sse_headers(ua))
        await _session(ctx, spec, source, req, hold=None, slow=True, delay=delay)
        delay = spec.interval
        if not await _sleep_until(ctx, spec.interval):
            return


async def scanner(ctx: Context, spec: ClassSpec, i: int, rng: random.Random) -> None:
    source = spec.address(i)
    ua = spec.user_agents[i % len(spec.user_agents)] if spec.user_agents else BROWSER_UAS[0]
    delay: float | None = None
    while time.monotonic() < ctx.end:
        path = rng.choice(spec.paths).replace("{topic}", ctx.profile.topic)
        req = request_bytes(f"{ctx.host}:{ctx.port}", path, {"User-Agent": ua, "Accept": "text/html,*/*"})
        await _session(ctx, spec, source, req, hold=0.0, delay=delay)
        delay = spec.interval
        if not await _sleep_until(ctx, spec.interval * rng.uniform(0.5, 1.5)):
            return


async def publisher(ctx: Context, spec: ClassSpec, i: int, rng: random.Random) -> None:
    """Events ``{"n": k}`` at ``spec.rate`` per second, k counting from 1 (what well-behaved clients check)."""
    if i != 0:
        return                                        # one sequence: the first publisher client publishes
    await asyncio.sleep(max(0.0, ctx.publish_at - time.monotonic()))
    headers = {"Content-Type": "application/json"}
    if ctx.token:
        headers["Authorization"] = f"Bearer {ctx.token}"
    n = 0
    period = 1.0 / spec.rate
    next_at = time.monotonic()
    while time.monotonic() < ctx.end:
        body = json.dumps({"topic": ctx.profile.topic, "data": {"n": n + 1}}).encode()
        req = request_bytes(f"{ctx.host}:{ctx.port}", "/publish", headers, method="POST", body=body)
        s = await _session(ctx, spec, spec.address(i), req, hold=0.0)
        if s.status == 200:
            n += 1
            ctx.rec.published = n
        next_at += period
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


BEHAVIOUR_LOOPS = {"eventsource": eventsource, "no_backoff": short_sessions, "flapper": short_sessions,
                   "ua_rotator": short_sessions, "header_poor": short_sessions, "botnet": short_sessions,
                   "slow_reader": slow_reader, "scanner": scanner, "publisher": publisher}
