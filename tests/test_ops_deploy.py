"""deploy/: the Prometheus rules pass the real ``promtool check rules`` and their unit tests (``promtool test
rules``: the alerts fire on a rejection storm and a connection surge, and stay quiet on healthy traffic); the
Alertmanager configuration passes ``amtool check-config`` and routes both alerts, with resolutions, to the admin
webhook; the Grafana dashboard is well-formed (its queries are checked against a live server in test_ops_admin).

Skipped when promtool/amtool are missing, except in CI ($STORMGUARD_CORPUS set) where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ALERTS = {"StormguardRejectionsHigh", "StormguardConnectionSurge"}


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is missing (apt-get install {package})"
        if os.environ.get("STORMGUARD_CORPUS"):
            pytest.fail(msg + " — required in CI ($STORMGUARD_CORPUS is set)")
        pytest.skip(msg)
    return path


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=DEPLOY)


def test_promtool_checks_the_rules_and_their_unit_tests_pass():
    promtool = tool("promtool", "prometheus")
    checked = run(promtool, "check", "rules", "prometheus/rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 4 rules found" in checked.stdout
    tested = run(promtool, "test", "rules", "prometheus/rules_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    rules = yaml.safe_load((DEPLOY / "prometheus/rules.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert names == ALERTS


def test_promtool_rejects_a_broken_rule(tmp_path: Path):
    """The check above can fail: the same file with a broken expression does not pass."""
    promtool = tool("promtool", "prometheus")
    text = (DEPLOY / "prometheus/rules.yml").read_text().replace("> 0.1", "> > 0.1")
    broken = tmp_path / "rules.yml"
    broken.write_text(text)
    assert run(promtool, "check", "rules", str(broken)).returncode != 0


def test_alertmanager_routes_both_alerts_to_the_admin_webhook_with_resolutions():
    amtool = tool("amtool", "prometheus-alertmanager")
    checked = run(amtool, "check-config", "alertmanager.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for alert in sorted(ALERTS):
        routed = run(amtool, "config", "routes", "test", "--config.file=alertmanager.yml", f"alertname={alert}",
                     "instance=127.0.0.1:8000")
        assert routed.returncode == 0 and "stormguard-admin" in routed.stdout, routed.stdout + routed.stderr
    other = run(amtool, "config", "routes", "test", "--config.file=alertmanager.yml", "alertname=Other")
    assert "stormguard-admin" not in other.stdout
    cfg = yaml.safe_load((DEPLOY / "alertmanager.yml").read_text())
    (receiver,) = [r for r in cfg["receivers"] if r["name"] == "stormguard-admin"]
    (hook,) = receiver["webhook_configs"]
    assert hook["url"].endswith("/admin/alerts") and hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["type"] == "Bearer"


def test_grafana_dashboard_is_well_formed():
    dash = json.loads((DEPLOY / "grafana/stormguard.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) >= 10 and dash["uid"] == "stormguard"
    for p in dash["panels"]:
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
