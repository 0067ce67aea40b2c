"""Operating a running server: the live quota table, the dynamic-quota controller, per-client tier overrides, what
was last seen of each client, and the admin listener — built once per app by ``create_app`` (``rt.ops``).

Everything the admin API changes goes through here, so each change is counted in ``/metrics``
(``stormguard_admin_changes_total{kind}``, ``stormguard_quota_decisions_total{action,kind,source}``, the quota
gauges) and written to the audit log (layer ``admin`` or ``controller``) in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Any

from stormguard.server.context import RequestContext
from stormguard.server.ops.controller import Decision, QuotaController
from stormguard.server.ops.quota_table import QuotaTable
from stormguard.server.tasks import cancel_tasks

log = logging.getLogger("stormguard.ops")


class ClientOverrides:
    """Operator tier overrides with an expiry: ``PUT /admin/clients/{key}`` with ``{"tier": ..., "ttl": ...}``."""

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self._by_key: dict[str, tuple[str, float, str]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def set(self, key: str, tier: str, until: float, reason: str) -> None:
        self._by_key[key] = (tier, until, reason)

    def drop(self, key: str) -> bool:
        return self._by_key.pop(key, None) is not None

    def get(self, key: str) -> tuple[str, float, str] | None:
        hit = self._by_key.get(key)
        if hit is not None and hit[1] <= self.clock():
            del self._by_key[key]
            return None
        return hit

    def tier_for(self, ctx: RequestContext) -> str | None:
        if not self._by_key:              # the hot path's common case: one truth test
            return None
        hit = self.get(ctx.identity.ip)
        return None if hit is None else hit[0]


class LastSeen:
    """When each client was last seen and with which fingerprints (bounded LRU; an observer of the runtime)."""

    def __init__(self, max_keys: int = 100_000, clock: Any = time.time) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._seen: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def observer(self, kind: str, ctx: RequestContext, info: dict[str, Any]) -> None:
        if kind not in ("open", "refusal"):
            return
        ident = ctx.identity
        rec = self._seen.pop(ident.ip, None) or {"opened": 0, "refused": 0}
        rec["last_seen"] = self.clock()
        rec["opened" if kind == "open" else "refused"] += 1
        if kind == "refusal":
            rec["last_refusal"] = f"{info.get('layer')}:{info.get('reason')}"
        for name in ("ja3", "ja4", "sni"):
            value = getattr(ident, name)
            if value:
                rec[name] = value
        for k, v in ctx.extra.get("headers", ()):
            if k == b"user-agent":
                rec["user_agent"] = v.decode("latin-1")[:256]
        self._seen[ident.ip] = rec
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)

    def get(self, key: str) -> dict[str, Any] | None:
        rec = self._seen.get(key)
        return None if rec is None else dict(rec)


class AdminListener:
    """The admin app on its own socket, served by a second uvicorn server on the same event loop.

    ``startup``/``main_loop``/``shutdown`` rather than ``serve``: ``serve`` would install signal handlers over the
    main server's.
    """

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.server: Any = None
        self._task: asyncio.Task[None] | None = None
        self.closing = asyncio.Event()

    async def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(self.app, host=self.host, port=self.port, lifespan="off", access_log=False,
                                log_level="warning", proxy_headers=False, timeout_graceful_shutdown=2)
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup()
        self.server = server
        self._task = asyncio.get_running_loop().create_task(server.main_loop(), name="stormguard-admin")

    async def stop(self) -> None:
        self.closing.set()                        # dashboard streams end on this
        if self.server is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            if self._task is not None:
                await self._task
        await self.server.shutdown()
        self.server = None


class Operations:
    """The operable parts of one app (see the module docstring)."""

    def __init__(self, rt: Any, settings: Any, *, reputation: Any = None, clock: Any = time.monotonic) -> None:
        from prometheus_client import Counter, Gauge

        self.rt = rt
        self.settings = s = settings
        self.reputation = reputation
        r = rt.metrics.registry
        self.changes = Counter("stormguard_admin_changes", "State changes made through the admin API", ["kind"],
                               registry=r)
        self.requests = Counter("stormguard_admin_requests", "Admin API requests", ["method", "route", "status"],
                                registry=r)
        self.auth_failures = Counter("stormguard_admin_auth_failures", "Admin API requests refused for their "
                                     "credentials (401 missing/wrong, 403 not an admin)", ["status", "reason"],
                                     registry=r)
        self.decisions = Counter("stormguard_quota_decisions", "Dynamic quota steps", ["action", "kind", "source"],
                                 registry=r)
        self.table = QuotaTable.from_settings(s, on_change=self._table_changed)
        level = Gauge("stormguard_quota_level", "Dynamic quota steps below the baseline", ["kind"], registry=r)
        for kind in self.table.levels:
            level.labels(kind).set_function(lambda k=kind: self.table.levels[k])
        streams = Gauge("stormguard_quota_streams", "Effective concurrent-stream quota per tier", ["tier"],
                        registry=r)
        for tier in self.table.tiers:
            streams.labels(tier).set_function(
                lambda t=tier: self.table.tiers[t].max_streams if t in self.table.tiers else 0)
        rate = Gauge("stormguard_quota_rate", "Effective limiter rate (new connections per second)", ["kind"],
                     registry=r)
        for kind in self.table.rates:
            rate.labels(kind).set_function(lambda k=kind: self.table.rates[k].rate)
        self.table.bind_buckets("ip", rt.ip_buckets)
        self.table.bind_buckets("token", rt.token_buckets)
        self.controller = QuotaController(
            self.table, self.signals, clock=clock, interval=s.controller_interval, window=s.controller_window,
            reject_ratio=s.controller_reject_ratio, reject_hold=s.controller_reject_hold,
            healthy_ratio=s.controller_healthy_ratio, surge_factor=s.controller_surge_factor,
            surge_min=s.controller_surge_min, history=s.controller_history, min_history=s.controller_min_history,
            cooldown=s.controller_cooldown, on_decision=self._decided)
        Gauge("stormguard_quota_rejection_ratio", "Rejection ratio the controller last saw (its window)",
              registry=r).set_function(lambda: self.controller.ratio)
        self.overrides = ClientOverrides()
        self.seen = LastSeen(max_keys=s.live_max_keys)
        rt.observers.append(self.seen.observer)
        if rt.refuser.on_refusal is None:
            rt.refuser.on_refusal = rt._refused
        self.jwt_keys: dict[str, Any] = {}     # alg -> key, set by create_app from the tenants' JwtVerifier
        self.listener: AdminListener | None = None
        self._task: asyncio.Task[None] | None = None

    # -- signals and accounting ---------------------------------------------------------------------------------
    def signals(self) -> tuple[float, float]:
        """(refusals so far, streams opened so far): ``rate_limit_rejected_total`` and ``http_sse_connections``.

        Refusals of blocked clients are left out: a flood of clients the gate already blocks is handled by their
        blocks, and must not downgrade the quotas of everyone else."""
        m = self.rt.metrics
        refused = sum(t.n for key, t in list(m.rejected.tallies.items()) if key != ("reputation", "blocked"))
        opened = 0.0
        for metric in m.connections.collect():
            opened += sum(sample.value for sample in metric.samples if sample.name.endswith("_total"))
        return float(refused), opened

    def _table_changed(self, kind: str, detail: dict[str, Any]) -> None:
        if kind == "baseline":
            self.rt.audit.record(client="-", layer="admin", reason="quotas", action="baseline", **detail)

    def _decided(self, d: Decision) -> None:
        self.decisions.labels(d.action, d.kind, d.source).inc()
        self.rt.audit.record(client="-", layer="controller", reason=d.signal, action=d.action, kind=d.kind,
                             level_from=d.level_from, level_to=d.level_to, value=d.value, source=d.source)

    def changed(self, what: str, who: str, key: str = "-", **detail: Any) -> None:
        """One admin change: counted (``stormguard_admin_changes_total{kind}``) and audited."""
        self.changes.labels(what).inc()
        self.rt.audit.record(client=key, layer="admin", reason=what, action="change", who=who, **detail)

    def tier_of(self, ctx: RequestContext, default: Any) -> str:
        """An operator's override, else the default; one tier lower past a soft threshold (``soft_lower_tier``)."""
        tier = self.overrides.tier_for(ctx) or default(ctx)
        if ctx.degraded and self.settings.soft_lower_tier:
            order = list(self.table.tiers)           # the [reputation] tier table: best first
            if tier in order and order.index(tier) + 1 < len(order):
                return order[order.index(tier) + 1]
        return tier

    # -- lifecycle ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.settings.controller:
            self._task = asyncio.get_running_loop().create_task(self.controller.run(), name="stormguard-controller")
        if self.settings.admin_port:
            from stormguard.server.ops.admin import admin_app

            self.listener = AdminListener(admin_app(self), self.settings.admin_host, self.settings.admin_port)
            await self.listener.start()

    async def stop(self) -> None:
        await cancel_tasks(self._task)
        self._task = None
        if self.listener is not None:
            await self.listener.stop()
            self.listener = None
