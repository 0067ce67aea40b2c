"""Live reputation: connection events → online features → the engine's rules → store, off the hot path.

The observer the app calls for every connection event (``open``, ``close``, ``refusal``…) only appends a tuple to a
bounded deque (beyond ``max_queue`` events are dropped and counted: a storm must not grow memory here). A
background task drains the deque every ``flush_interval`` seconds and, for the batch:

1. feeds :class:`~stormguard.features.clients.online.OnlineClientFeatures` (the same feature definitions as the batch
   pipeline): an admitted stream is ``open``-ed, and ``close``-d only when the *client* left (a server-side close —
   shutdown, lifetime, idle — is no short-lived disconnect); a refusal by one of ``refusal_layers`` (the server
   default: the limiter — a client coming back sooner than it was told — and the tenant layer — bad tokens) counts
   as a connection attempt without a close. Quota and breaker refusals do not: they are the server's doing;
2. feeds :class:`~stormguard.scoring.threshold.DynamicThreshold` (``failed``: the breaker refused or the stream was
   dropped as a slow reader; ``bad``: refused or penalised), and counts each client's streams the server ended as
   slow readers: the rules see that count as the evidence ``slow_reader_evictions`` (live only: no log records a
   reader's window), consumed by the penalty it causes (default rule ``slow_reader``: ≥ 1 → −25);
3. evaluates the engine's rules once per client touched in the batch, on the client's current window *minus what
   earlier penalties already consumed*: ``reconnects_10s ≥ 5`` costs 20 points when it is reached, and again after
   5 more, not on every further connection. Boolean evidence (``ja3_bad``…) is penalised once per window;
4. writes the penalties concurrently (one atomic store update per penalised client, see ``engine.observe``) and
   tells the gate about new blocks, so the next connection of a freshly blocked client is refused without a read.

Blocked clients' refusals (layer ``reputation``) are not fed to the rules: a block is not extended by the refusals
it causes.

With ``groups`` (:class:`~stormguard.server.live.groups.GroupPressure`), every short-lived stream a client ended is
also counted for its network; a network that crosses the group threshold goes into the gate's range table (lowest
tier first, refused on the next crossings) and ``on_group`` is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stormguard.features.clients import vector as fv
from stormguard.features.clients.online import OnlineClientFeatures
from stormguard.server.hub.backlog import SLOW_READER
from stormguard.server.tasks import cancel_tasks

log = logging.getLogger("stormguard.live")

#: Older rule files named the short-lived count ``short_lived``; the feature is ``short_lived_2s`` (features.vector).
EVIDENCE_ALIASES = {"short_lived": "short_lived_2s"}
#: Evidence the live path adds to a client's vector: its streams ended as slow readers, not yet penalised.
SLOW_EVIDENCE = "slow_reader_evictions"


@dataclass(slots=True)
class Penalty:
    """One rule verdict applied live (for audit and tests)."""

    key: str
    reason: str
    delta: float
    score: float
    block_until: float


def _header(headers: Any, name: bytes) -> str | None:
    for k, v in headers or ():
        if k == name:
            return v.decode("latin-1")
    return None


class LiveReputation:
    """The cheap synchronous observer plus the batching background task (see the module docstring)."""

    def __init__(self, engine: Any, *, features: OnlineClientFeatures | None = None, threshold: Any = None,
                 gate: Any = None, flush_interval: float = 0.05, max_queue: int = 100_000,
                 refusal_layers: tuple[str, ...] = ("limiter",), max_consumed: int = 100_000,
                 clock: Callable[[], float] = time.time,
                 on_penalty: Callable[[Penalty], None] | None = None,
                 on_drop: Callable[[], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None,
                 groups: Any = None, ranges: Any = None,
                 on_group: Callable[[Any, str, float], None] | None = None) -> None:
        self.engine = engine
        self.groups = groups            # GroupPressure, or None (off)
        self.ranges = ranges            # the gate's RangeTable: where group actions go
        self.on_group = on_group or (lambda crossing, kind, until: None)
        # "is None", not "or": an empty OnlineClientFeatures is falsy (__len__), and "or" silently replaced the
        # configured one (live_max_keys) by a default-sized one, so the cap never applied
        self.features = features if features is not None else OnlineClientFeatures("src_ip")
        self.threshold = threshold
        self.gate = gate
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.refusal_layers = frozenset(refusal_layers)
        self.max_consumed = max_consumed
        self.clock = clock
        self.on_penalty = on_penalty or (lambda p: None)
        self.on_drop = on_drop or (lambda: None)
        self.on_error = on_error or (lambda exc: None)
        self._queue: deque[tuple[str, Any, dict[str, Any], float]] = deque()
        # (key, window_start) -> {feature: consumed value or True}
        self._consumed: OrderedDict[tuple[str, float | None], dict[str, Any]] = OrderedDict()
        self._slow: OrderedDict[str, int] = OrderedDict()   # key -> slow-reader evictions not yet penalised
        self._task: asyncio.Task[None] | None = None
        self._last_expire = clock()
        self.dropped = 0
        self.penalties = 0
        self.processed = 0

    # -- hot path ---------------------------------------------------------------------------------------------
    def observer(self, kind: str, ctx: Any, info: dict[str, Any]) -> None:
        """``Runtime`` observer: O(1), no I/O."""
        if kind == "first_byte" or kind == "eviction":
            return
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            self.on_drop()
            return
        self._queue.append((kind, ctx, info, self.clock()))

    # -- background -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stormguard-live-rules")

    async def stop(self) -> None:
        await cancel_tasks(self._task)
        self._task = None
        with contextlib.suppress(Exception):
            await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:        # a bug or a store error must not end live scoring for good
                self.on_error(exc)
                log.exception("live reputation batch failed")

    async def flush(self) -> list[Penalty]:
        """Process everything queued so far; returns the penalties applied (tests call this directly)."""
        queue = self._queue
        if not queue:
            self._maybe_expire()
            return []
        batch = list(queue)
        queue.clear()
        touched: dict[str, Any] = {}
        features, threshold = self.features, self.threshold
        for kind, ctx, info, ts in batch:
            key = ctx.identity.ip
            if kind == "open":
                handle = features.open(self._event(ctx, ts, 200))
                if handle is not None:
                    ctx.extra["live_handle"] = handle
                touched[key] = ctx
                if threshold is not None:
                    threshold.record(key, now=ts)
            elif kind == "close":
                handle = ctx.extra.pop("live_handle", None)
                reason = info.get("reason")
                if handle is not None and reason == "disconnect":
                    features.close(handle, ts)
                    touched[key] = ctx
                    if self.groups is not None and ts - handle.ts <= fv.SHORT_LIVED_S:
                        self._group(key, ts)
                if reason == SLOW_READER:
                    self._note_slow(key)
                    touched[key] = ctx
                    if threshold is not None:
                        threshold.record(key, failed=True, now=ts)
            elif kind == "refusal":
                layer = info.get("layer", "")
                if layer in self.refusal_layers and not str(info.get("action", "")).startswith("shadow"):
                    features.open(self._event(ctx, ts, 429))
                    touched[key] = ctx
                if threshold is not None:
                    threshold.record(key, failed=layer == "breaker", bad=layer != "breaker", now=ts)
        self.processed += len(batch)
        penalties = await self._apply(touched) if touched else []
        self._maybe_expire()
        return penalties

    def _note_slow(self, key: str) -> None:
        slow = self._slow
        slow[key] = slow.get(key, 0) + 1
        slow.move_to_end(key)
        while len(slow) > self.max_consumed:
            slow.popitem(last=False)

    def _group(self, key: str, ts: float) -> None:
        crossing = self.groups.short_lived(key, ts)
        if crossing is None or self.ranges is None:
            return
        kind = "captcha" if crossing.level == 1 else "ban"
        until = ts + self.groups.block_seconds
        self.ranges.add(crossing.network, kind, "live-group", until, "group_short_lived")
        log.warning("network %s: %d short-lived streams from %d addresses within %.0f s: %s until +%.0f s",
                    crossing.network, crossing.count, crossing.addresses, self.groups.window,
                    "lowest tier" if kind == "captcha" else "refused", self.groups.block_seconds)
        self.on_group(crossing, kind, until)

    @staticmethod
    def _event(ctx: Any, ts: float, status: int) -> dict[str, Any]:
        ident = ctx.identity
        headers = ctx.extra.get("headers")
        return {"src_ip": ident.ip, "ts": ts, "status": status, "ja3": ident.ja3, "ja4": ident.ja4,
                "user_agent": _header(headers, b"user-agent"),
                "header_names": [k.decode("latin-1") for k, _ in headers] if headers else None,
                "http_version": ctx.extra.get("http_version")}

    def _evidence(self, key: str) -> tuple[dict[str, Any] | None, tuple[str, float | None], dict[str, Any]]:
        vec = self.features.vector(key)
        slow = self._slow.get(key)
        if vec is None:
            if not slow:
                return None, (key, None), {}
            vec = {}                        # its window expired or was evicted: the eviction still counts
        ws = vec.get("window_start")
        wkey = (key, ws)
        consumed = self._consumed.get(wkey, {})
        ev: dict[str, Any] = dict(vec)
        for name, column in EVIDENCE_ALIASES.items():
            ev.setdefault(name, vec.get(column))
        for feature, used in consumed.items():
            if used is True:
                ev[feature] = None          # boolean evidence already penalised in this window
            elif isinstance(ev.get(feature), int | float):
                ev[feature] = ev[feature] - used
        if slow:
            ev[SLOW_EVIDENCE] = slow
        return ev, wkey, consumed

    def _consume(self, wkey: tuple[str, float | None], consumed: dict[str, Any], evidence: dict[str, Any],
                 reasons: tuple[str, ...]) -> None:
        by_name = {r.name: r for r in self.engine.rules}
        for name in reasons:
            rule = by_name.get(name)
            if rule is None:
                continue
            value = evidence.get(rule.feature)
            if rule.feature == SLOW_EVIDENCE:
                self._slow.pop(wkey[0], None)   # each eviction is penalised once, whatever the window
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                consumed[rule.feature] = consumed.get(rule.feature, 0) + value
            else:
                consumed[rule.feature] = True
        self._consumed[wkey] = consumed
        self._consumed.move_to_end(wkey)
        while len(self._consumed) > self.max_consumed:
            self._consumed.popitem(last=False)

    async def _apply(self, touched: dict[str, Any]) -> list[Penalty]:
        from stormguard.scoring.rules import evaluate

        engine = self.engine
        jobs = []
        for key, ctx in touched.items():
            ev, wkey, consumed = self._evidence(key)
            if ev is None:
                continue
            ua = _header(ctx.extra.get("headers"), b"user-agent")
            ja3 = ctx.identity.ja3
            verdict = evaluate(engine.rules, engine.evidence.build(ev, ua=ua, ja3=ja3))
            if not verdict.reasons:
                continue
            self._consume(wkey, consumed, engine.evidence.build(ev, ua=ua, ja3=ja3), verdict.reasons)
            jobs.append((key, engine.observe(key, ev, ip=key, ua=ua, ja3=ja3)))
        if not jobs:
            return []
        results = await asyncio.gather(*(job for _, job in jobs), return_exceptions=True)
        out: list[Penalty] = []
        now = self.clock()
        for (key, _), result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                self.on_error(result)
                continue
            verdict, rep = result
            if rep is None:
                continue
            p = Penalty(key, verdict.reason, verdict.delta, float(rep.score), float(rep.block_until))
            out.append(p)
            self.penalties += 1
            if self.gate is not None and rep.block_until > now:
                self.gate.note_block(key, rep.block_until, round(float(rep.score), 3), now)
            if self.threshold is not None:
                self.threshold.record(key, bad=True, now=now)
            self.on_penalty(p)
        return out

    def _maybe_expire(self) -> None:
        now = self.clock()
        if now - self._last_expire < 30.0:
            return
        self._last_expire = now
        self.features.expire(now)
        live = set(self.features.keys())
        for key in [k for k in self._slow if k not in live]:
            del self._slow[key]
        for wkey in [w for w in self._consumed if w not in live]:
            del self._consumed[wkey]
