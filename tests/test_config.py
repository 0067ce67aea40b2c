"""The configuration loader: DESIGN.md defaults, TOML overrides, environment overrides, loud errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from stormguard.config import Config, ConfigError, ReputationConfig, StoreConfig, load_config


def test_defaults_are_the_design_seed_values() -> None:
    cfg = load_config(env={})
    rep = cfg.reputation
    assert math.isclose(rep.lam, 1e-5, rel_tol=1e-3)  # half-life 19.25 h
    assert rep.block_score == -50 and rep.block_seconds == 300
    rules = {r.name: (r.feature, r.op, r.value, r.delta) for r in rep.rules}
    assert rules["reconnect_storm"] == ("reconnects_10s", ">=", 5, -20)
    assert rules["short_disconnects"] == ("short_lived_2s", ">=", 3, -30)
    tiers = {t.name: t for t in rep.tiers}
    assert tiers["trusted"].min_score == 60 and tiers["trusted"].streams == 8 and tiers["trusted"].idle_seconds == 900
    assert tiers["neutral"].streams == 3 and tiers["neutral"].idle_seconds == 300
    assert tiers["low"].streams == 1 and tiers["low"].session_seconds == 30
    assert cfg.store.url == "memory://" and cfg.geoip.country_db == ""
    assert cfg.threshold.interval_seconds == 30 and cfg.threshold.window_seconds == 300
    assert cfg == Config()


def test_toml_file_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sg.toml"
    path.write_text("""
[reputation]
half_life_hours = 1.0
block_score = -40
[[reputation.rules]]
name = "storm"
feature = "reconnects_10s"
op = ">="
value = 10
delta = -25
[store]
url = "redis://127.0.0.1:6379/0"
max_keys = 5000
[threshold]
override = -35.5
""")
    cfg = load_config(path, env={})
    assert math.isclose(cfg.reputation.lam, math.log(2) / 3600)
    assert cfg.reputation.block_score == -40.0 and isinstance(cfg.reputation.block_score, float)
    assert [r.name for r in cfg.reputation.rules] == ["storm"] and cfg.reputation.rules[0].value == 10
    assert cfg.store == StoreConfig(url="redis://127.0.0.1:6379/0", max_keys=5000)
    assert cfg.threshold.override == -35.5


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "sg.toml"
    path.write_text('[store]\nmax_keys = 10\nprefix = "a"\n')
    env = {"STORMGUARD_CONFIG": str(path), "STORMGUARD_STORE_MAX_KEYS": "1_000",
           "STORMGUARD_REPUTATION_DECAY_LAMBDA": "2e-5",
           "STORMGUARD_REPUTATION_ALLOW_NETWORKS": "10.0.0.0/8, 192.168.0.0/16",
           "STORMGUARD_REPUTATION_RULES": '[{name="x", feature="short_lived", op=">", value=1, delta=-5}]',
           "STORMGUARD_THRESHOLD_OVERRIDE": "none", "STORMGUARD_UNRELATED_THING": "ignored"}
    cfg = load_config(env=env)
    assert cfg.store.max_keys == 1000 and cfg.store.prefix == "a"
    assert cfg.reputation.lam == 2e-5
    assert cfg.reputation.allow_networks == ["10.0.0.0/8", "192.168.0.0/16"]
    assert cfg.reputation.rules[0].delta == -5.0 and cfg.reputation.rules[0].op == ">"
    assert cfg.threshold.override is None


@pytest.mark.parametrize("text, message", [
    ("[reputaton]\nx = 1\n", "unknown section"),
    ("[store]\nmax_key = 1\n", "unknown key"),
    ("[store]\nmax_keys = 'many'\n", "expected int"),
    ("[reputation]\nrules = 3\n", "expected a list"),
    ("[store\n", "sg.toml"),
])
def test_bad_files_fail_loudly(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sg.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_bad_environment_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match="store.timeout"):
        load_config(env={"STORMGUARD_STORE_TIMEOUT": "soon"})


def test_zero_half_life_means_no_decay() -> None:
    assert ReputationConfig(half_life_hours=0).lam == 0.0
