"""The live quota table: per-tier and per-tenant stream quotas and the limiter's rates, changeable at run time.

Two writers change it: the operator (``PUT /admin/quotas`` sets the *baseline*) and the dynamic-quota controller
(:mod:`stormguard.server.ops.controller`), which moves two *levels* — ``streams`` (the downgrade: tier stream quotas
and tenant pools) and ``rates`` (the tightening: new connections per address and per token) — each a number of
steps below the baseline. The effective value of a quota is its baseline walked down ``level`` steps by
:class:`StepPolicy`, so stepping back up lands exactly on the baseline again.

The quota layer reads through the table: :meth:`QuotaTable.bind_quota` hands the table's own dicts to
:class:`~stormguard.server.layers.quota.TieredStreamQuota` (``tiers``) and
:class:`~stormguard.server.layers.tenants.TenantStreamQuota` (``pools``), and the limiter's
:class:`~stormguard.server.layers.limiter.GcraBuckets` get their interval and capacity rewritten (the Redis limiter
sends the local buckets' parameters with every call, so shared buckets follow too). The hot path keeps reading one
dict entry or one float, as before.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stormguard.server.ops.settings import TierLimits

KINDS = ("streams", "rates")
RATE_KEYS = ("ip", "token")
DEFAULT_POOL = "*"          # the tenant pool size of tenants without their own entry


class QuotaError(ValueError):
    """A quota change that cannot be applied; ``field`` names the JSON field at fault (for a 400)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Rate:
    """A token bucket's parameters: tokens per second and burst."""

    rate: float
    burst: float


@dataclass(frozen=True)
class StepPolicy:
    """How far one step moves a quota: ``share`` of its current value, at least ``min_step`` units, at most
    ``max_share`` of it, never below ``floor`` × baseline (and never below 1 stream / a burst of 1)."""

    share: float = 0.25
    min_step: float = 1.0
    max_share: float = 0.5
    floor: float = 0.25
    max_level: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.share <= self.max_share <= 1:
            raise ValueError("step share must satisfy 0 < share <= max_share <= 1")
        if self.min_step < 0 or not 0 < self.floor <= 1 or self.max_level < 0:
            raise ValueError("min_step >= 0, 0 < floor <= 1 and max_level >= 0 required")

    def walk(self, baseline: float, level: int, *, integer: bool, minimum: float) -> float:
        """``baseline`` after ``level`` steps down."""
        floor = max(minimum, baseline * self.floor)
        if integer:
            floor = max(minimum, math.ceil(floor))
        v = float(baseline)
        for _ in range(level):
            change = min(max(v * self.share, self.min_step), v * self.max_share)
            v = max(floor, v - change)
            if integer:
                v = max(floor, math.floor(v + 1e-9))
        return min(v, baseline)


@dataclass(frozen=True)
class QuotaBounds:
    """What ``PUT /admin/quotas`` accepts."""

    max_streams: int = 10_000
    max_pool: int = 1_000_000
    max_rate: float = 100_000.0
    max_burst: float = 100_000.0


class QuotaTable:
    """Baseline and effective quotas; ``on_change(kind, detail)`` after every change (metrics, audit)."""

    def __init__(self, tiers: Mapping[str, TierLimits], *, tenant_default: int = 1000,
                 tenant_pools: Mapping[str, int] | None = None, rates: Mapping[str, Rate] | None = None,
                 policy: StepPolicy | None = None, bounds: QuotaBounds | None = None,
                 on_change: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.policy = policy or StepPolicy()
        self.bounds = bounds or QuotaBounds()
        self.on_change = on_change or (lambda kind, detail: None)
        self.baseline_tiers: dict[str, TierLimits] = dict(tiers)
        self.baseline_pools: dict[str, int] = {DEFAULT_POOL: int(tenant_default), **(tenant_pools or {})}
        self.baseline_rates: dict[str, Rate] = dict(rates or {})
        self.levels: dict[str, int] = dict.fromkeys(KINDS, 0)
        # the live objects the layers read (shared by reference, mutated in place)
        self.tiers: dict[str, TierLimits] = dict(tiers)
        self.pools: dict[str, int] = {}
        self.rates: dict[str, Rate] = {}
        self._tenant_quotas: list[Any] = []
        self._buckets: dict[str, list[Any]] = {}
        self._apply()

    @classmethod
    def from_settings(cls, s: Any, **kwargs: Any) -> QuotaTable:
        policy = StepPolicy(share=s.controller_step_share, min_step=s.controller_min_step,
                            max_share=s.controller_max_step_share, floor=s.controller_floor,
                            max_level=s.controller_max_level)
        bounds = QuotaBounds(max_streams=s.quota_max_streams, max_pool=s.quota_max_pool, max_rate=s.quota_max_rate,
                             max_burst=s.quota_max_rate)
        return cls(s.tiers, tenant_default=s.tenant_streams, tenant_pools=s.tenant_pools,
                   rates={"ip": Rate(s.ip_rate, s.ip_burst), "token": Rate(s.token_rate, s.token_burst)},
                   policy=policy, bounds=bounds, **kwargs)

    # -- binding the layers -------------------------------------------------------------------------------------
    def bind_quota(self, quota: Any) -> None:
        """Make a quota (and the quotas it wraps) read this table's dicts."""
        seen = 0
        while quota is not None and seen < 8:
            if isinstance(getattr(quota, "tiers", None), dict):
                quota.tiers = self.tiers
            if isinstance(getattr(quota, "pools", None), dict):
                quota.pools = self.pools
                quota.default_pool = self.pools[DEFAULT_POOL]
                self._tenant_quotas.append(quota)
            quota = getattr(quota, "inner", None)
            seen += 1

    def bind_buckets(self, kind: str, buckets: Any) -> None:
        if kind not in self.baseline_rates:
            raise ValueError(f"unknown bucket kind {kind!r}")
        self._buckets.setdefault(kind, []).append(buckets)
        self._apply_rate(kind, buckets)

    # -- effective values ---------------------------------------------------------------------------------------
    def _apply(self) -> None:
        p, lv = self.policy, self.levels
        for name, base in self.baseline_tiers.items():
            streams = int(p.walk(base.max_streams, lv["streams"], integer=True, minimum=1))
            self.tiers[name] = dataclasses.replace(base, max_streams=streams)
        for name in list(self.tiers):
            if name not in self.baseline_tiers:
                del self.tiers[name]
        self.pools.clear()
        self.pools.update({t: int(p.walk(n, lv["streams"], integer=True, minimum=1))
                           for t, n in self.baseline_pools.items()})
        for q in self._tenant_quotas:
            q.default_pool = self.pools[DEFAULT_POOL]
        for kind, base in self.baseline_rates.items():
            self.rates[kind] = Rate(round(p.walk(base.rate, lv["rates"], integer=False, minimum=1e-3), 6),
                                    round(p.walk(base.burst, lv["rates"], integer=False, minimum=1.0), 6))
            for b in self._buckets.get(kind, ()):
                self._apply_rate(kind, b)

    def _apply_rate(self, kind: str, buckets: Any) -> None:
        r = self.rates[kind]
        buckets.interval = 1.0 / r.rate
        buckets.capacity = r.burst * buckets.interval

    def set_level(self, kind: str, level: int) -> bool:
        """Move one level (clamped to [0, max_level]); True when it changed."""
        if kind not in KINDS:
            raise ValueError(f"unknown quota kind {kind!r}")
        level = min(max(0, level), self.policy.max_level)
        if level == self.levels[kind]:
            return False
        before = self.levels[kind]
        self.levels[kind] = level
        self._apply()
        self.on_change("level", {"kind": kind, "from": before, "to": level})
        return True

    # -- operator changes (PUT /admin/quotas) -------------------------------------------------------------------
    def update(self, body: Any) -> dict[str, Any]:
        """Validate the whole change first (nothing applied on error), then apply it to the baseline.

        ``{"tiers": {"neutral": {"max_streams": 2, "idle_timeout": 60}}, "tenants": {"acme": 50, "*": 500},
        "rates": {"ip": {"rate": 2, "burst": 4}}, "levels": {"streams": 0}}``
        """
        if not isinstance(body, dict) or not body:
            raise QuotaError("body", "expected a JSON object with tiers, tenants, rates and/or levels")
        unknown = sorted(set(body) - {"tiers", "tenants", "rates", "levels"})
        if unknown:
            raise QuotaError(unknown[0], "unknown field (expected tiers, tenants, rates, levels)")
        b = self.bounds
        tiers = dict(self.baseline_tiers)
        for name in _table(body, "tiers"):
            if name not in tiers:
                raise QuotaError(f"tiers.{name}", f"no such tier (known: {', '.join(tiers)})")
            where = f"tiers.{name}"
            fields = _table(body["tiers"], name, where)
            bad = sorted(set(fields) - {"max_streams", "idle_timeout", "max_lifetime"})
            if bad:
                raise QuotaError(f"{where}.{bad[0]}", "unknown field (max_streams, idle_timeout, max_lifetime)")
            changes: dict[str, Any] = {}
            if "max_streams" in fields:
                changes["max_streams"] = _int(fields["max_streams"], f"{where}.max_streams", 1, b.max_streams)
            for key in ("idle_timeout", "max_lifetime"):
                if key in fields:
                    changes[key] = _num(fields[key], f"{where}.{key}", 0.0 if key == "max_lifetime" else 1.0, 86400.0)
            tiers[name] = dataclasses.replace(tiers[name], **changes)
        pools = dict(self.baseline_pools)
        for tenant, value in _table(body, "tenants").items():
            if not tenant or len(tenant) > 128:
                raise QuotaError("tenants", "tenant names are 1..128 characters")
            if value is None and tenant != DEFAULT_POOL:
                pools.pop(tenant, None)             # back to the default pool
                continue
            pools[tenant] = _int(value, f"tenants.{tenant}", 1, b.max_pool)
        rates = dict(self.baseline_rates)
        for kind in _table(body, "rates"):
            if kind not in rates:
                raise QuotaError(f"rates.{kind}", f"no such limiter (known: {', '.join(rates)})")
            fields = _table(body["rates"], kind, f"rates.{kind}")
            bad = sorted(set(fields) - {"rate", "burst"})
            if bad:
                raise QuotaError(f"rates.{kind}.{bad[0]}", "unknown field (rate, burst)")
            rate = _num(fields.get("rate", rates[kind].rate), f"rates.{kind}.rate", 1e-3, b.max_rate)
            burst = _num(fields.get("burst", rates[kind].burst), f"rates.{kind}.burst", 1.0, b.max_burst)
            rates[kind] = Rate(rate, burst)
        levels = dict(self.levels)
        for kind, value in _table(body, "levels").items():
            if kind not in KINDS:
                raise QuotaError(f"levels.{kind}", f"no such level (known: {', '.join(KINDS)})")
            levels[kind] = _int(value, f"levels.{kind}", 0, self.policy.max_level)
        self.baseline_tiers, self.baseline_pools, self.baseline_rates, self.levels = tiers, pools, rates, levels
        self._apply()
        self.on_change("baseline", {"fields": sorted(body)})
        return self.as_dict()

    def as_dict(self) -> dict[str, Any]:
        return {
            "levels": dict(self.levels),
            "max_level": self.policy.max_level,
            "tiers": {n: {"max_streams": t.max_streams, "baseline_max_streams": self.baseline_tiers[n].max_streams,
                          "idle_timeout": t.idle_timeout, "max_lifetime": t.max_lifetime}
                      for n, t in self.tiers.items()},
            "tenants": {n: {"streams": v, "baseline": self.baseline_pools[n]} for n, v in self.pools.items()},
            "rates": {k: {"rate": r.rate, "burst": r.burst, "baseline_rate": self.baseline_rates[k].rate,
                          "baseline_burst": self.baseline_rates[k].burst} for k, r in self.rates.items()},
            "bounds": dataclasses.asdict(self.bounds),
        }


def _table(body: Any, key: str, where: str | None = None) -> dict[str, Any]:
    value = body.get(key, {}) if isinstance(body, dict) else None
    if not isinstance(value, dict):
        raise QuotaError(where or key, "expected an object")
    return value


def _num(value: Any, field: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise QuotaError(field, f"expected a number, got {value!r}")
    if not lo <= value <= hi:
        raise QuotaError(field, f"{value} is out of bounds [{lo:g}, {hi:g}]")
    return float(value)


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise QuotaError(field, f"expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise QuotaError(field, f"{value} is out of bounds [{lo}, {hi}]")
    return value
