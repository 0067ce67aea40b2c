"""The live quota table and the dynamic-quota controller, driven by an injected clock and counters (no sleeps)."""

from __future__ import annotations

import pytest
from stormguard.server.context import ClientIdentity, RequestContext
from stormguard.server.layers.limiter import GcraBuckets
from stormguard.server.layers.quota import TieredStreamQuota
from stormguard.server.layers.tenants import TenantStreamQuota
from stormguard.server.ops.controller import QuotaController, p95
from stormguard.server.ops.quota_table import QuotaError, QuotaTable, Rate, StepPolicy
from stormguard.server.ops.settings import default_tiers


def table(**kw) -> QuotaTable:
    return QuotaTable(default_tiers(), tenant_default=100, tenant_pools={"acme": 10},
                      rates={"ip": Rate(3.0, 2.0), "token": Rate(50.0, 100.0)}, **kw)


def ctx(ip: str, tier: str = "neutral", tenant: str | None = None) -> RequestContext:
    c = RequestContext(ClientIdentity(ip=ip), tier=tier)
    if tenant:
        c.extra["tenant"] = tenant
    return c


def test_steps_walk_down_to_the_floor_and_back_to_the_baseline_exactly():
    t = table()
    seen = []
    for level in range(5):
        t.set_level("streams", level)
        seen.append((t.tiers["trusted"].max_streams, t.tiers["neutral"].max_streams, t.tiers["low"].max_streams,
                     t.pools["*"], t.pools["acme"]))
    # one step: a quarter, at least 1, at most half; floor: a quarter of the baseline, at least 1 stream
    assert seen == [(8, 3, 1, 100, 10), (6, 2, 1, 75, 7), (4, 1, 1, 56, 5), (3, 1, 1, 42, 3), (2, 1, 1, 31, 3)]
    assert t.set_level("streams", 9) is False          # clamped to max_level 4: no change
    t.set_level("streams", 0)
    assert t.tiers == default_tiers() and t.pools == {"*": 100, "acme": 10}
    t.set_level("rates", 2)
    assert t.rates["ip"] == Rate(1.0, 1.0) and t.rates["token"].rate == pytest.approx(28.125)
    t.set_level("rates", 0)
    assert t.rates["ip"] == Rate(3.0, 2.0)


def test_the_quota_layer_and_the_limiter_read_the_live_table():
    t = table()
    tiered = TieredStreamQuota(default_tiers())
    pooled = TenantStreamQuota(tiered, default_pool=100, pools={"acme": 10})
    t.bind_quota(pooled)
    buckets = GcraBuckets(3.0, 2.0, clock=lambda: 1000.0)
    t.bind_buckets("ip", buckets)
    held = [ctx("10.0.0.1") for _ in range(3)]
    assert all(pooled.acquire(c) for c in held)          # neutral: 3 streams
    pooled.release(held[2])
    t.set_level("streams", 1)                            # neutral 3 -> 2
    assert not pooled.acquire(ctx("10.0.0.1"))
    assert pooled.acquire(ctx("10.0.0.2"))
    t.update({"tenants": {"acme": 1}, "levels": {"streams": 0}})
    assert pooled.acquire(ctx("10.0.0.3", tenant="acme"))
    refused = ctx("10.0.0.4", tenant="acme")
    assert not pooled.acquire(refused) and refused.extra["quota_reason"] == "tenant_quota"
    assert [buckets.take("a")[0] for _ in range(3)] == [True, True, False]       # burst 2
    t.update({"rates": {"ip": {"burst": 4}}})
    assert [buckets.take("b")[0] for _ in range(5)] == [True, True, True, True, False]


@pytest.mark.parametrize(("body", "field"), [
    ({"tiers": {"neutral": {"max_streams": 0}}}, "tiers.neutral.max_streams"),
    ({"tiers": {"neutral": {"max_streams": 2.5}}}, "tiers.neutral.max_streams"),
    ({"tiers": {"gold": {"max_streams": 2}}}, "tiers.gold"),
    ({"tiers": {"neutral": {"colour": 2}}}, "tiers.neutral.colour"),
    ({"tenants": {"acme": 10**9}}, "tenants.acme"),
    ({"rates": {"ip": {"rate": -1}}}, "rates.ip.rate"),
    ({"rates": {"ip": {"burst": float("nan")}}}, "rates.ip.burst"),
    ({"levels": {"streams": 7}}, "levels.streams"),
    ({"quotas": 1}, "quotas"),
    ([], "body"),
])
def test_bad_changes_name_the_field_and_change_nothing(body, field):
    t = table()
    before = t.as_dict()
    with pytest.raises(QuotaError) as err:
        t.update({"tiers": {"trusted": {"max_streams": 5}}, **body} if isinstance(body, dict) else body)
    assert err.value.field == field
    assert t.as_dict() == before


class Counters:
    def __init__(self) -> None:
        self.refused = 0.0
        self.opened = 0.0

    def __call__(self) -> tuple[float, float]:
        return self.refused, self.opened


def controller(**kw) -> tuple[QuotaController, Counters, list]:
    c = Counters()
    decided: list = []
    ctl = QuotaController(table(), c, clock=lambda: 0.0, wall=lambda: 0.0, interval=30, window=300,
                          reject_hold=120, cooldown=300, min_history=10, surge_min=10,
                          on_decision=decided.append, **kw)
    return ctl, c, decided


def run(ctl: QuotaController, c: Counters, start: float, end: float, refused: float, opened: float) -> list:
    """Evaluate every 30 s in [start, end) with these counts added per interval."""
    out = []
    t = start
    while t < end:
        c.refused += refused
        c.opened += opened
        out += [(t, d.action, d.kind, d.level_to) for d in ctl.evaluate(t)]
        t += 30
    return out


def test_downgrade_only_after_the_ratio_stays_high_for_the_hold_then_hysteresis_and_cooling():
    ctl, c, decided = controller()
    assert run(ctl, c, 0, 300, refused=0, opened=20) == []             # healthy, at baseline: nothing to do
    steps = []
    first_high = None
    for t in range(300, 720, 30):                                      # 1 refusal per 3 attempts from t=300
        steps += run(ctl, c, t, t + 30, refused=10, opened=20)
        first_high = ctl.high_since if first_high is None else first_high
    assert first_high is not None and first_high > 300                 # the 5-minute window lags the traffic
    # the first step exactly when the ratio has been above 0.1 for 2 minutes, then one per hold
    assert steps == [(first_high + 120, "downgrade", "streams", 1), (first_high + 240, "downgrade", "streams", 2),
                     (first_high + 360, "downgrade", "streams", 3)][:len(steps)] and len(steps) >= 2
    assert ctl.table.tiers["neutral"].max_streams == 1
    level = ctl.table.levels["streams"]
    # between the healthy ratio (0.05) and the trigger (0.1): neither a further step nor a step back
    ctl2, c2, decided2 = controller()
    ctl2.table.set_level("streams", 1)
    assert run(ctl2, c2, 0, 2400, refused=1.5, opened=20) == []
    assert ctl2.ratio == pytest.approx(1.5 / 21.5) and ctl2.table.levels["streams"] == 1 and decided2 == []
    # traffic turns healthy: the 5-minute window drains, then one step back per cooling period
    steps = run(ctl, c, 720, 4000, refused=0, opened=20)
    downs = [s for s in steps if s[1] == "downgrade"]        # the window still holds the refusals for a while
    backs = steps[len(downs):]
    assert all(s[0] < 720 + 300 for s in downs) and all(s[1] == "step_back" for s in backs)
    level += len(downs)
    assert [s[3] for s in backs] == list(range(level - 1, -1, -1))
    assert all(b[0] - a[0] >= 300 for a, b in zip(backs, backs[1:], strict=False))   # cooling restarts each step
    assert backs[0][0] >= 720 + 300
    assert ctl.table.tiers == default_tiers()
    assert [d.signal for d in decided] == ["rejection_ratio"] * level + ["healthy"] * level


def test_connection_surge_tightens_the_rates_once_per_hold():
    ctl, c, decided = controller()
    assert run(ctl, c, 0, 330, refused=0, opened=20) == []             # 10 intervals of history at 20
    assert ctl.surge_p95 is None or ctl.surge_p95 == 20
    steps = run(ctl, c, 330, 420, refused=0, opened=23)                # 23 > 1.1 × 20: surge
    assert steps == [(330, "tighten", "rates", 1)]                     # held for 120 s after a step
    assert ctl.table.rates["ip"].rate == 2.0
    steps = run(ctl, c, 420, 450, refused=0, opened=40)
    assert steps == [] and ctl.table.levels["rates"] == 1              # still held (90 s since the step)
    assert run(ctl, c, 450, 480, refused=0, opened=60) == [(450, "tighten", "rates", 2)]
    ctl3, c3, _ = controller()
    run(ctl3, c3, 0, 330, 0, 2)
    assert run(ctl3, c3, 330, 360, 0, 8) == []                         # 4x, but under surge_min: an idle server


def test_alerts_step_once_per_fingerprint_and_resolution_starts_the_way_back():
    ctl, c, decided = controller()
    d = ctl.alert("StormguardRejectionsHigh", "firing", "fp1", now=10)
    assert (d.action, d.kind, d.level_to, d.source) == ("downgrade", "streams", 1, "alertmanager")
    assert ctl.alert("StormguardRejectionsHigh", "firing", "fp1", now=20) is None     # repeated notification
    assert ctl.alert("StormguardConnectionSurge", "firing", "fp2", now=30).kind == "rates"
    assert ctl.alert("SomethingElse", "firing", "fp3", now=30) is None
    assert run(ctl, c, 40, 1000, 0, 20) == []            # firing alerts: not healthy, no step back
    d = ctl.alert("StormguardRejectionsHigh", "resolved", "fp1", now=1000)
    assert (d.action, d.level_to) == ("step_back", 0)
    assert ctl.alert("StormguardRejectionsHigh", "resolved", "fp1", now=1001) is None
    ctl.alert("StormguardConnectionSurge", "resolved", "fp2", now=1010)
    assert ctl.table.levels == {"streams": 0, "rates": 0}


def test_p95_and_policy_validation():
    assert p95([float(i) for i in range(1, 101)]) == 95.0
    assert p95([5.0]) == 5.0
    with pytest.raises(ValueError):
        StepPolicy(share=0.8, max_share=0.5)
    with pytest.raises(ValueError):
        QuotaController(table(), Counters(), reject_ratio=0.1, healthy_ratio=0.2)


def test_the_controller_leaves_out_the_refusals_of_blocked_clients():
    """A flood of clients the gate already blocks must not downgrade everyone's quotas."""
    from stormguard.server.app import build_stack

    rt = build_stack().rt
    rt.metrics.rejected.tally("limiter", "rate").n += 3
    rt.metrics.rejected.tally("quota", "quota").n += 2
    rt.metrics.rejected.tally("reputation", "blocked").n += 500
    assert rt.ops.signals()[0] == 5.0
