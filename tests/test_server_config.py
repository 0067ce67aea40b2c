"""``[server]`` in stormguard/config.py: tiers from ``[reputation]``, TOML and ``STORMGUARD_SERVER_*`` overrides,
and ``stormguard serve --config --store --workers --shadow`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from redis_server import RedisServer, redis_server_fixture  # noqa: F401 - fixture
from server_harness import PROJECT_ROOT, SSEClient, running_server
from stormguard.server.cli import load_config_and_settings
from stormguard.server.ops.settings import ServerSettings, TierLimits

from stormguard.config import Config, ConfigError, load_config


def test_server_section_defaults_and_tiers_from_the_reputation_table() -> None:
    cfg = load_config(env={})
    assert cfg == Config() and isinstance(cfg.server, ServerSettings)
    s = cfg.server
    assert (s.ip_rate, s.ip_burst, s.reputation, s.live_rules, s.shadow) == (3.0, 2.0, True, True, False)
    assert s.tiers == {"trusted": TierLimits(8, 900.0), "neutral": TierLimits(3, 300.0),
                       "low": TierLimits(1, 30.0, 30.0)}
    assert s.refusal_actions["blocked"] == "stop" and s.refusal_actions["rate"] == "pace"
    assert s.refusal_actions["jwt_expired"] == "stop"


def test_reputation_tiers_change_the_server_tiers(tmp_path: Path) -> None:
    path = tmp_path / "sg.toml"
    path.write_text("""
[[reputation.tiers]]
name = "gold"
min_score = 50
streams = 20
idle_seconds = 60
[[reputation.tiers]]
name = "neutral"
min_score = -100
streams = 2
idle_seconds = 10
session_seconds = 5
[server]
ip_rate = 9.5
trusted_proxies = ["10.0.0.0/8"]
[server.refusal_actions]
rate = "429"
[server.tiers.gold]
max_streams = 25
""")
    s = load_config(path, env={}).server
    assert s.tiers == {"gold": TierLimits(25, 60.0), "neutral": TierLimits(2, 10.0, 5.0)}
    assert s.ip_rate == 9.5 and s.trusted_proxies == ("10.0.0.0/8",)
    assert s.refusal_actions["rate"] == "429" and s.refusal_actions["quota"] == "pace"   # tables merge


def test_environment_overrides_every_server_default(tmp_path: Path) -> None:
    env = {"STORMGUARD_SERVER_IP_RATE": "7", "STORMGUARD_SERVER_SHADOW": "yes",
           "STORMGUARD_SERVER_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.0.0/16",
           "STORMGUARD_SERVER_REFUSAL_ACTIONS": '{quota="503"}', "STORMGUARD_SERVER_JWT_AUDIENCE": "aud",
           "STORMGUARD_SERVER_TENANT_POOLS": '{acme=5}', "STORMGUARD_SERVER_TIERS": "{low={max_streams=2}}"}
    s = load_config(env=env).server
    assert (s.ip_rate, s.shadow, s.jwt_audience) == (7.0, True, "aud")
    assert s.trusted_proxies == ("10.0.0.0/8", "192.168.0.0/16") and s.tenant_pools == {"acme": 5}
    assert s.refusal_actions["quota"] == "503" and s.refusal_actions["blocked"] == "stop"
    assert s.tiers["low"] == TierLimits(2, 30.0, 30.0)
    slow = load_config(env={"STORMGUARD_SERVER_SLOW_READER_TIMEOUT": "0"}).server
    assert (slow.slow_reader_timeout, slow.slow_reader_max_bytes) == (0.0, 1 << 20)   # off; the byte bound stays


@pytest.mark.parametrize("text, env, message", [
    ("[server]\nip_rat = 1\n", {}, "unknown key"),
    ("[server.tiers.platinum]\nmax_streams = 1\n", {}, "no such tier"),
    ("[server]\nip_rate = 'fast'\n", {}, "server.ip_rate"),
    ("", {"STORMGUARD_SERVER_BREAKER_PROBES": "many"}, "server.breaker_probes"),
    ("[server]\nslow_reader_timeout = -1\n", {}, "server.slow_reader_timeout: must be a number >= 0"),
    ("", {"STORMGUARD_SERVER_SLOW_READER_MAX_BYTES": "-5"}, "server.slow_reader_max_bytes"),
])
def test_bad_server_config_fails_loudly(tmp_path: Path, text: str, env: dict, message: str) -> None:
    path = tmp_path / "sg.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env=env)


def test_json_handover_merges_onto_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sg.toml"
    path.write_text('[server.refusal_actions]\nrate = "429"\n[store]\nurl = "memory://?max_keys=5"\n')
    monkeypatch.setenv("STORMGUARD_SERVER_SETTINGS", json.dumps({"refusal_actions": {"quota": "503"}}))
    cfg, s = load_config_and_settings(str(path), store="redis://127.0.0.1:1/0")
    assert s.refusal_actions["rate"] == "429" and s.refusal_actions["quota"] == "503"
    assert cfg.store.url == "redis://127.0.0.1:1/0"                       # --store wins over [store] url
    assert ServerSettings.from_mapping(json.loads(s.to_json())) == s


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stormguard.server.cli", "serve", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_several_workers_need_a_shared_store(tmp_path: Path) -> None:
    proc = serve("--workers", "2", "--store", "memory://")
    assert proc.returncode == 2 and "shared store" in proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nnope = 1\n")
    proc = serve("--config", str(bad))
    assert proc.returncode == 2 and "unknown key" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_with_config_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TOML reaches the server process, and a ``STORMGUARD_SERVER_*`` variable wins over it."""
    path = tmp_path / "sg.toml"
    path.write_text('[server]\ntoken_rate = 0.001\ntoken_burst = 1.0\n[server.refusal_actions]\ntoken_rate = "503"\n')
    monkeypatch.setenv("STORMGUARD_SERVER_TOKEN_BURST", "2")
    with running_server(args=("--config", str(path))) as srv:
        assert [srv.publish("c", i).status_code for i in range(3)] == [200, 200, 503]
        c = SSEClient(srv.port, "/events?topic=c", source="127.0.0.111")
        assert c.headers["x-ip-rating"] == "neutral"
        c.close()


def test_two_workers_on_redis_share_reputation(redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:8]}&timeout=2"
    with running_server({"enable_test_routes": True}, args=("--store", url, "--workers", "2")) as srv:
        ip = "127.0.0.120"
        proc = subprocess.run([sys.executable, "-m", "stormguard", "reputation", "--store", url, "block", ip],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        statuses = set()
        for _ in range(20):                    # whichever worker accepts: every one reads the shared store
            c = SSEClient(srv.port, "/events?topic=w", source=ip)
            statuses.add(c.status)
            c.close()
        assert statuses == {204}
        # the hub is shared too: a stream on whichever worker receives every event, whichever worker published it
        listeners = [SSEClient(srv.port, "/events?topic=shared", source=f"127.0.0.{130 + i}") for i in range(4)]
        for i in range(12):
            assert srv.publish("shared", {"n": i}).status_code == 200
        for c in listeners:
            got = [json.loads(m.data[0])["n"] for m in c.messages(12, want=lambda m: bool(m.data))]
            c.close()
            assert got == list(range(12))
