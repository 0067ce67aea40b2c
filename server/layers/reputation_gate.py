"""The reputation gate: :class:`~stormguard.scoring.engine.ReputationEngine` decisions as :class:`GateDecision`.

Server side on purpose (``scoring`` never imports the server). One store read per new connection at most
(DESIGN.md: one Redis round trip per new connection, none per event): ``engine.decide`` is one ``get``. A block the
gate has seen is remembered locally, so a blocked client hammering the server costs no store read at all — but only
for ``recheck`` seconds at a time, so a block lifted in the store (``stormguard reputation unblock``, another
process) is honoured soon after without a per-connection read. The local memory holds blocked keys only, bounded
(least recently blocked dropped first).

A store that fails (timeout, Redis down without a failover wrapper) makes the gate admit with no opinion and report
the failure (the breaker counts store failures): an outage of the reputation store must not refuse everybody.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from stormguard.server.context import RequestContext
from stormguard.server.layers.gate import GateDecision
from stormguard.server.tasks import cancel_tasks

log = logging.getLogger("stormguard.reputation")


def header(ctx: RequestContext, name: bytes) -> str | None:
    """A request header from the scope headers the gate middleware keeps on the context (None when absent)."""
    for k, v in ctx.extra.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


class ReputationGateAdapter:
    """``async (ctx) -> GateDecision``: tier and score from the store, refusal while blocked."""

    def __init__(self, engine: Any, *, recheck: float = 1.0, max_blocks: int = 100_000,
                 clock: Callable[[], float] = time.time,
                 on_error: Callable[[BaseException], None] | None = None, ranges: Any = None) -> None:
        self.engine = engine
        # address ranges imported from CrowdSec (scoring.enforce.ranges.RangeTable): bans refuse, captchas cap
        # the tier at the lowest one (where the challenge lets a browser prove itself)
        self.ranges = ranges
        self.range_refusals = 0
        self.recheck = recheck
        self.max_blocks = max_blocks
        self.clock = clock
        self.on_error = on_error or (lambda exc: None)
        # key -> (block_until, recheck_at, score): blocked keys only
        self._blocks: OrderedDict[str, tuple[float, float, float]] = OrderedDict()
        self.store_reads = 0
        self.evicted = 0
        self.local_refusals = 0
        self.errors = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def note_block(self, key: str, block_until: float, score: float, now: float | None = None) -> None:
        """Remember a block (seen by :meth:`__call__` or set by the live rules) until ``block_until``."""
        now = self.clock() if now is None else now
        if block_until <= now:
            self._blocks.pop(key, None)
            return
        self._blocks.pop(key, None)
        self._blocks[key] = (block_until, now + self.recheck, score)
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)
            self.evicted += 1

    def forget(self, key: str) -> None:
        self._blocks.pop(key, None)

    def local_block(self, key: str, now: float) -> tuple[float, float] | None:
        """``(block_until, score)`` while a remembered block of ``key`` is in force and not due for a store re-read.

        The fast path (:mod:`stormguard.server.layers.fastpath`) asks this before the Starlette stack; ``None`` sends the
        request down the full path, whose :meth:`__call__` re-reads the store (and re-remembers a block that still
        holds), so a block lifted in the store is honoured within ``recheck`` seconds on both paths.
        """
        hit = self._blocks.get(key)
        if hit is None or now >= hit[0] or now >= hit[1]:
            return None
        self.local_refusals += 1
        return hit[0], hit[2]

    async def __call__(self, ctx: RequestContext) -> GateDecision | None:
        key = ctx.identity.ip
        now = self.clock()
        hit = self._blocks.get(key)
        if hit is not None:
            until, recheck_at, score = hit
            if now < until and now < recheck_at:
                self.local_refusals += 1
                return GateDecision(allow=False, tier="blocked", score=score, reason="blocked",
                                    retry_ms=max(1, int((until - now) * 1000)))
            del self._blocks[key]
        self.store_reads += 1
        try:
            d = await self.engine.decide(key, ip=key, ua=header(ctx, b"user-agent"), now=now)
        except Exception as exc:           # store outage: admit, count, let the breaker see it
            self.errors += 1
            self.on_error(exc)
            return None
        score = round(float(d.reputation.score), 3)
        if self.ranges:
            hit = self.ranges.match(key, now)
            if hit is not None and hit.kind == "ban":
                self.range_refusals += 1
                self.note_block(key, hit.until, score, now)
                return GateDecision(allow=False, tier="blocked", score=score, reason="blocked",
                                    retry_ms=max(1, int((hit.until - now) * 1000)))
            if hit is not None and d.allow:            # captcha: the lowest tier, not a refusal
                return GateDecision(allow=True, tier=self.engine.tiers.tiers[-1].name, score=score,
                                    reason="blocked", retry_ms=None)
        if not d.allow:
            self.note_block(key, now + max(d.retry_after, 0.001), score, now)
        return GateDecision(allow=d.allow, tier=d.tier.name, score=score, reason="blocked", retry_ms=d.retry_ms)


class ReputationService:
    """Everything reputation the app runs: the gate, the live rules, the dynamic threshold, their tasks and metrics.

    ``create_app(..., reputation=ReputationService.from_config(config, settings))``; tests may pass an engine over
    any store.
    """

    def __init__(self, engine: Any, settings: Any, *, threshold: Any = None, live: bool = True) -> None:
        from stormguard.features.clients.online import OnlineClientFeatures
        from stormguard.scoring.enforce.ranges import RangeTable
        from stormguard.server.live.rules import LiveReputation

        self.engine = engine
        self.store = engine.store
        self.threshold = threshold
        self.ranges = RangeTable()
        self.crowdsec: Any = None       # a scoring.enforce.bridge.CrowdsecBridge when [crowdsec] is configured
        self.gate = ReputationGateAdapter(engine, recheck=settings.block_recheck_seconds,
                                          max_blocks=settings.block_cache_size, ranges=self.ranges)
        self.live: LiveReputation | None = None
        if live:
            features = OnlineClientFeatures("src_ip", settings.live_window, max_keys=settings.live_max_keys)
            groups = None
            if settings.group_short_lived > 0:
                from stormguard.server.live.groups import GroupPressure

                groups = GroupPressure(threshold=settings.group_short_lived,
                                       min_addresses=settings.group_min_addresses, window=settings.group_window,
                                       block_seconds=settings.group_block_seconds,
                                       prefix_v4=settings.group_prefix_v4, prefix_v6=settings.group_prefix_v6,
                                       max_groups=settings.group_max)
            self.live = LiveReputation(engine, features=features, threshold=threshold, gate=self.gate,
                                       flush_interval=settings.live_flush_interval,
                                       max_queue=settings.live_queue_size,
                                       refusal_layers=tuple(settings.live_refusal_layers),
                                       max_consumed=settings.live_max_keys, groups=groups, ranges=self.ranges)
        self._tasks: list[Any] = []

    @classmethod
    def from_config(cls, config: Any, settings: Any, store_url: str | None = None) -> ReputationService:
        from stormguard.scoring.engine import ReputationEngine
        from stormguard.scoring.geo import GeoLookup
        from stormguard.scoring.stores import open_store
        from stormguard.scoring.threshold import DynamicThreshold

        store = open_store(store_url, config)
        threshold = DynamicThreshold(config.threshold, base=config.reputation.block_score,
                                     geo=GeoLookup.from_config(config.geoip))
        engine = ReputationEngine(store, config, threshold=threshold)
        service = cls(engine, settings, threshold=threshold, live=settings.live_rules)
        from stormguard.scoring.enforce.bridge import CrowdsecBridge

        service.crowdsec = CrowdsecBridge.from_config(config.crowdsec, engine, service.ranges)
        return service

    @property
    def observers(self) -> list[Callable[[str, RequestContext, dict[str, Any]], None]]:
        return [self.live.observer] if self.live is not None else []

    def bind(self, rt: Any) -> None:
        """Hook metrics, audit and the breaker of the app's runtime (called by ``create_app``)."""
        from prometheus_client import Counter, Gauge

        r = rt.metrics.registry
        penalties = Counter("stormguard_reputation_penalties", "Live rule penalties written to the store",
                            ["rule"], registry=r)
        errors = Counter("stormguard_reputation_store_errors", "Reputation store calls that failed", ["where"],
                         registry=r)
        dropped = Counter("stormguard_live_events_dropped", "Connection events dropped (live queue full)",
                          registry=r)
        Gauge("stormguard_reputation_local_blocks", "Blocks remembered by the gate", registry=r).set_function(
            lambda: len(self.gate))
        Gauge("stormguard_reputation_store_reads", "Store reads made by the gate", registry=r).set_function(
            lambda: self.gate.store_reads)
        Gauge("stormguard_block_threshold", "Current block score (dynamic threshold)", registry=r).set_function(
            lambda: float(self.engine.block_score()))
        Gauge("stormguard_range_entries", "Address ranges in force (CrowdSec Range and captcha decisions)",
              registry=r).set_function(lambda: len(self.ranges))
        Gauge("stormguard_range_refusals", "Connections refused by a range ban", registry=r).set_function(
            lambda: self.gate.range_refusals)
        bridge = self.crowdsec
        if bridge is not None and bridge.importer is not None:
            st = bridge.importer.stats
            Gauge("stormguard_crowdsec_import_applied", "CrowdSec decisions applied to the store and ranges",
                  registry=r).set_function(lambda: st.applied)
            Gauge("stormguard_crowdsec_import_errors", "Failed Local API decision pulls",
                  registry=r).set_function(lambda: st.errors)
            Gauge("stormguard_crowdsec_import_connected", "1 while the last decision pull succeeded",
                  registry=r).set_function(lambda: float(st.connected))
        if bridge is not None and bridge.exporter is not None:
            ex = bridge.exporter
            Gauge("stormguard_crowdsec_export_pushed", "Blocks pushed to the Local API as alerts",
                  registry=r).set_function(lambda: ex.stats.pushed)
            Gauge("stormguard_crowdsec_export_queued", "Blocks waiting in the on-disk queue",
                  registry=r).set_function(lambda: len(ex.spool))
            Gauge("stormguard_crowdsec_export_errors", "Failed Local API alert pushes",
                  registry=r).set_function(lambda: ex.stats.errors)
        gate_errors = errors.labels("gate")

        def gate_error(exc: BaseException) -> None:
            gate_errors.inc()           # fail_mode decides; the breaker is for this server's own failures
            log.warning("reputation store read failed: %s: %s", type(exc).__name__, exc)

        self.gate.on_error = gate_error
        bounds, gate = rt.client_state, self.gate
        bounds.add("gate_blocks", lambda: len(gate), gate.max_blocks, lambda: gate.evicted)
        store = self.store
        local = getattr(store, "fallback", store)            # a Redis store's local mirror, or the memory store
        if hasattr(local, "max_keys"):
            bounds.add("store", lambda: len(local), local.max_keys, lambda: local.evictions)
        if hasattr(store, "journal"):
            bounds.add("store_journal", lambda: len(store.journal), store.journal_max, lambda: store.journal_dropped)
            Gauge("stormguard_reputation_store_degraded", "1 while the shared store is unreachable and decisions "
                  "come from local memory (fail_mode)", registry=r).set_function(lambda: float(store.degraded))
            Gauge("stormguard_reputation_store_replayed", "Outage updates replayed to the shared store",
                  registry=r).set_function(lambda: float(store.replayed))
        live = self.live
        if live is not None:
            feats = live.features
            bounds.add("live_features", lambda: feats.key_count, feats.max_keys, lambda: feats.evicted_keys)
            bounds.add("live_consumed", lambda: len(live._consumed), live.max_consumed)
            bounds.add("live_queue", lambda: len(live._queue), live.max_queue, lambda: live.dropped)
            live_errors = errors.labels("live")

            def live_error(exc: BaseException) -> None:
                live_errors.inc()
                log.warning("reputation store update failed: %s: %s", type(exc).__name__, exc)

            def penalty(p: Any) -> None:
                for rule in p.reason.split("+"):
                    rt.metrics.child(penalties, rule).inc()
                blocked = p.block_until > time.time()
                rt.audit.record(client=p.key, tier="blocked" if blocked else None, score=round(p.score, 3),
                                layer="reputation", reason=p.reason, action="block" if blocked else "penalty",
                                delta=p.delta)

            live.on_error = live_error
            live.on_penalty = penalty
            if live.groups is not None:
                group_actions = Counter("stormguard_group_actions", "Networks put in the lowest tier (captcha) or "
                                        "refused (ban) for their short-lived streams", ["action"], registry=r)
                grp = live.groups
                bounds.add("live_groups", lambda: len(grp), grp.max_groups, lambda: grp.evicted)

                def group_action(crossing: Any, kind: str, until: float) -> None:
                    group_actions.labels(kind).inc()
                    rt.audit.record(client=crossing.network, tier="blocked" if kind == "ban" else None,
                                    layer="reputation", reason="group_short_lived",
                                    action="block" if kind == "ban" else "captcha", count=crossing.count,
                                    addresses=crossing.addresses, until=round(until, 3))

                live.on_group = group_action
            live.on_drop = dropped.inc

    async def start(self) -> None:
        import asyncio

        if self.live is not None:
            self.live.start()
        if self.threshold is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self.threshold.run(),
                                                                      name="stormguard-threshold"))
        if self.crowdsec is not None:
            self.crowdsec.start()

    async def stop(self) -> None:
        import contextlib

        if self.crowdsec is not None:
            await self.crowdsec.stop()
        await cancel_tasks(*self._tasks)
        self._tasks.clear()
        if self.live is not None:
            await self.live.stop()
        with contextlib.suppress(Exception):
            await self.store.close()
