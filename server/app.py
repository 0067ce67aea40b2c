"""``create_app(settings) -> Starlette``: the hub behind the defence layers, in DESIGN.md's order.

    identity → breaker → reputation gate → limiter → quota → handler

Seams (keyword arguments of :func:`create_app`):

* ``reputation_gate`` — ``async (RequestContext) -> GateDecision | None`` (see :mod:`gate`); default: no gate.
* ``quota`` — a :class:`~stormguard.server.layers.quota.StreamQuota`; default :class:`TieredStreamQuota` over
  ``settings.tiers`` with ``tier_of`` (default: the tier the gate set, else ``settings.default_tier``).
* ``observers`` — callables ``(kind, ctx, info)`` for per-connection events (``open``, ``first_byte``, ``close``,
  ``refusal``, ``eviction``): the online features and the reputation rules subscribe here.
* ``history`` — a :class:`~stormguard.server.hub.history.HistoryBackend` (memory by default; Redis Streams with ``history_url``).
* ``reputation`` — a :class:`~stormguard.server.layers.reputation_gate.ReputationService`: the store-backed gate (tier
  and score from the reputation store, blocks refused), the live rules fed by the observers and the dynamic
  threshold, with their background tasks. :func:`create_app_from_env` builds it from the config when
  ``settings.reputation`` is on.
* tenants — when ``settings.jwt_secret`` or ``settings.jwt_public_key`` is set, :class:`TenantMiddleware` verifies
  a JWT on the stream paths (between the gate and the limiter) and the quota gets per-tenant pools.

Ahead of all of it (and of Starlette's own middleware), :class:`StormguardApp` asks the blocked-client fast path
(:mod:`fastpath`) whether the socket peer is a block the gate already remembers; if so the refusal is sent from
prebuilt messages, counted and audited without the stack. Gates without a local block cache, shadow mode and
trusted-proxy peers always take the full path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import signal
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from stormguard.scoring.stores.pool import PoolCollector
from stormguard.server.context import RequestContext
from stormguard.server.hub.backlog import SlowReaderGuard
from stormguard.server.hub.history import AsyncHistoryBackend, HistoryBackend
from stormguard.server.hub.history_redis import history_from_url
from stormguard.server.hub.page import page_routes
from stormguard.server.hub.sse import RAW_SEND_KEY, EventsEndpoint, PublishEndpoint, Stream
from stormguard.server.hub.topics import Hub
from stormguard.server.layers.breaker import BreakerMiddleware, CircuitBreaker
from stormguard.server.layers.fastpath import BlockedFastPath
from stormguard.server.layers.fastpath import build as build_fast_path
from stormguard.server.layers.gate import ReputationGate, ReputationGateMiddleware
from stormguard.server.layers.headlimit import HEAD_REFUSALS
from stormguard.server.layers.identity import IdentityMiddleware, TrustedProxies
from stormguard.server.layers.limiter import GcraBuckets, LimiterMiddleware
from stormguard.server.layers.quota import QuotaMiddleware, StreamQuota, TieredStreamQuota
from stormguard.server.layers.refuse import Refuser
from stormguard.server.layers.reputation_gate import ReputationService
from stormguard.server.layers.retry import RetryChooser
from stormguard.server.ops.audit import AuditLog
from stormguard.server.ops.bounds import ClientStateBounds
from stormguard.server.ops.loopmon import LoopMonitor
from stormguard.server.ops.metrics import BREAKER_STATES, Metrics
from stormguard.server.ops.settings import ServerSettings

Observer = Callable[[str, RequestContext, dict[str, Any]], None]
SSE_PATHS = ("/events",)


class Runtime:
    """Everything the layers and endpoints share, built once per app (``app.state.stormguard``)."""

    def __init__(self, settings: ServerSettings, *, history: HistoryBackend | AsyncHistoryBackend | None = None,
                 observers: Sequence[Observer] = ()) -> None:
        s = self.settings = settings
        self.metrics = m = Metrics()
        self.observers = list(observers)
        self.audit_drops = 0
        self.audit = AuditLog(s.audit_path, max_queue=s.audit_queue_size, on_drop=self._audit_dropped)
        self.retry = RetryChooser(s.retry_base_ms, s.retry_tier_factor, load_gain=s.retry_load_gain,
                                  degrade_factor=s.retry_degrade_factor, jitter=s.retry_jitter,
                                  shutdown_jitter=s.retry_shutdown_jitter, min_ms=s.retry_min_ms,
                                  max_ms=s.retry_max_ms)
        self.breaker = CircuitBreaker(window=s.breaker_window, buckets=s.breaker_buckets,
                                      threshold=s.breaker_threshold, min_requests=s.breaker_min_requests,
                                      open_timeout=s.breaker_open_timeout, probes=s.breaker_probes,
                                      on_change=self._breaker_changed)
        self.loopmon = LoopMonitor(interval=s.loop_monitor_interval, threshold=s.loop_lag_threshold,
                                   on_lag=lambda lag: self.breaker.record_failure("loop_lag"),
                                   on_sample=m.loop_lag.set)
        m.loop_lag_max.set_function(lambda: self.loopmon.max_lag)
        if history is None:
            history = history_from_url(s.history_url, max_events=s.history_max_events,
                                       max_age=s.history_max_age, prefix=s.history_prefix)
        self.slow_reader = SlowReaderGuard(s.slow_reader_timeout, s.slow_reader_max_bytes)
        self.slow_reader.bind_metrics(m.registry)
        self.hub = Hub(history, heartbeat=s.heartbeat_interval, on_evict=self._evicted, slow_reader=self.slow_reader)
        self.refuser = Refuser(retry=self.retry, actions=s.refusal_actions, load=self.load, metrics=m,
                               audit=self.audit, shadow=s.shadow, sse_paths=SSE_PATHS,
                               on_refusal=self._refused if self.observers else None)
        self.ip_buckets = GcraBuckets(s.ip_rate, s.ip_burst, max_entries=s.limiter_max_entries,
                                      on_evict=lambda lossless: self._limiter_evicted("ip", lossless))
        self.token_buckets = GcraBuckets(s.token_rate, s.token_burst, max_entries=s.limiter_max_entries,
                                         on_evict=lambda lossless: self._limiter_evicted("token", lossless))
        self.shared_limiter: Any = None
        if s.limiter_url:
            from prometheus_client import Counter
            from stormguard.server.layers.limiter_redis import RedisGcra

            fallbacks = Counter("stormguard_limiter_fallbacks", "Limiter decisions made by the local buckets "
                                "because the shared (Redis) limiter was unavailable", ["kind"], registry=m.registry)
            self.shared_limiter = RedisGcra.from_url(
                s.limiter_url, self.ip_buckets, self.token_buckets, prefix=s.limiter_prefix,
                on_fallback=lambda kind: m.child(fallbacks, "token" if kind == "tok" else kind).inc())
        self.client_state = bounds = ClientStateBounds()    # every per-client structure: size, bound, evictions
        m.registry.register(bounds)
        self._limiter_drops = {"ip": 0, "token": 0}
        bounds.add("limiter_ip", lambda: len(self.ip_buckets), s.limiter_max_entries,
                   lambda: self._limiter_drops["ip"])
        bounds.add("limiter_token", lambda: len(self.token_buckets), s.limiter_max_entries,
                   lambda: self._limiter_drops["token"])
        audit = self.audit
        bounds.add("audit_queue", lambda: len(audit._queue), audit.max_queue, lambda: self.audit_drops)
        self.redis_pools = PoolCollector()     # every Redis pool of this process: sizes, waits, timeouts
        m.registry.register(self.redis_pools)
        if self.shared_limiter is not None:
            self.redis_pools.add("limiter", getattr(self.shared_limiter.client, "connection_pool", None))  # none on a Cluster
        self.redis_pools.add("history", getattr(getattr(history, "client", None), "connection_pool", None))
        m.limiter_entries.labels("ip").set_function(lambda: len(self.ip_buckets))
        m.limiter_entries.labels("token").set_function(lambda: len(self.token_buckets))
        m.breaker_state.set(0)
        for reason, tally in HEAD_REFUSALS.items():   # counted by the HTTP protocol, below the app
            m.rejected.tallies[("head", reason)] = tally
        self.active_by_tier: dict[str, int] = {}
        self._restore_signals: list[tuple[int, Any]] = []
        self.reputation: ReputationService | None = None
        self.fast_path: BlockedFastPath | None = None
        self.ops: Any = None              # stormguard.server.ops.operate.Operations (quota table, controller, admin)

    # -- load and accounting ------------------------------------------------------------------------------------
    def load(self) -> float:
        """Server load in [0, 1] for the retry chooser: the worst of streams/capacity, loop lag, breaker state."""
        streams = len(self.hub.streams) / max(1, self.settings.stream_capacity)
        lag = self.loopmon.lag / max(1e-6, self.settings.loop_lag_threshold)
        breaker = 1.0 if self.breaker.state == "open" else 0.5 if self.breaker.state == "half_open" else 0.0
        return min(1.0, max(streams, lag, breaker))

    def emit(self, kind: str, ctx: RequestContext, **info: Any) -> None:
        for observer in self.observers:
            observer(kind, ctx, info)

    def stream_opened(self, stream: Stream) -> None:
        tier = stream.ctx.tier
        self.metrics.child(self.metrics.connections, tier).inc()
        self.metrics.child(self.metrics.active, tier).inc()
        if self.observers:
            self.emit("open", stream.ctx, topics=stream.topics)

    def stream_closed(self, stream: Stream) -> None:
        self.metrics.child(self.metrics.active, stream.ctx.tier).dec()
        if self.observers:
            self.emit("close", stream.ctx, reason=stream.close_reason)

    def _evicted(self, stream: Stream, reason: str) -> None:
        ctx = stream.ctx
        self.metrics.child(self.metrics.evictions, reason).inc()
        self.audit.record(client=ctx.identity.ip, tier=ctx.tier, score=ctx.score, layer="hub", reason=reason,
                          action="evict")
        if self.observers:
            self.emit("eviction", ctx, reason=reason)

    def _refused(self, ctx: RequestContext, layer: str, reason: str, action: str) -> None:
        self.emit("refusal", ctx, layer=layer, reason=reason, action=action)

    def _audit_dropped(self) -> None:
        self.audit_drops += 1
        self.metrics.audit_dropped.inc()

    def _limiter_evicted(self, kind: str, lossless: bool) -> None:
        self._limiter_drops[kind] += 1
        if not lossless:
            self.metrics.child(self.metrics.limiter_evictions, kind, "false").inc()

    def _breaker_changed(self, state: str) -> None:
        self.metrics.breaker_state.set(BREAKER_STATES[state])
        self.metrics.child(self.metrics.breaker_transitions, state).inc()
        self.audit.record(client="-", layer="breaker", reason="transition", action=state)

    # -- lifecycle ----------------------------------------------------------------------------------------------
    async def startup(self) -> None:
        self.hub.start()
        self.loopmon.start()
        self.audit.start()
        self._hook_signals()
        gc.collect()
        gc.freeze()      # start-up objects out of the GC's way (DESIGN.md: full collections stall the loop)

    async def shutdown(self) -> None:
        self.hub.begin_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace
        while self.hub.streams and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await self.hub.stop()
        await self.loopmon.stop()
        await self.audit.stop()
        if self.shared_limiter is not None:
            with contextlib.suppress(Exception):
                await self.shared_limiter.close()
        for sig, handler in self._restore_signals:
            with contextlib.suppress(ValueError, TypeError):
                if signal.getsignal(sig) is not handler:
                    continue
                signal.signal(sig, handler.__wrapped__)  # type: ignore[attr-defined]
        self._restore_signals.clear()

    def _hook_signals(self) -> None:
        """Chain onto the server's SIGTERM/SIGINT handler so streams close *before* the server waits for them.

        uvicorn waits for open connections before it runs lifespan shutdown, so an SSE app that waits for the
        lifespan event never closes its streams (the classic hang). uvicorn installs its handlers with
        ``signal.signal`` before lifespan start-up and restores its own saved originals afterwards, so wrapping
        the current handler here is undone cleanly. Without a Python-level handler (other servers) nothing is
        wrapped and lifespan shutdown closes the streams.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue

            def handler(signum: int, frame: Any, _previous: Callable[..., Any] = previous) -> None:
                loop.call_soon_threadsafe(self.hub.begin_shutdown)
                _previous(signum, frame)

            handler.__wrapped__ = previous  # type: ignore[attr-defined]
            signal.signal(sig, handler)
            self._restore_signals.append((sig, handler))


class StormguardApp(Starlette):
    """Starlette, plus the server's own ``send`` kept in the scope so a stuck stream can be aborted (see sse.py),
    plus the blocked-client fast path (:mod:`fastpath`) ahead of Starlette's own middleware stack."""

    fast_path: BlockedFastPath | None = None
    conn_log: Any = None          # server/ops/connlog.ConnLog when --conn-log is set

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.conn_log is not None and scope["type"] == "http":
            from stormguard.server.ops.connlog import logged

            scope[RAW_SEND_KEY] = send  # the server's own send, not the log's wrapper (its transport, its socket)
            await logged(self._serve, self.conn_log, scope, receive, send)
            return
        await self._serve(scope, receive, send)

    async def _serve(self, scope: Any, receive: Any, send: Any) -> None:
        fast = self.fast_path
        if fast is not None and scope["type"] == "http":
            refusal = fast.check(scope)          # a known-blocked address: answered before the Starlette stack
            if refusal is not None:
                await send(refusal[0])
                await send(refusal[1])
                return
        scope.setdefault(RAW_SEND_KEY, send)
        await super().__call__(scope, receive, send)


@dataclasses.dataclass
class Stack:
    """The defence layers and what runs them, ready to wrap an app: :func:`create_app` wraps the hub with it,
    :func:`stormguard.server.mount.protect` any Starlette or FastAPI app."""

    rt: Runtime
    middleware: list[Middleware]
    lifespan: Callable[[Any], contextlib.AbstractAsyncContextManager[None]]
    fast_path: BlockedFastPath | None


def _quota_leases(s: ServerSettings, rt: Runtime) -> Any:
    """The shared stream-count leases when ``quota_url`` names a Redis (server/layers/quota_shared.py)."""
    if not s.quota_url:
        return None
    from prometheus_client import Counter
    from stormguard.server.layers.quota_shared import LeaseCounter

    m = rt.metrics
    fallbacks = Counter("stormguard_quota_fallbacks", "Streams counted by this process alone because the shared "
                        "(Redis) quota leases were unavailable", ["kind"], registry=m.registry)
    return LeaseCounter.from_url(s.quota_url, prefix=s.quota_prefix, lease=s.quota_lease_seconds,
                                 on_fallback=lambda kind: m.child(fallbacks, "tenant" if kind == "t" else "client").inc())


async def _initialize_cluster_clients(rt: Runtime, leases: Any, reputation: Any) -> None:
    """Redis Cluster clients of the shared state initialized before the first request (see
    :func:`~stormguard.server.layers.quota_shared.initialize_cluster_clients`)."""
    from stormguard.server.layers.quota_shared import initialize_cluster_clients

    history = rt.hub.history
    store = getattr(getattr(reputation, "store", None), "primary", getattr(reputation, "store", None))
    await initialize_cluster_clients(getattr(rt.shared_limiter, "client", None), getattr(leases, "client", None),
                                     getattr(history, "client", None), getattr(history, "reader", None),
                                     getattr(store, "client", None))


def build_stack(settings: ServerSettings | None = None, *, reputation_gate: ReputationGate | None = None,
                quota: StreamQuota | None = None, tier_of: Callable[[RequestContext], str] | None = None,
                observers: Sequence[Observer] = (), history: HistoryBackend | AsyncHistoryBackend | None = None,
                reputation: ReputationService | None = None, model: Any = None,
                sse_paths: tuple[str, ...] = SSE_PATHS) -> Stack:
    """Identity → breaker → reputation gate → (tenants) → limiter → quota, their runtime and its lifespan.
    ``sse_paths`` are the stream routes the quota layer counts (and refusals treat as EventSource)."""
    s = settings or ServerSettings()
    if reputation is not None:
        reputation_gate = reputation_gate or reputation.gate
        observers = [*observers, *reputation.observers]
    rt = Runtime(s, history=history, observers=observers)
    rt.reputation = reputation
    if reputation is not None:
        reputation.bind(rt)
        primary = getattr(reputation.store, "primary", reputation.store)
        rt.redis_pools.add("store", getattr(getattr(primary, "client", None), "connection_pool", None))
    scorer = None
    if model is not None and reputation is not None:  # live model scoring, off the accept path (scoring_task.py)
        from stormguard.server.live.model import ModelScorer

        scorer = ModelScorer.for_runtime(model, rt, interval=s.model_interval)
        rt.client_state.add("model_pending", lambda: len(scorer), scorer.max_pending, lambda: scorer.dropped)
    exempt = tuple(s.exempt_paths)
    from stormguard.server.ops.operate import Operations

    rt.ops = ops = Operations(rt, s, reputation=reputation)
    leases = _quota_leases(s, rt) if quota is None else None
    if leases is not None:
        rt.redis_pools.add("quota", getattr(leases.client, "connection_pool", None))  # none on a Cluster
    if quota is None:
        def default_tier_of(ctx: RequestContext) -> str:
            return ctx.tier if ctx.tier in s.tiers else s.default_tier

        if leases is not None:   # stream counts as leases shared by every process on the store (issue 18)
            from stormguard.server.layers.quota_shared import SharedTieredQuota

            quota = SharedTieredQuota(s.tiers, leases, default_tier=s.default_tier,
                                      tier_of=lambda ctx: ops.tier_of(ctx, tier_of or default_tier_of))
        else:
            quota = TieredStreamQuota(s.tiers, default_tier=s.default_tier,
                                      tier_of=lambda ctx: ops.tier_of(ctx, tier_of or default_tier_of))
    open_by_client = getattr(quota, "open", None)
    if isinstance(open_by_client, dict):     # one entry per client with open streams: bounded by the streams
        rt.client_state.add("quota_open", lambda: len(open_by_client), lambda: len(rt.hub.streams))
    verifier = None
    if s.jwt_secret or s.jwt_public_key:
        from stormguard.server.layers.tenants import JwtVerifier, TenantStreamQuota

        verifier = JwtVerifier(secret=s.jwt_secret, public_key=s.jwt_public_key, audience=s.jwt_audience,
                               issuer=s.jwt_issuer, leeway=s.jwt_leeway, tenant_claim=s.tenant_claim)
        if leases is not None:
            from stormguard.server.layers.quota_shared import SharedTenantQuota

            quota = SharedTenantQuota(quota, leases, default_pool=s.tenant_streams, pools=s.tenant_pools)
        else:
            quota = TenantStreamQuota(quota, default_pool=s.tenant_streams, pools=s.tenant_pools)
        ops.jwt_keys = verifier.keys        # admin JWTs (role claim) are checked with the same keys
    ops.table.bind_quota(quota)          # the quota layer reads the live (dynamic) quota table

    def malformed(header: str) -> None:
        rt.metrics.child(rt.metrics.malformed, header).inc()

    def degraded(kind: str) -> None:
        rt.metrics.child(rt.metrics.degraded, f"limiter-{kind}").inc()

    def warned(ctx: RequestContext, reason: str) -> None:
        rt.audit.record(client=ctx.identity.ip, tier=ctx.tier, score=ctx.score, layer="limiter", reason=reason,
                        action="warn", tenant=ctx.extra.get("tenant"))

    trusted = TrustedProxies(s.trusted_proxies)
    rt.client_state.add("identity_peers", trusted.cached, TrustedProxies.CACHE_SIZE)
    middleware = [
        Middleware(IdentityMiddleware, trusted_proxies=trusted, proxy_headers=s.proxy_headers,
                   ja3_header=s.ja3_header, ja4_header=s.ja4_header, sni_header=s.sni_header, on_malformed=malformed),
        Middleware(BreakerMiddleware, breaker=rt.breaker, refuser=rt.refuser, exempt_paths=exempt),
    ]
    gate_paths = tuple(s.reputation_paths) if reputation is not None else None
    if s.challenge and reputation is not None:
        gate_paths = None  # the challenge needs every page load's tier: the gate reads the store on every path
    if reputation_gate is not None:
        middleware.append(Middleware(ReputationGateMiddleware, gate=reputation_gate, refuser=rt.refuser,
                                     exempt_paths=exempt, paths=gate_paths))
    if s.challenge:
        from stormguard.server.layers.challenge import ChallengeMiddleware, Challenger

        tier_order = tuple(reversed([t for t in s.tiers if t != "blocked"]))   # low … trusted
        challenger = Challenger(s.challenge_secret or None, difficulty=s.challenge_difficulty, ttl=s.challenge_ttl,
                                tiers=tier_order)
        middleware.append(Middleware(ChallengeMiddleware, challenger=challenger, exempt_paths=exempt,
                                     on_outcome=lambda outcome: rt.metrics.child(rt.metrics.challenges,
                                                                                 outcome).inc()))
    if verifier is not None:
        from stormguard.server.layers.tenants import TenantMiddleware

        middleware.append(Middleware(TenantMiddleware, verifier=verifier, refuser=rt.refuser,
                                     paths=tuple(s.jwt_paths), required=s.jwt_required,
                                     query_param=s.jwt_query_param))
        if s.tenant_limits:
            from stormguard.server.layers.tenant_limits import TenantLimiter

            pools = quota
            middleware.append(Middleware(TenantLimiter, limits=s.tenant_limits, refuser=rt.refuser,
                                         paths=tuple(s.jwt_paths), max_entries=s.limiter_max_entries,
                                         pool_open=lambda tenant: pools.open.get(tenant, 0),
                                         on_degrade=lambda kind: degraded(f"tenant-{kind}"), on_warn=warned))
    middleware += [
        Middleware(LimiterMiddleware, refuser=rt.refuser, ip_buckets=rt.ip_buckets, token_buckets=rt.token_buckets,
                   ip_soft_remaining=s.ip_soft_remaining, token_soft_remaining=s.token_soft_remaining,
                   paths=None if "*" in s.limited_paths else tuple(s.limited_paths), exempt_paths=exempt, on_degrade=degraded, on_warn=warned,
                   shared=rt.shared_limiter),
        Middleware(QuotaMiddleware, quota=quota, refuser=rt.refuser, paths=sse_paths),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await rt.startup()
        await _initialize_cluster_clients(rt, leases, reputation)
        if leases is not None:
            leases.start()
        if reputation is not None:
            await reputation.start()
        if scorer is not None:
            scorer.start(rt)
        await ops.start()
        try:
            yield
        finally:
            await ops.stop()
            await rt.shutdown()
            if leases is not None:
                await leases.close()
            if scorer is not None:
                await scorer.stop()
            if reputation is not None:
                await reputation.stop()

    rt.fast_path = fast = build_fast_path(settings=s, gate=reputation_gate, refuser=rt.refuser, breaker=rt.breaker,
                                          audit=rt.audit, exempt_paths=exempt, paths=gate_paths, sse_paths=sse_paths)
    if fast is not None:
        rt.client_state.add("fastpath_audit", lambda: len(fast._audited), fast.max_audit_keys)
        if fast.trusted is not None:
            rt.client_state.add("fastpath_peers", fast.trusted.cached, TrustedProxies.CACHE_SIZE)
        rt.metrics.fast_refusals.set_function(lambda: fast.refusals)
    return Stack(rt=rt, middleware=middleware, lifespan=lifespan, fast_path=fast)


def create_app(settings: ServerSettings | None = None, *, reputation_gate: ReputationGate | None = None,
               quota: StreamQuota | None = None, tier_of: Callable[[RequestContext], str] | None = None,
               observers: Sequence[Observer] = (), history: HistoryBackend | AsyncHistoryBackend | None = None,
               reputation: ReputationService | None = None, model: Any = None) -> StormguardApp:
    """The stormguard app: the hub's routes behind :func:`build_stack`. See the module docstring for the seams."""
    s = settings or ServerSettings()
    stack = build_stack(s, reputation_gate=reputation_gate, quota=quota, tier_of=tier_of, observers=observers,
                        history=history, reputation=reputation, model=model)
    rt = stack.rt

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok" if not rt.hub.closing else "closing", "streams": len(rt.hub.streams),
                             "breaker": rt.breaker.state, "loop_lag": round(rt.loopmon.lag, 4)},
                            status_code=200 if not rt.hub.closing else 503)

    async def metrics(request: Request) -> Response:
        body, content_type = rt.metrics.render()
        return Response(body, media_type=content_type)

    routes = [
        Route("/events", EventsEndpoint(rt)),
        Route("/publish", PublishEndpoint(rt)),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *page_routes(("/demo",)),  # the EventSource demo page the README points browsers at
    ]
    if s.enable_test_routes:
        routes += _test_routes(rt)

    conn_log = None
    if s.conn_log:
        from stormguard.server.ops.connlog import ConnLog

        conn_log = ConnLog(s.conn_log, max_bytes=s.conn_log_max_bytes, backups=s.conn_log_backups)
        rt.client_state.add("conn_log_queue", lambda: len(conn_log._queue), conn_log.max_queue,
                            lambda: conn_log.dropped)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with stack.lifespan(app):
            if conn_log is not None:
                conn_log.start()
            try:
                yield
            finally:
                if conn_log is not None:
                    await conn_log.stop()

    app = StormguardApp(routes=routes, middleware=stack.middleware, lifespan=lifespan)
    app.state.stormguard = rt
    app.fast_path = stack.fast_path
    app.conn_log = conn_log
    return app


def _test_routes(rt: Runtime) -> list[Route]:
    """Routes that fail on purpose, for tests only (``enable_test_routes``): never on in production."""
    import time

    async def error(request: Request) -> Response:
        if request.query_params.get("ok"):
            return PlainTextResponse("ok\n")
        raise RuntimeError("test route: deliberate failure")

    async def block(request: Request) -> Response:
        time.sleep(min(float(request.query_params.get("seconds", "0.1")), 5.0))   # stalls the loop on purpose
        return PlainTextResponse("blocked the loop\n")

    async def slow(request: Request) -> Response:
        await asyncio.sleep(min(float(request.query_params.get("seconds", "0.5")), 5.0))
        return PlainTextResponse("slow ok\n")

    async def whoami(request: Request) -> Response:
        ctx = request.scope["stormguard"]
        ident = ctx.identity
        return JSONResponse({"ip": ident.ip, "peer_ip": ident.peer_ip, "via_proxy": ident.via_proxy,
                             "ja3": ident.ja3, "ja4": ident.ja4, "sni": ident.sni, "alpn": ident.alpn, "tier": ctx.tier,
                             "state": request.state.stormguard is ctx})

    async def reputation(request: Request) -> Response:
        """The in-process store (memory://) as the ``stormguard reputation`` CLI would change a shared one."""
        service = rt.reputation
        if service is None:
            return JSONResponse({"error": "no reputation store"}, status_code=404)
        q = request.query_params
        op, key, store = q.get("op", "get"), q.get("key", ""), service.store
        if op == "block":
            rep = await store.block(key, store.now() + float(q.get("seconds", "300")), "manual-block")
        elif op == "unblock":
            rep = await store.unblock(key, "manual-unblock")
        elif op == "set":
            rep = await store.set(key, float(q.get("score", "0")), "manual")
        else:
            rep = await store.get(key)
        return JSONResponse(rep.as_dict())

    async def memory(request: Request) -> Response:
        """Live interpreter memory blocks and every per-client structure's size (bounded-state tests)."""
        import sys

        gc.collect()
        return JSONResponse({"blocks": sys.getallocatedblocks(),
                             "structures": {k: list(v) for k, v in rt.client_state.snapshot().items()}})

    return [Route("/_test/error", error), Route("/_test/block", block), Route("/_test/slow", slow),
            Route("/_test/whoami", whoami), Route("/_test/reputation", reputation), Route("/_test/memory", memory)]


def create_app_from_env() -> Starlette:
    """uvicorn ``--factory`` entry: settings from ``$STORMGUARD_SERVER_SETTINGS`` (set by ``stormguard serve``);
    the reputation store, rules and threshold from the config (``$STORMGUARD_CONFIG``, ``STORMGUARD_STORE_URL``…)."""
    settings = ServerSettings.from_env()
    reputation = None
    if settings.reputation:
        from stormguard.config import load_config

        reputation = ReputationService.from_config(load_config(), settings)
    from stormguard.server.live.model import resolve_model

    model = resolve_model(settings.model) if settings.reputation and settings.live_rules else None
    return create_app(settings, reputation=reputation, model=model)
