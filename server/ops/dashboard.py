"""The live dashboard: ``GET /admin/dashboard``, fed by ``GET /admin/dashboard/stream`` (EventSource, this server).

Browser login: ``/admin/login?token=...`` (or the form it shows, which POSTs the token) checks the credential like
the ``Authorization`` header would and sets the signed ``sg_admin`` cookie (see :mod:`admin_auth`), then redirects
to the dashboard; the page and its EventSource are then authenticated by the cookie. The page is self-contained:
inline JS and SVG charts, no external script or CDN.

Each update (every ``admin_stream_interval`` s) carries: open streams per tier, refusals by layer and reason, the
lowest-scored clients with their reasons, breaker state, the block threshold, the quota levels and effective
quotas, the controller's signals and its latest decisions.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from stormguard.server.ops.admin_auth import COOKIE, Credentials

MAX_STREAM_SECONDS = 3600.0      # a dashboard stream ends after an hour; the EventSource reconnects


async def snapshot(api: Any) -> dict[str, Any]:
    """One dashboard update (also ``GET /admin/dashboard/stream?once=1``)."""
    rt, ops = api.rt, api.ops
    m = rt.metrics
    tiers: dict[str, float] = {}
    for metric in m.active.collect():
        for sample in metric.samples:
            tiers[sample.labels.get("tier", "?")] = sample.value
    refusals = {f"{layer}/{reason}": t.n for (layer, reason), t in list(m.rejected.tallies.items()) if t.n}
    lowest: list[dict[str, Any]] = []
    if api.service is not None:
        store = api.service.store
        now = store.now()
        for r in await store.top(10, worst=True, now=now):
            lowest.append({"key": r.key, "score": round(r.score, 2), "tier": api._tier(r, now),
                           "reasons": list(r.reasons)})
    state = api.state_dict()
    quotas = ops.table.as_dict()
    return {"time": time.time(), "tiers": tiers, "streams": state["streams"], "refusals": refusals,
            "refusals_total": sum(refusals.values()), "lowest": lowest, "breaker": state["breaker"]["state"],
            "threshold": (state["threshold"] or {}).get("value"), "load": state["load"],
            "levels": quotas["levels"], "tier_quotas": {k: v["max_streams"] for k, v in quotas["tiers"].items()},
            "rates": {k: v["rate"] for k, v in quotas["rates"].items()},
            "controller": {k: v for k, v in state["controller"].items() if k != "decisions"},
            "decisions": state["controller"]["decisions"][-10:]}


def dashboard_routes(api: Any, creds: Credentials) -> list[Route]:
    settings = api.ops.settings
    listener_closing = lambda: api.ops.listener is not None and api.ops.listener.closing.is_set()  # noqa: E731

    async def login(request: Request) -> Response:
        token = request.query_params.get("token")
        if request.method == "POST":
            body = (await request.body())[:8192].decode("utf-8", "replace")
            token = dict(parse_qsl(body)).get("token")
        if not token:
            return HTMLResponse(LOGIN_PAGE)
        principal, failure = creds.check(token)
        if principal is None:
            status, reason = failure or (401, "wrong_token")
            api.ops.auth_failures.labels(str(status), reason).inc()
            return JSONResponse({"error": "unauthorized", "reason": reason}, status_code=status)
        api.ops.changed("login", principal)
        response = RedirectResponse("/admin/dashboard", status_code=303)
        response.set_cookie(COOKIE, creds.session(principal), max_age=settings.admin_cookie_max_age, path="/admin",
                            httponly=True, samesite="strict")
        return response

    async def page(request: Request) -> Response:
        return HTMLResponse(DASHBOARD_PAGE, headers={"cache-control": "no-store"})

    async def stream(request: Request) -> Response:
        if request.query_params.get("once"):
            return JSONResponse(await snapshot(api))
        interval = max(0.1, float(settings.admin_stream_interval))

        async def events() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            loop = asyncio.get_running_loop()
            end = loop.time() + MAX_STREAM_SECONDS
            n = 0
            while loop.time() < end and not listener_closing():
                n += 1
                data = json.dumps(await snapshot(api), separators=(",", ":"))
                yield f"id: {n}\nevent: snapshot\ndata: {data}\n\n".encode()
                await asyncio.sleep(interval)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    return [Route("/admin/login", login, methods=["GET", "POST"]),
            Route("/admin/dashboard", page, methods=["GET"]),
            Route("/admin/dashboard/stream", stream, methods=["GET"])]


LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>stormguard admin login</title></head>
<body style="font-family:sans-serif;margin:3em"><h1>stormguard admin</h1>
<form method="post" action="/admin/login"><label>Admin token or JWT <input name="token" type="password" id="token"
autofocus></label> <button type="submit" id="login">Log in</button></form></body></html>"""

DASHBOARD_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>stormguard dashboard</title>
<style>
body{font-family:system-ui,sans-serif;margin:1em;background:#f7f7f7;color:#222}
h1{font-size:1.3em;margin:0 0 .5em} h2{font-size:1em;margin:.2em 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:.8em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em}
table{border-collapse:collapse;width:100%;font-size:.85em} td,th{padding:2px 4px;text-align:left;border-bottom:1px solid #eee;overflow-wrap:anywhere}
.bar{background:#c0392b;height:10px;display:inline-block} .num{font-variant-numeric:tabular-nums}
.state-open{color:#c0392b;font-weight:bold} .state-closed{color:#27ae60} .state-half_open{color:#e67e22}
svg{background:#fcfcfc;border:1px solid #eee}
</style></head>
<body>
<h1>stormguard <span id="status">connecting…</span> · updates <span id="updates" class="num">0</span></h1>
<div class="grid">
 <div class="card"><h2>Open streams per tier</h2><table id="tiers"></table>
  <svg id="chart-streams" width="310" height="90" viewBox="0 0 310 90"><polyline id="line-streams" fill="none"
  stroke="#2980b9" stroke-width="2" points=""/></svg></div>
 <div class="card"><h2>Refusals (total <span id="refusals-total" class="num">0</span>, per second)</h2>
  <svg id="chart-refusals" width="310" height="90" viewBox="0 0 310 90"><polyline id="line-refusals" fill="none"
  stroke="#c0392b" stroke-width="2" points=""/></svg><table id="refusals"></table></div>
 <div class="card"><h2>Breaker · threshold · load</h2><table>
  <tr><th>breaker</th><td id="breaker"></td></tr><tr><th>block threshold</th><td id="threshold" class="num"></td></tr>
  <tr><th>load</th><td id="load" class="num"></td></tr><tr><th>rejection ratio</th><td id="ratio" class="num"></td></tr>
  </table></div>
 <div class="card"><h2>Quotas (levels below baseline)</h2><table id="quotas"></table></div>
 <div class="card"><h2>Lowest-scored clients</h2><table id="lowest"></table></div>
 <div class="card"><h2>Controller decisions</h2><table id="decisions"></table></div>
</div>
<script>
"use strict";
const HIST = 120, hist = {streams: [], refusals: []};
let updates = 0, prevTotal = null, prevTime = null;
function esc(s) { return String(s).replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"})[c]); }
function rows(id, list) { document.getElementById(id).innerHTML = list.map(r => "<tr>" + r.map(c => "<td>" + c + "</td>").join("") + "</tr>").join(""); }
function plot(id, values) {
  const max = Math.max(1, ...values), n = values.length;
  const pts = values.map((v, i) => ((n < 2 ? 0 : i * 300 / (HIST - 1)) + 5).toFixed(1) + "," + (85 - v / max * 80).toFixed(1));
  document.getElementById(id).setAttribute("points", pts.join(" "));
}
function push(key, v) { hist[key].push(v); if (hist[key].length > HIST) hist[key].shift(); }
function render(d) {
  updates += 1; window.__dash = d; window.__updates = updates;
  document.getElementById("updates").textContent = updates;
  rows("tiers", Object.entries(d.tiers).map(([t, n]) => [esc(t), "<span class=num>" + n + "</span>",
       "quota " + esc(d.tier_quotas[t] ?? "-")]));
  const refs = Object.entries(d.refusals).sort((a, b) => b[1] - a[1]), top = Math.max(1, ...refs.map(r => r[1]));
  rows("refusals", refs.map(([k, n]) => [esc(k), "<span class=num>" + n + "</span>",
       "<span class=bar style='width:" + (n / top * 120).toFixed(0) + "px'></span>"]));
  document.getElementById("refusals-total").textContent = d.refusals_total;
  const b = document.getElementById("breaker"); b.textContent = d.breaker; b.className = "state-" + d.breaker;
  document.getElementById("threshold").textContent = d.threshold === null ? "-" : d.threshold.toFixed(2);
  document.getElementById("load").textContent = d.load.toFixed(3);
  document.getElementById("ratio").textContent = d.controller.rejection_ratio.toFixed(3);
  rows("quotas", [["streams level", d.levels.streams], ["rates level", d.levels.rates],
       ...Object.entries(d.rates).map(([k, r]) => [esc(k) + " rate/s", r])]);
  rows("lowest", d.lowest.map(c => [esc(c.key), "<span class=num>" + c.score + "</span>", esc(c.tier), esc(c.reasons.join(", "))]));
  rows("decisions", d.decisions.slice().reverse().map(x => [new Date(x.time * 1000).toLocaleTimeString(), esc(x.action),
       esc(x.kind) + " " + x.level_from + "→" + x.level_to, esc(x.signal), esc(x.source)]));
  push("streams", d.streams);
  const rate = prevTotal === null ? 0 : Math.max(0, d.refusals_total - prevTotal) / Math.max(0.001, d.time - prevTime);
  prevTotal = d.refusals_total; prevTime = d.time; push("refusals", rate);
  plot("line-streams", hist.streams); plot("line-refusals", hist.refusals);
}
const es = new EventSource("/admin/dashboard/stream");
es.addEventListener("snapshot", e => render(JSON.parse(e.data)));
es.onopen = () => { document.getElementById("status").textContent = "live"; };
es.onerror = () => { document.getElementById("status").textContent = "reconnecting…"; };
</script></body></html>
"""
