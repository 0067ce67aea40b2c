"""The admin HTTP API (JSON in and out), served on its own listener (``stormguard serve --admin-port PORT``).

Routes (all behind :mod:`admin_auth`; every request audited and counted):

* ``GET /admin/clients/{key}`` — score, tier, reasons, block-until, live streams, last seen, fingerprints, override
* ``PUT /admin/clients/{key}`` — ``{"score": S, "reason": "..."}`` or ``{"tier": T, "ttl": s, "reason": "..."}``
  (tier ``blocked`` blocks in the store for ``ttl``; another tier overrides the stream tier for ``ttl``)
* ``DELETE /admin/clients/{key}/block`` — unblock (and drop a tier override)
* ``GET /admin/top?n=20&order=lowest|highest``
* ``GET /admin/quotas``, ``PUT /admin/quotas`` — see :meth:`QuotaTable.update`
* ``GET /admin/state`` — breaker, dynamic threshold and its inputs, controller signals and decisions
* ``POST /admin/alerts`` — Alertmanager webhook (payload version 4)
* ``GET /admin/dashboard`` (+ ``/admin/dashboard/stream``) and ``/admin/login`` — :mod:`dashboard`

Bad input is a 400 naming the field at fault (``{"error": ..., "field": ...}``), an unknown client a 404.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from stormguard.server.ops.admin_auth import PRINCIPAL_KEY, AdminAudit, AdminAuth, Credentials
from stormguard.server.ops.quota_table import QuotaError

ADMIN_TOKEN_ENV = "STORMGUARD_ADMIN_TOKEN"
MAX_TTL = 30 * 86400.0
MAX_BODY = 1 << 20


class BadRequest(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def bad(field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=400)


async def json_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BadRequest("body", f"larger than {MAX_BODY} bytes")
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise BadRequest("body", f"not JSON: {exc}") from None


def who(request: Request) -> str:
    return str(request.scope.get(PRINCIPAL_KEY, "-"))


def credentials_for(s: Any, jwt_keys: dict[str, Any]) -> Credentials:
    return Credentials(token=os.environ.get(ADMIN_TOKEN_ENV) or s.admin_token, jwt_keys=jwt_keys,
                       audience=s.jwt_audience, issuer=s.jwt_issuer,
                       leeway=s.jwt_leeway, role_claim=s.admin_role_claim, role=s.admin_role,
                       cookie_max_age=s.admin_cookie_max_age)


class AdminApi:
    """The route handlers over one :class:`~stormguard.server.ops.operate.Operations`."""

    def __init__(self, ops: Any) -> None:
        self.ops = ops
        self.rt = ops.rt

    # -- helpers ------------------------------------------------------------------------------------------------
    @property
    def service(self) -> Any:
        return self.ops.reputation

    def _tier(self, rep: Any, now: float) -> str:
        engine = self.service.engine
        return engine.classify(rep, now, engine.block_score(ip=rep.key)).tier.name

    def _streams_of(self, key: str) -> list[dict[str, Any]]:
        return [{"topics": list(st.topics), "tier": st.ctx.tier} for st in list(self.rt.hub.streams)
                if st.ctx.identity.ip == key]

    async def _client(self, key: str) -> dict[str, Any] | None:
        store = self.service.store
        now = store.now()
        rep = await store.get(key, now)
        streams = self._streams_of(key)
        seen = self.ops.seen.get(key)
        override = self.ops.overrides.get(key)
        known = bool(rep.reasons or rep.block_until or rep.last_bad or rep.score != store.options.initial_score)
        if not (known or streams or seen or override):
            return None
        fingerprints = {k: seen[k] for k in ("ja3", "ja4", "sni", "user_agent") if seen and k in seen}
        return {"key": key, "score": round(rep.score, 3), "tier": self._tier(rep, now),
                "reasons": list(rep.reasons), "block_until": rep.block_until or None, "blocked": rep.blocked(now),
                "last_bad": rep.last_bad or None, "updated": rep.updated,
                "live_streams": len(streams), "streams": streams[:50],
                "last_seen": seen["last_seen"] if seen else None,
                "connections": {"opened": seen["opened"], "refused": seen["refused"],
                                "last_refusal": seen.get("last_refusal")} if seen else None,
                "fingerprints": fingerprints,
                "override": {"tier": override[0], "until": override[1], "reason": override[2]} if override else None}

    def _no_store(self) -> JSONResponse:
        return JSONResponse({"error": "the reputation store is off ([server] reputation = false)"}, status_code=503)

    # -- clients ------------------------------------------------------------------------------------------------
    async def get_client(self, request: Request) -> JSONResponse:
        if self.service is None:
            return self._no_store()
        key = request.path_params["key"]
        out = await self._client(key)
        if out is None:
            return JSONResponse({"error": f"unknown client {key!r}", "field": "key"}, status_code=404)
        return JSONResponse(out)

    async def put_client(self, request: Request) -> JSONResponse:
        if self.service is None:
            return self._no_store()
        key = request.path_params["key"]
        if not key or len(key) > 256:
            return bad("key", "client keys are 1..256 characters")
        try:
            body = await json_body(request)
            change = self._client_change(body)
        except BadRequest as exc:
            return bad(exc.field, exc.message)
        store, gate = self.service.store, self.service.gate
        reason = change["reason"]
        if "score" in change:
            await store.set(key, change["score"], reason)
            self.ops.changed("client_score", who(request), key, score=change["score"], why=reason)
        elif change["tier"] == "blocked":
            await store.block(key, store.now() + change["ttl"], reason)
            self.ops.overrides.drop(key)
            self.ops.changed("client_block", who(request), key, ttl=change["ttl"], why=reason)
        else:
            self.ops.overrides.set(key, change["tier"], store.now() + change["ttl"], reason)
            self.ops.changed("client_tier", who(request), key, tier=change["tier"], ttl=change["ttl"], why=reason)
        gate.forget(key)             # the gate's local block memory must not outlive the change
        return JSONResponse(await self._client(key))

    def _client_change(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("body", 'expected {"score": S} or {"tier": T, "ttl": seconds, "reason": "..."}')
        unknown = sorted(set(body) - {"score", "tier", "ttl", "reason"})
        if unknown:
            raise BadRequest(unknown[0], "unknown field (score, tier, ttl, reason)")
        reason = body.get("reason", "admin")
        if not isinstance(reason, str) or not 1 <= len(reason) <= 200:
            raise BadRequest("reason", "expected a string of 1..200 characters")
        if ("score" in body) == ("tier" in body):
            raise BadRequest("score", "give exactly one of score or tier")
        if "score" in body:
            s = body["score"]
            if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or not -100 <= s <= 100:
                raise BadRequest("score", f"expected a number in [-100, 100], got {s!r}")
            if "ttl" in body:
                raise BadRequest("ttl", "a score decays by itself; ttl goes with tier")
            return {"score": float(s), "reason": reason}
        tiers = [*self.ops.table.tiers, "blocked"]
        if body["tier"] not in tiers:
            raise BadRequest("tier", f"expected one of {', '.join(tiers)}")
        ttl = body.get("ttl")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL:
            raise BadRequest("ttl", f"expected seconds in (0, {MAX_TTL:g}]")
        return {"tier": body["tier"], "ttl": float(ttl), "reason": reason}

    async def unblock(self, request: Request) -> JSONResponse:
        if self.service is None:
            return self._no_store()
        key = request.path_params["key"]
        if await self._client(key) is None:
            return JSONResponse({"error": f"unknown client {key!r}", "field": "key"}, status_code=404)
        await self.service.store.unblock(key, "admin-unblock")
        self.service.gate.forget(key)
        self.ops.overrides.drop(key)
        self.ops.changed("client_unblock", who(request), key)
        return JSONResponse(await self._client(key))

    async def top(self, request: Request) -> JSONResponse:
        if self.service is None:
            return self._no_store()
        q = request.query_params
        raw_n = q.get("n", "20")
        if not raw_n.isdigit() or not 1 <= int(raw_n) <= 1000:
            return bad("n", f"expected an integer in [1, 1000], got {raw_n!r}")
        order = q.get("order", "lowest")
        if order not in ("lowest", "highest"):
            return bad("order", "expected lowest or highest")
        store = self.service.store
        now = store.now()
        reps = await store.top(int(raw_n), worst=order == "lowest", now=now)
        return JSONResponse({"order": order, "clients": [
            {"key": r.key, "score": round(r.score, 3), "tier": self._tier(r, now), "reasons": list(r.reasons),
             "block_until": r.block_until or None} for r in reps]})

    # -- quotas, state, alerts ----------------------------------------------------------------------------------
    async def get_quotas(self, request: Request) -> JSONResponse:
        return JSONResponse(self.ops.table.as_dict())

    async def put_quotas(self, request: Request) -> JSONResponse:
        try:
            body = await json_body(request)
            out = self.ops.table.update(body)
        except BadRequest as exc:
            return bad(exc.field, exc.message)
        except QuotaError as exc:
            return bad(exc.field, exc.message)
        self.ops.changed("quotas", who(request), body=json.dumps(body, separators=(",", ":"))[:2000])
        return JSONResponse(out)

    def state_dict(self) -> dict[str, Any]:
        rt = self.rt
        total, failed = rt.breaker.counts()
        out: dict[str, Any] = {
            "breaker": {"state": rt.breaker.state, "window_total": total, "window_failures": failed,
                        "threshold": rt.breaker.threshold},
            "load": round(rt.load(), 4),
            "streams": len(rt.hub.streams),
            "controller": self.ops.controller.state(),
            "threshold": None,
        }
        service = self.service
        if service is not None:
            th = service.threshold
            value = float(service.engine.block_score())
            out["threshold"] = {"value": value} if th is None else {
                "value": value, "base": th.base, "fail_rate": round(th.fail_rate, 6),
                "fail_weight": th.cfg.fail_weight, "heat_weight": th.cfg.heat_weight,
                "override": th.cfg.override, "hot_groups": len(th._heat),
                "window_seconds": th.cfg.window_seconds, "interval_seconds": th.cfg.interval_seconds}
            out["ranges"] = len(service.ranges)
            bridge = service.crowdsec
            if bridge is not None:
                imp, exp = bridge.importer, bridge.exporter
                out["crowdsec"] = {
                    "import": None if imp is None else {
                        "connected": imp.stats.connected, "pulls": imp.stats.pulls, "applied": imp.stats.applied,
                        "lifted": imp.stats.lifted, "errors": imp.stats.errors, "skipped": imp.stats.skipped,
                        "last_error": imp.stats.last_error},
                    "export": None if exp is None else {
                        "connected": exp.stats.connected, "queued": len(exp.spool), "pushed": exp.stats.pushed,
                        "dropped": exp.spool.dropped, "expired": exp.stats.expired, "errors": exp.stats.errors,
                        "last_error": exp.stats.last_error}}
        return out

    async def state(self, request: Request) -> JSONResponse:
        return JSONResponse(self.state_dict())

    async def alerts(self, request: Request) -> JSONResponse:
        try:
            body = await json_body(request)
            alerts = self._alerts(body)
        except BadRequest as exc:
            return bad(exc.field, exc.message)
        applied, ignored = [], 0
        for name, status, fingerprint in alerts:
            d = self.ops.controller.alert(name, status, fingerprint)
            if d is None:
                ignored += 1
                continue
            applied.append(d.as_dict())
            self.ops.changed("alert", who(request), alert=name, status=status, step=d.action, quota=d.kind,
                             level_to=d.level_to)
        return JSONResponse({"applied": applied, "ignored": ignored, "levels": dict(self.ops.table.levels)})

    @staticmethod
    def _alerts(body: Any) -> list[tuple[str, str, str]]:
        if not isinstance(body, dict):
            raise BadRequest("body", "expected an Alertmanager webhook payload (a JSON object)")
        if str(body.get("version")) != "4":
            raise BadRequest("version", f"expected Alertmanager webhook payload version 4, got {body.get('version')!r}")
        items = body.get("alerts")
        if not isinstance(items, list):
            raise BadRequest("alerts", "expected a list")
        out = []
        for i, a in enumerate(items):
            if not isinstance(a, dict):
                raise BadRequest(f"alerts[{i}]", "expected an object")
            status = a.get("status")
            if status not in ("firing", "resolved"):
                raise BadRequest(f"alerts[{i}].status", f"expected firing or resolved, got {status!r}")
            labels = a.get("labels")
            if not isinstance(labels, dict) or not isinstance(labels.get("alertname"), str):
                raise BadRequest(f"alerts[{i}].labels.alertname", "missing")
            fingerprint = a.get("fingerprint")
            if fingerprint is None:          # older senders: the alert's identity is its labels and start
                fingerprint = json.dumps([sorted(labels.items()), a.get("startsAt")])
            elif not isinstance(fingerprint, str):
                raise BadRequest(f"alerts[{i}].fingerprint", "expected a string")
            out.append((labels["alertname"], status, fingerprint))
        return out


def admin_app(ops: Any) -> Starlette:
    """The admin Starlette app for one :class:`~stormguard.server.ops.operate.Operations`."""
    from stormguard.server.ops.dashboard import dashboard_routes

    api = AdminApi(ops)
    creds = credentials_for(ops.settings, ops.jwt_keys)

    def failed(status: int, reason: str) -> None:
        ops.auth_failures.labels(str(status), reason).inc()

    routes = [
        Route("/admin/clients/{key:path}", api.get_client, methods=["GET"]),
        Route("/admin/clients/{key:path}/block", api.unblock, methods=["DELETE"]),
        Route("/admin/clients/{key:path}", api.put_client, methods=["PUT"]),
        Route("/admin/top", api.top, methods=["GET"]),
        Route("/admin/quotas", api.get_quotas, methods=["GET"]),
        Route("/admin/quotas", api.put_quotas, methods=["PUT"]),
        Route("/admin/state", api.state, methods=["GET"]),
        Route("/admin/alerts", api.alerts, methods=["POST"]),
        *dashboard_routes(api, creds),
    ]
    middleware = [Middleware(AdminAudit, audit=ops.rt.audit, requests=ops.requests),
                  Middleware(AdminAuth, credentials=creds, on_failure=failed)]
    return Starlette(routes=routes, middleware=middleware)
