"""The admin API on its own listener of the real server (uvicorn on loopback, ``serve --admin-port``): auth, clients,
top, quotas, state, the Alertmanager webhook — each change visible in /metrics and the audit log — and the live
dashboard in headless Chromium while the test makes traffic.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from server_harness import ServerProcess, SSEClient, free_port

ADMIN = "admin-token-for-tests"
SECRET = "jwt-secret-for-the-admin-tests-32bytes!"
PROXY = "127.0.0.9"                   # a trusted proxy: it may name the client (X-Forwarded-For) and its JA3
JA3 = "769,47-53-5-10-49161-49162-49171-49172-50-56-19-4,0-10-11,23-24-25,0"
ROOT = Path(__file__).resolve().parent.parent
# soft/hard limits per tenant pool: "slow" — 2 connections then refused (the 2nd degraded); "crowd" — streams past
# the first are degraded; "subj" — one connection per subject
TENANT_LIMITS = {"slow": {"rate": 0.001, "burst": 2, "soft_remaining": 1},
                 "crowd": {"soft_streams": 1},
                 "subj": {"subject_rate": 0.001, "subject_burst": 1}}


class Admin:
    def __init__(self, server: ServerProcess, port: int, audit: Path) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{port}"
        self.audit = audit
        self.http = httpx.Client(base_url=self.url, timeout=10.0, headers={"authorization": f"Bearer {ADMIN}"})

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def put(self, path: str, body: Any) -> httpx.Response:
        return self.http.put(path, content=json.dumps(body) if not isinstance(body, bytes) else body)

    def audit_records(self) -> list[dict[str, Any]]:
        """The audit log so far (it is written every 0.2 s: callers wait with :func:`until`)."""
        if not self.audit.exists():
            return []
        out = []
        for line in self.audit.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:              # the writer's last line, half written: read again next time
                break
        return out


def until(check: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check()`` until truthy, at most ``timeout`` s (a bounded wait on a condition, not a sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def admin() -> Iterator[Admin]:
    audit = Path(tempfile.mkdtemp(prefix="stormguard-admin-")) / "audit.jsonl"
    port = free_port()
    settings = {"admin_token": ADMIN, "jwt_secret": SECRET, "jwt_required": False, "controller": False,
                "trusted_proxies": [PROXY], "admin_stream_interval": 0.25, "heartbeat_interval": 1.0,
                "tenant_limits": TENANT_LIMITS}
    server = ServerProcess(settings, args=("--admin-port", str(port), "--audit-log", str(audit), "--no-model"))
    server.start()
    a = Admin(server, port, audit)
    try:
        until(lambda: _up(a), what="the admin listener")
        yield a
    finally:
        a.http.close()
        server.stop()
        os.unlink(server.log.name)
        shutil.rmtree(audit.parent, ignore_errors=True)


def _up(a: Admin) -> bool:
    try:
        return a.get("/admin/state").status_code == 200
    except httpx.HTTPError:
        return False


def token(role: Any, *, exp: float | None = None, sub: str = "alice") -> str:
    claims = {"sub": sub, "exp": int(exp if exp is not None else time.time() + 300)}
    if role is not None:
        claims["role"] = role
    return jwt.encode(claims, SECRET, algorithm="HS256")


def stream(admin: Admin, client: str, *, topic: str = "ops", extra: dict[str, str] | None = None) -> SSEClient:
    headers = {"X-Forwarded-For": client, **(extra or {})}
    return SSEClient(admin.server.port, f"/events?topic={topic}", source=PROXY, headers=headers)


def test_credentials_are_checked_and_refusals_counted(admin: Admin):
    m0 = admin.server.metrics()
    bare = httpx.get(admin.url + "/admin/state", timeout=10.0)
    assert bare.status_code == 401 and bare.json()["reason"] == "missing"
    assert bare.headers["www-authenticate"].startswith("Bearer")

    def status(credential: str) -> tuple[int, str | None]:
        r = httpx.get(admin.url + "/admin/quotas", headers={"authorization": f"Bearer {credential}"}, timeout=10.0)
        return r.status_code, r.json().get("reason")

    assert status(ADMIN + "x") == (401, "wrong_token")
    assert status(token("viewer")) == (403, "not_admin")
    assert status(token(None)) == (403, "not_admin")
    assert status(token("admin", exp=time.time() - 60)) == (401, "jwt_expired")
    assert status(jwt.encode({"role": "admin", "exp": int(time.time()) + 60}, "another-secret-of-32-bytes-long!!",
                             algorithm="HS256")) == (401, "jwt_invalid")
    assert status(token("admin"))[0] == 200
    assert status(token(["ops", "admin"], sub="bob"))[0] == 200
    # cookies never authorise a change
    changed = httpx.put(admin.url + "/admin/quotas", content=b"{}", cookies={"sg_admin": "x.y"}, timeout=10.0)
    assert changed.status_code == 401
    m1 = admin.server.metrics()

    def delta(status: str, reason: str) -> float:
        key = f'stormguard_admin_auth_failures_total{{reason="{reason}",status="{status}"}}'
        return m1.get(key, 0.0) - m0.get(key, 0.0)

    assert (delta("401", "missing"), delta("401", "wrong_token"), delta("403", "not_admin"),
            delta("401", "jwt_expired"), delta("401", "jwt_invalid")) == (2, 1, 2, 1, 1)
    assert until(lambda: [(r["action"], r["reason"]) for r in admin.audit_records()
                          if r["layer"] == "admin" and r.get("who") == "jwt:bob"] == [("200", "GET /admin/quotas")],
                 what="the JWT admin's audit record")


def test_client_view_override_block_and_unblock(admin: Admin):
    r = admin.get("/admin/clients/10.77.0.1")
    assert r.status_code == 404 and r.json()["field"] == "key"
    for body, field in [({"score": 500}, "score"), ({"score": "low"}, "score"), ({"tier": "gold", "ttl": 5}, "tier"),
                        ({"tier": "low"}, "ttl"), ({"tier": "low", "ttl": -1}, "ttl"), ({"colour": 1}, "colour"),
                        ({"score": 1, "tier": "low", "ttl": 5}, "score"), (b"{not json", "body"),
                        ({"score": 1, "reason": ""}, "reason")]:
        r = admin.put("/admin/clients/10.77.0.1", body)
        assert (r.status_code, r.json()["field"]) == (400, field), body
    # a live client behind the trusted proxy: streams, last seen and fingerprints
    ua = "Mozilla/5.0 (ops test)"
    live = stream(admin, "10.77.0.2", extra={"X-JA3": JA3, "User-Agent": ua})
    try:
        assert live.status == 200
        view = until(lambda: (v := admin.get("/admin/clients/10.77.0.2").json()).get("live_streams") and v,
                     what="the live stream in the client view")
        assert view["fingerprints"]["user_agent"] == ua and len(view["fingerprints"]["ja3"]) == 32
        assert view["last_seen"] > time.time() - 60 and view["streams"][0]["topics"] == ["ops"]
    finally:
        live.close()
    # score override
    r = admin.put("/admin/clients/10.77.0.2", {"score": -30, "reason": "ops-test"})
    assert r.status_code == 200 and r.json()["score"] == -30 and r.json()["tier"] == "low"
    assert "ops-test" in admin.get("/admin/clients/10.77.0.2").json()["reasons"]
    # block for a while: refused with 204 (stop); unblock: admitted again
    r = admin.put("/admin/clients/10.77.0.3", {"tier": "blocked", "ttl": 120, "reason": "ops-block"})
    assert r.status_code == 200 and r.json()["blocked"] is True
    blocked = stream(admin, "10.77.0.3")
    assert blocked.status == 204
    blocked.close()
    r = admin.http.delete("/admin/clients/10.77.0.3/block")
    assert r.status_code == 200 and r.json()["blocked"] is False
    again = stream(admin, "10.77.0.3")
    assert again.status == 200
    again.close()
    assert admin.http.delete("/admin/clients/10.77.9.9/block").status_code == 404
    # tier override with a ttl: the stream is announced in that tier
    admin.put("/admin/clients/10.77.0.4", {"tier": "trusted", "ttl": 120, "reason": "vip"})
    vip = stream(admin, "10.77.0.4")
    assert vip.status == 200 and vip.headers["x-ip-rating"] == "trusted"
    vip.close()
    assert admin.get("/admin/clients/10.77.0.4").json()["override"]["tier"] == "trusted"
    metrics = admin.server.metrics()
    for kind in ("client_score", "client_block", "client_unblock", "client_tier"):
        assert metrics[f'stormguard_admin_changes_total{{kind="{kind}"}}'] >= 1
    changes = until(lambda: {(r["reason"], r["client"]) for r in admin.audit_records() if r["action"] == "change"}
                    >= {("client_score", "10.77.0.2"), ("client_block", "10.77.0.3"), ("client_unblock", "10.77.0.3"),
                        ("client_tier", "10.77.0.4")}, what="the audit records of the changes")
    assert changes


def test_top_lists_the_worst_clients(admin: Admin):
    for i, score in enumerate((-90, -80, 40)):
        assert admin.put(f"/admin/clients/10.78.0.{i}", {"score": score, "reason": f"top-{i}"}).status_code == 200
    worst = admin.get("/admin/top", params={"n": 2, "order": "lowest"}).json()["clients"]
    assert [c["key"] for c in worst] == ["10.78.0.0", "10.78.0.1"] and worst[0]["reasons"] == ["top-0"]
    assert "10.78.0.2" in [c["key"] for c in admin.get("/admin/top", params={"order": "highest"}).json()["clients"]]
    for params, field in [({"n": 0}, "n"), ({"n": "x"}, "n"), ({"n": 5000}, "n"), ({"order": "worst"}, "order")]:
        r = admin.get("/admin/top", params=params)
        assert (r.status_code, r.json()["field"]) == (400, field)
    for i in range(3):
        admin.put(f"/admin/clients/10.78.0.{i}", {"score": 0, "reason": "reset"})


def test_quotas_with_bounds_change_what_the_quota_layer_admits(admin: Admin):
    q = admin.get("/admin/quotas").json()
    assert q["tiers"]["neutral"]["baseline_max_streams"] == 3 and q["bounds"]["max_streams"] == 10000
    for body, field in [({"tiers": {"neutral": {"max_streams": 0}}}, "tiers.neutral.max_streams"),
                        ({"tiers": {"neutral": {"max_streams": 10**6}}}, "tiers.neutral.max_streams"),
                        ({"rates": {"ip": {"rate": "fast"}}}, "rates.ip.rate"), ({"speed": 1}, "speed"),
                        ({}, "body")]:
        r = admin.put("/admin/quotas", body)
        assert (r.status_code, r.json()["field"]) == (400, field), body
    assert admin.get("/admin/quotas").json() == q                  # nothing applied
    r = admin.put("/admin/quotas", {"tiers": {"neutral": {"max_streams": 1}}, "tenants": {"acme": 5}})
    assert r.status_code == 200 and r.json()["tiers"]["neutral"]["max_streams"] == 1
    assert r.json()["tenants"]["acme"]["streams"] == 5
    before = admin.server.metric('rate_limit_rejected_total{layer="quota",reason="quota"}')
    first = stream(admin, "10.79.0.1")
    try:
        second = stream(admin, "10.79.0.1")
        assert first.status == 200 and second.status == 200
        assert second.messages(1)[0].retry is not None                  # a pace refusal: retry: and close
        second.close()
        assert admin.server.metric('rate_limit_rejected_total{layer="quota",reason="quota"}') == before + 1
        assert admin.server.metric('stormguard_quota_streams{tier="neutral"}') == 1
    finally:
        first.close()
        admin.put("/admin/quotas", {"tiers": {"neutral": {"max_streams": 3}}, "tenants": {"acme": None}})
    assert admin.get("/admin/quotas").json()["tiers"]["neutral"]["max_streams"] == 3
    assert until(lambda: any(r["reason"] == "quotas" and r["action"] == "change" for r in admin.audit_records()),
                 what="the quota change's audit record")


def alertmanager_payload(status: str, alerts: list[tuple[str, str, str]]) -> dict[str, Any]:
    """What Alertmanager's webhook sends (payload version 4), for (alertname, status, fingerprint) alerts."""
    items = [{"status": st, "labels": {"alertname": name, "instance": "127.0.0.1:8000", "job": "stormguard",
                                       "severity": "warning"},
              "annotations": {"summary": "test"}, "startsAt": "2026-01-01T00:00:00Z",
              "endsAt": "0001-01-01T00:00:00Z" if st == "firing" else "2026-01-01T00:05:00Z",
              "generatorURL": "http://prometheus/graph", "fingerprint": fp} for name, st, fp in alerts]
    return {"version": "4", "groupKey": '{}/{alertname=~"Stormguard.*"}:{alertname="x"}', "truncatedAlerts": 0,
            "status": status, "receiver": "stormguard-admin", "groupLabels": {"alertname": alerts[0][0]},
            "commonLabels": {"job": "stormguard"}, "commonAnnotations": {}, "externalURL": "http://alertmanager",
            "alerts": items}


def test_alertmanager_webhook_downgrades_and_resolution_steps_back(admin: Admin):
    base = admin.get("/admin/quotas").json()
    level0 = base["levels"]["streams"]
    key = 'stormguard_quota_decisions_total{action="downgrade",kind="streams",source="alertmanager"}'
    d0 = admin.server.metric(key)
    firing = alertmanager_payload("firing", [("StormguardRejectionsHigh", "firing", "f00d01")])
    r = admin.http.post("/admin/alerts", json=firing)
    assert r.status_code == 200 and r.json()["applied"][0]["action"] == "downgrade"
    q = admin.get("/admin/quotas").json()
    assert q["levels"]["streams"] == level0 + 1
    assert q["tiers"]["trusted"]["max_streams"] < base["tiers"]["trusted"]["max_streams"]
    assert admin.http.post("/admin/alerts", json=firing).json()["applied"] == []      # repeated notification
    assert admin.server.metric(key) == d0 + 1
    state = admin.get("/admin/state").json()["controller"]
    assert state["firing_alerts"] == ["streams"] and state["decisions"][-1]["signal"] == "alert:StormguardRejectionsHigh"
    resolved = alertmanager_payload("resolved", [("StormguardRejectionsHigh", "resolved", "f00d01")])
    r = admin.http.post("/admin/alerts", json=resolved)
    assert r.json()["applied"][0]["action"] == "step_back"
    assert admin.get("/admin/quotas").json()["tiers"] == base["tiers"]
    surge = alertmanager_payload("firing", [("StormguardConnectionSurge", "firing", "f00d02")])
    assert admin.http.post("/admin/alerts", json=surge).json()["levels"]["rates"] == 1
    assert admin.get("/admin/quotas").json()["rates"]["ip"]["rate"] < base["rates"]["ip"]["rate"]
    admin.http.post("/admin/alerts", json=alertmanager_payload(
        "resolved", [("StormguardConnectionSurge", "resolved", "f00d02")]))
    assert admin.get("/admin/quotas").json()["rates"] == base["rates"]
    for body, field in [({**firing, "version": "3"}, "version"), ({**firing, "alerts": {}}, "alerts"),
                        ({**firing, "alerts": [{"status": "pending", "labels": {"alertname": "x"}}]},
                         "alerts[0].status"), ({**firing, "alerts": [{"status": "firing"}]},
                                               "alerts[0].labels.alertname")]:
        r = admin.http.post("/admin/alerts", json=body)
        assert (r.status_code, r.json()["field"]) == (400, field)
    assert until(lambda: {r["action"] for r in admin.audit_records() if r["layer"] == "controller"
                          and r.get("source") == "alertmanager"} >= {"downgrade", "step_back", "tighten"},
                 what="the controller's audit records")


def tenant_token(tenant: str, sub: str) -> str:
    return jwt.encode({"tenant": tenant, "sub": sub, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")


def test_soft_and_hard_limits_per_tenant_pool_and_subject(admin: Admin):
    def connect(tenant: str, sub: str, ip: str) -> SSEClient:
        return stream(admin, ip, extra={"Authorization": f"Bearer {tenant_token(tenant, sub)}"})

    m0 = admin.server.metrics()
    a, b = connect("slow", "u1", "10.81.0.1"), connect("slow", "u2", "10.81.0.2")
    assert (a.status, a.headers["x-ip-rating"], "x-stormguard-warning" in a.headers) == (200, "neutral", False)
    # soft: admitted, warned, one tier lower, and a longer retry: than the first stream's
    assert (b.status, b.headers["x-ip-rating"], b.headers["x-stormguard-warning"]) == (200, "low", "tenant_rate")
    retry_a = a.messages(1, want=lambda m: m.retry is not None)[0].retry
    retry_b = b.messages(1, want=lambda m: m.retry is not None)[0].retry
    assert retry_b > 2 * retry_a          # low tier (x3) and degraded (x2), jitter 0.25: always well apart
    c = connect("slow", "u3", "10.81.0.3")               # hard: the tenant's bucket is empty
    assert c.status == 200 and "content-length" in c.headers and c.messages(1)[0].retry is not None
    for s in (a, b, c):
        s.close()
    first = connect("crowd", "u1", "10.81.1.1")
    try:
        second = connect("crowd", "u2", "10.81.1.2")      # the tenant holds 1 stream: the soft threshold
        assert first.headers["x-ip-rating"] == "neutral" and "x-stormguard-warning" not in first.headers
        assert (second.headers["x-ip-rating"], second.headers["x-stormguard-warning"]) == ("low", "tenant_streams")
        second.close()
    finally:
        first.close()
    x1, x2, y = connect("subj", "x", "10.81.2.1"), connect("subj", "x", "10.81.2.2"), connect("subj", "y", "10.81.2.3")
    assert "content-length" not in x1.headers and "content-length" in x2.headers and "content-length" not in y.headers
    for s in (x1, x2, y):
        s.close()
    m1 = admin.server.metrics()

    def delta(key: str) -> float:
        return m1.get(key, 0.0) - m0.get(key, 0.0)

    assert delta('rate_limit_rejected_total{layer="tenant",reason="tenant_rate"}') == 1
    assert delta('rate_limit_rejected_total{layer="tenant",reason="token_rate"}') == 1
    assert delta('stormguard_degraded_total{layer="limiter-tenant-tenant_rate"}') == 1
    assert delta('stormguard_degraded_total{layer="limiter-tenant-tenant_streams"}') == 1
    assert until(lambda: {r["reason"] for r in admin.audit_records() if r["action"] == "warn"}
                 >= {"tenant_rate", "tenant_streams"}, what="the soft-limit warnings in the audit log")


def test_state_shows_breaker_threshold_and_controller(admin: Admin):
    s = admin.get("/admin/state").json()
    assert s["breaker"]["state"] == "closed"
    assert s["threshold"]["value"] == -50.0 and s["threshold"]["fail_weight"] == 0.5
    assert set(s["controller"]) >= {"rejection_ratio", "levels", "decisions", "surge_p95"}


def test_grafana_dashboard_queries_only_exported_metrics(admin: Admin):
    """Every metric name a Grafana panel or the alert rules query is one this server exports."""
    exported = set()
    for line in httpx.get(admin.server.url + "/metrics", timeout=10.0).text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            exported |= {name, name + "_total"} if kind == "counter" else {name}
    dash = json.loads((ROOT / "deploy/grafana/stormguard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    rules = (ROOT / "deploy/prometheus/rules.yml").read_text()
    assert len(exprs) >= 10
    functions = {"sum", "by", "rate", "max", "min", "clamp_min", "increase", "and", "quantile_over_time", "offset"}
    names = set()
    for expr in [*exprs, rules]:
        names |= {n for n in re.findall(r"\b([a-z_][a-z0-9_]*)(?=\{|\[|\))", expr) if n not in functions}
    names = {n for n in names if n.startswith(("stormguard_", "http_sse", "rate_limit"))}
    assert names and names <= exported, names - exported


# -- the dashboard in a real browser ------------------------------------------------------------------------------
CHROMIUM = os.environ.get("STORMGUARD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("STORMGUARD_CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        msg = f"dashboard test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("STORMGUARD_CORPUS"):
            pytest.fail(msg + " — required in CI ($STORMGUARD_CORPUS is set)")
        pytest.skip(msg)
    os.environ["SE_OFFLINE"] = "1"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="stormguard-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
                 "--window-size=1200,900", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(10)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_dashboard_updates_live_in_chromium(admin: Admin, browser: Any):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # without the login cookie the page is refused
    browser.get(admin.url + "/admin/dashboard")
    assert "unauthorized" in browser.page_source
    browser.get(admin.url + "/admin/login")
    browser.find_element(By.ID, "token").send_keys(ADMIN)
    browser.find_element(By.ID, "login").click()
    wait = WebDriverWait(browser, 20, poll_frequency=0.1)
    wait.until(lambda d: (d.execute_script("return window.__updates || 0") or 0) >= 2)
    first = browser.execute_script("return window.__dash")
    assert first["breaker"] == "closed" and "streams" in first["levels"]
    assert browser.find_element(By.ID, "status").text == "live"
    # traffic: open streams, a blocked client refused, a downgrade through the webhook
    admin.put("/admin/clients/10.80.0.66", {"tier": "blocked", "ttl": 120, "reason": "dash-block"})
    opened = [stream(admin, f"10.80.0.{i}") for i in range(1, 4)]
    try:
        refused = [stream(admin, "10.80.0.66") for _ in range(3)]
        for r in refused:
            assert r.status == 204
            r.close()
        admin.http.post("/admin/alerts", json=alertmanager_payload(
            "firing", [("StormguardRejectionsHigh", "firing", "dash01")]))
        later = wait.until(lambda d: (x := d.execute_script("return window.__dash"))["streams"] >= first["streams"] + 3
                           and x["refusals_total"] >= first["refusals_total"] + 3
                           and x["levels"]["streams"] == first["levels"]["streams"] + 1 and x)
        assert later["refusals"].get("reputation/blocked", 0) >= 3
        admin.put("/admin/clients/10.80.0.67", {"score": -99, "reason": "dash-low"})
        wait.until(lambda d: any(c["key"] == "10.80.0.67" and "dash-low" in c["reasons"]
                                 for c in d.execute_script("return window.__dash")["lowest"]))
        wait.until(lambda d: "10.80.0.67" in d.find_element(By.ID, "lowest").text)
        assert later["decisions"][-1]["source"] == "alertmanager"
        # what the page shows, not only what it received: the numbers and the chart
        wait.until(lambda d: int(d.find_element(By.ID, "refusals-total").text) >= later["refusals_total"])
        assert "reputation/blocked" in browser.find_element(By.ID, "refusals").text
        assert "alertmanager" in browser.find_element(By.ID, "decisions").text
        points = browser.find_element(By.ID, "line-streams").get_attribute("points")
        assert len(points.split()) >= 3
    finally:
        for s in opened:
            s.close()
        admin.http.post("/admin/alerts", json=alertmanager_payload(
            "resolved", [("StormguardRejectionsHigh", "resolved", "dash01")]))
        admin.http.delete("/admin/clients/10.80.0.66/block")
        admin.put("/admin/clients/10.80.0.67", {"score": 0, "reason": "reset"})


@pytest.mark.parametrize(("extra", "env", "message"), [
    ((), {}, "--admin-port needs credentials"),
    (("--workers", "2", "--store", "redis://127.0.0.1:1/0"), {"STORMGUARD_ADMIN_TOKEN": "t"}, "needs --workers 1"),
])
def test_serve_refuses_an_admin_port_it_cannot_serve_safely(extra, env, message):
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if not k.startswith("STORMGUARD_")}
    done = subprocess.run([sys.executable, "-m", "stormguard.server.cli", "serve", "--admin-port", str(free_port()),
                           "--no-model", *extra], env={**base, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_the_running_controller_downgrades_from_the_servers_own_refusals():
    """The background controller reads the real counters: a refusal storm downgrades the quotas by itself."""
    audit = Path(tempfile.mkdtemp(prefix="stormguard-ctl-")) / "audit.jsonl"
    port = free_port()
    settings = {"admin_token": ADMIN, "trusted_proxies": [PROXY], "controller_interval": 0.2,
                "controller_reject_hold": 0.6, "controller_cooldown": 3600.0,
                "ip_rate": 0.001, "ip_burst": 1.0}       # one stream, then the limiter refuses this address
    server = ServerProcess(settings, args=("--admin-port", str(port), "--audit-log", str(audit), "--no-model"))
    server.start()
    a = Admin(server, port, audit)
    try:
        until(lambda: _up(a), what="the admin listener")
        assert a.get("/admin/quotas").json()["levels"]["streams"] == 0
        for _ in range(20):        # one admitted, then refusals (refusals of blocked clients would not count)
            c = stream(a, "10.82.0.66")
            c.close()
        q = until(lambda: (q := a.get("/admin/quotas").json())["levels"]["streams"] >= 1 and q,
                  timeout=30.0, what="the controller's downgrade")
        assert q["tiers"]["neutral"]["max_streams"] < q["tiers"]["neutral"]["baseline_max_streams"]
        state = a.get("/admin/state").json()["controller"]
        assert state["rejection_ratio"] > 0.1
        assert state["decisions"][0]["signal"] == "rejection_ratio" and state["decisions"][0]["source"] == "controller"
        key = 'stormguard_quota_decisions_total{action="downgrade",kind="streams",source="controller"}'
        assert server.metric(key) >= 1
        assert until(lambda: [r for r in a.audit_records() if r["layer"] == "controller" and r["action"] == "downgrade"],
                     what="the controller's audit record")
    finally:
        a.http.close()
        server.stop()
        os.unlink(server.log.name)
        shutil.rmtree(audit.parent, ignore_errors=True)
