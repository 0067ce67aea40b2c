"""``stormguard serve`` wiring: the ``register(subparsers)`` seam, config loading, and no pandas in the server."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from stormguard.server.cli import load_settings, register
from stormguard.server.ops.settings import ServerSettings, TierLimits


def test_register_adds_serve() -> None:
    parser = argparse.ArgumentParser(prog="stormguard")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--port", "9001", "--shadow", "--workers", "1"])
    assert (args.command, args.port, args.shadow, args.workers, args.host) == ("serve", 9001, True, 1, "127.0.0.1")
    assert callable(args.func)


def test_config_toml_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "stormguard.toml"
    config.write_text('[server]\nip_rate = 5.0\ntrusted_proxies = ["10.0.0.0/8"]\n'
                      "[server.tiers.low]\nmax_streams = 1\nidle_timeout = 60.0\nmax_lifetime = 30.0\n")
    monkeypatch.setenv("STORMGUARD_SERVER_SETTINGS", '{"ip_burst": 4.0}')
    s = load_settings(str(config))
    assert (s.ip_rate, s.ip_burst, s.trusted_proxies) == (5.0, 4.0, ("10.0.0.0/8",))
    assert s.tiers["low"] == TierLimits(1, 60.0, 30.0) and s.tiers["trusted"].max_streams == 8
    assert ServerSettings.from_mapping(__import__("json").loads(s.to_json())) == s
    with pytest.raises(ValueError, match="unknown server settings"):
        ServerSettings.from_mapping({"ip_rat": 1})


def test_several_workers_refused_until_a_shared_store_exists() -> None:
    proc = subprocess.run([sys.executable, "-m", "stormguard.server.cli", "serve", "--workers", "2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "shared store" in proc.stderr


def test_server_never_imports_pandas() -> None:
    code = ("import sys, stormguard.server.app, stormguard.server.cli; "
            "sys.exit(1 if 'pandas' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
