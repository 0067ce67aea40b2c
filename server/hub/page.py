"""A small EventSource demo page: see what a real browser does with the hub's streams, paces and stops.

Why a page at all: a browser's EventSource is the client the refusal actions are designed for (it reconnects after
a clean close, no sooner than the last ``retry:``; it gives up for good on a 204). The page opens
``new EventSource('/events?topic=…')`` and logs every ``open``, ``message`` and ``error`` with its time and
``readyState`` both into the DOM (for people) and into ``window.__log`` (for browser tests).

Query parameters of the page: ``topic`` (repeatable, default ``demo``), ``event`` (extra named event types to
listen for, repeatable). The topic reaches the stream URL through ``URLSearchParams`` in the browser, never through
server-side templating, so the page is static and nothing the client sends is echoed into HTML.

Mount it with ``app.router.routes.extend(page_routes())`` (the app is a Starlette app).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>stormguard — EventSource demo</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
 h1 { font-size: 1.3em; margin: 0 0 .3em; }
 #status { font-weight: bold; }
 .open { color: #1a7f37; } .connecting { color: #9a6700; } .closed { color: #cf222e; }
 table { border-collapse: collapse; margin-top: .8em; width: 100%; }
 td, th { border-bottom: 1px solid #ddd; padding: .2em .5em; text-align: left; font-family: monospace; }
 tr.error td { color: #cf222e; } tr.open td { color: #1a7f37; }
</style>
</head>
<body>
<h1>stormguard — EventSource demo</h1>
<p>Stream: <code id="url"></code> · state: <span id="status" class="connecting">connecting</span>
 · opens: <span id="opens">0</span> · messages: <span id="messages">0</span> · errors: <span id="errors">0</span></p>
<table><thead><tr><th>time</th><th>+ms</th><th>kind</th><th>readyState</th><th>id</th><th>data</th></tr></thead>
<tbody id="log"></tbody></table>
<script>
(function () {
  "use strict";
  var params = new URLSearchParams(location.search);
  var topics = params.getAll("topic");
  if (!topics.length) { topics = ["demo"]; }
  var qs = new URLSearchParams();
  topics.forEach(function (t) { qs.append("topic", t); });
  var url = "/events?" + qs.toString();
  var STATES = ["connecting", "open", "closed"];
  var counts = {open: 0, message: 0, error: 0};
  var t0 = Date.now();
  window.__log = [];
  document.getElementById("url").textContent = url;
  var es = new EventSource(url);
  window.__es = es;

  function log(kind, ev) {
    var rec = {kind: kind, t: Date.now(), perf: performance.now(), readyState: es.readyState,
               type: ev && ev.type, id: (ev && ev.lastEventId) || null,
               data: (ev && typeof ev.data === "string") ? ev.data : null};
    window.__log.push(rec);
    if (kind in counts) { counts[kind] += 1; }
    var row = document.createElement("tr");
    row.className = kind;
    [new Date(rec.t).toISOString().slice(11, 23), String(rec.t - t0), kind === "message" ? rec.type : kind,
     STATES[rec.readyState] || String(rec.readyState), rec.id || "", rec.data === null ? "" : rec.data
    ].forEach(function (text) {
      var td = document.createElement("td");
      td.textContent = text;          // textContent: event data is never parsed as HTML
      row.appendChild(td);
    });
    document.getElementById("log").appendChild(row);
    var status = document.getElementById("status");
    status.textContent = STATES[es.readyState] || "?";
    status.className = STATES[es.readyState] || "";
    ["open", "message", "error"].forEach(function (k) {
      document.getElementById(k === "open" ? "opens" : k + "s").textContent = String(counts[k]);
    });
  }

  es.addEventListener("open", function (ev) { log("open", ev); });
  es.addEventListener("message", function (ev) { log("message", ev); });
  es.addEventListener("error", function (ev) { log("error", ev); });
  params.getAll("event").forEach(function (name) {
    es.addEventListener(name, function (ev) { log("message", ev); });
  });
  log("start", null);
})();
</script>
</body>
</html>
"""


def page_routes(paths: tuple[str, ...] = ("/demo",)) -> list[Route]:
    """Routes serving the demo page at each of ``paths`` (e.g. ``("/", "/demo")``); GET and HEAD only."""

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE_HTML, headers={"cache-control": "no-store"})

    return [Route(path, page, methods=["GET"], name=f"stormguard-page{i}") for i, path in enumerate(paths)]
