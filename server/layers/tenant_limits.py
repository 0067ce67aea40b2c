"""Per-tenant soft and hard limits (seed 4.1), configurable per tenant pool: ``[server.tenant_limits.<tenant>]``.

The limiter (:mod:`limiter`) already has soft/hard thresholds per client address and per token (the bearer token's
hash, or tenant + subject of a verified JWT) with one rate for everybody. This layer, between the tenant layer and
the limiter, adds what a tenant pool configures (``"*"`` applies to tenants without their own entry):

* ``rate``/``burst``/``soft_remaining`` — one bucket for the whole tenant (new connections per second);
* ``subject_rate``/``subject_burst``/``subject_soft_remaining`` — a bucket per token/JWT subject *of this tenant*
  (on top of the global per-token bucket, so a tenant can be held tighter than the default, never looser);
* ``soft_streams`` — once the tenant holds this many open streams, new ones are still admitted (up to the pool,
  the hard limit of :class:`~stormguard.server.layers.tenants.TenantStreamQuota`) but degraded.

Hard: no token left → refused (``tenant_rate`` / ``token_rate``, through the refuser: counted, audited, ``pace`` by
default). Soft: admitted with ``ctx.degraded`` set — the ``retry:`` the stream is handed is longer
(``retry_degrade_factor``), ``X-Stormguard-Warning`` names the limit, the tier drops one step when
``soft_lower_tier`` is on (see ``Operations.tier_of``), and ``on_warn`` audits it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stormguard.server.context import get_context
from stormguard.server.layers.limiter import GcraBuckets


class TenantLimiter:
    """Pure ASGI: the tenant's own buckets and stream soft threshold, for requests that carry a tenant."""

    def __init__(self, app: Any, *, limits: Mapping[str, Any], refuser: Any, paths: tuple[str, ...] = ("/events",),
                 pool_open: Callable[[str], int] | None = None, max_entries: int = 1_000_000,
                 on_degrade: Callable[[str], None] | None = None,
                 on_warn: Callable[[Any, str], None] | None = None) -> None:
        self.app = app
        self.limits = dict(limits)
        self.refuser = refuser
        self.paths = paths
        self.pool_open = pool_open or (lambda tenant: 0)
        self.max_entries = max_entries
        self.on_degrade = on_degrade or (lambda kind: None)
        self.on_warn = on_warn
        self._tenant: dict[str, GcraBuckets] = {}      # one bucket set per configured pool name
        self._subject: dict[str, GcraBuckets] = {}

    def _buckets(self, name: str, cfg: Any) -> tuple[GcraBuckets | None, GcraBuckets | None]:
        tenant = self._tenant.get(name)
        if tenant is None and cfg.rate > 0:
            tenant = self._tenant[name] = GcraBuckets(cfg.rate, cfg.burst, max_entries=self.max_entries)
        subject = self._subject.get(name)
        if subject is None and cfg.subject_rate > 0:
            subject = self._subject[name] = GcraBuckets(cfg.subject_rate, cfg.subject_burst,
                                                        max_entries=self.max_entries)
        return tenant, subject

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        tenant = ctx.extra.get("tenant")
        name = tenant if tenant in self.limits else "*"
        cfg = self.limits.get(name) if tenant is not None else None
        if cfg is None:
            await self.app(scope, receive, send)
            return
        tenant_buckets, subject_buckets = self._buckets(name, cfg)
        checks = []
        if tenant_buckets is not None:
            checks.append(("tenant_rate", tenant_buckets, tenant, cfg.soft_remaining))
        if subject_buckets is not None and ctx.identity.token_key is not None:
            checks.append(("token_rate", subject_buckets, ctx.identity.token_key, cfg.subject_soft_remaining))
        for reason, buckets, key, soft in checks:
            ok, left, _ = buckets.take(key)
            if not ok:
                if await self.refuser.refuse(scope, send, layer="tenant", reason=reason):
                    return
            elif left < soft:
                self._degrade(ctx, reason)
        if cfg.soft_streams > 0 and self.pool_open(tenant) >= cfg.soft_streams:
            self._degrade(ctx, "tenant_streams")
        await self.app(scope, receive, send)

    def _degrade(self, ctx: Any, reason: str) -> None:
        ctx.degraded = True
        ctx.extra["warning"] = reason
        self.on_degrade(reason)
        if self.on_warn is not None:
            self.on_warn(ctx, reason)
