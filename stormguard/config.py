"""stormguard configuration: one TOML file plus ``STORMGUARD_<SECTION>_<KEY>`` environment variables.

Every part of the project owns one section (``[reputation]``, ``[store]``, ``[geoip]``, ``[threshold]``, later
``[server]``...), declared here as a dataclass whose defaults are the seed values of DESIGN.md, so that running
without any file gives the documented behaviour. Precedence, lowest first: dataclass defaults, the TOML file, the
environment. Loading is generic (driven by type hints) so a new section is one dataclass and one field on
:class:`Config`, not new parsing code.

Environment values are parsed by the field's type: numbers, booleans (``1/true/yes/on``), strings, lists (a TOML
array such as ``["10.0.0.0/8"]`` or a comma-separated string) and, for structured fields (rules, tiers), a TOML
inline value (``STORMGUARD_REPUTATION_RULES='[{name="x", feature="y", op=">=", value=1, delta=-5}]'``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "STORMGUARD_"
CONFIG_ENV = "STORMGUARD_CONFIG"  # path of the TOML file when none is passed explicitly


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the section, key and source."""


@dataclass(frozen=True)
class RuleConfig:
    """One reputation rule as data: when ``feature`` ``op`` ``value`` holds, add ``delta`` and record ``name``."""

    name: str
    feature: str
    op: str = ">="
    value: Any = True
    delta: float = 0.0


@dataclass(frozen=True)
class TierConfig:
    """A service tier: entered at ``min_score`` or above; its stream quota and idle timeout.

    ``session_seconds`` > 0 closes a stream after that long (the ``low`` tier's 30 s with an audit record).
    """

    name: str
    min_score: float
    streams: int
    idle_seconds: float
    session_seconds: float = 0.0


@dataclass(frozen=True)
class CrawlerConfig:
    """A verified crawler: its User-Agent pattern (regex, case-insensitive) and the networks it really uses."""

    name: str
    ua_pattern: str
    networks: list[str] = field(default_factory=list)


def _default_rules() -> list[RuleConfig]:
    return [
        RuleConfig("reconnect_storm", "reconnects_10s", ">=", 5, -20.0),
        RuleConfig("short_disconnects", "short_lived", ">=", 3, -30.0),
        RuleConfig("bad_ja3", "ja3_bad", "==", True, -40.0),
        RuleConfig("ua_tls_mismatch", "ua_tls_mismatch", "==", True, -15.0),
    ]


def _default_tiers() -> list[TierConfig]:
    return [
        TierConfig("trusted", 60.0, 8, 15 * 60.0),
        TierConfig("neutral", -20.0, 3, 5 * 60.0),
        TierConfig("low", -100.0, 1, 30.0, session_seconds=30.0),
    ]


def _default_crawlers() -> list[CrawlerConfig]:
    # Published crawler ranges change; these are examples to be replaced by the operator's verified lists.
    return [
        CrawlerConfig("googlebot", r"Googlebot", ["66.249.64.0/19"]),
        CrawlerConfig("bingbot", r"bingbot", ["157.55.39.0/24", "207.46.13.0/24", "40.77.167.0/24"]),
    ]


@dataclass(frozen=True)
class ReputationConfig:
    """Scores, decay, rules, blocking and tiers (DESIGN.md "Defaults")."""

    half_life_hours: float = 19.254  # ln 2 / 1e-5 s  = 19.25 h
    decay_lambda: float = 0.0  # per second; 0 = derive from half_life_hours
    initial_score: float = 0.0
    block_score: float = -50.0  # score <= this -> blocked
    block_seconds: float = 300.0
    # "trusted" (score >= 60) is the first tier's min_score: tiers are the one source of truth for it
    max_reasons: int = 4
    rules: list[RuleConfig] = field(default_factory=_default_rules)
    tiers: list[TierConfig] = field(default_factory=_default_tiers)
    bad_ja3_path: str = ""  # SSLBL CSV format (ja3_md5,Firstseen,Lastseen,Listingreason)
    library_ja3_path: str = ""  # CSV/JSON of JA3 -> application used to recognise TLS libraries
    allow_networks: list[str] = field(default_factory=list)
    verified_crawlers: list[CrawlerConfig] = field(default_factory=_default_crawlers)

    @property
    def lam(self) -> float:
        """The decay rate per second: explicit, or ln 2 / half-life."""
        if self.decay_lambda > 0:
            return self.decay_lambda
        if self.half_life_hours <= 0:
            return 0.0
        import math

        return math.log(2) / (self.half_life_hours * 3600.0)


@dataclass(frozen=True)
class StoreConfig:
    """Where reputations live and how the Redis store behaves when Redis does not."""

    url: str = "memory://"
    max_keys: int = 1_000_000  # memory store (and the Redis fallback) bound
    prefix: str = "sg"
    shards: int = 1  # >1 spreads keys over that many Redis Cluster hash slots
    timeout: float = 0.05  # seconds per Redis call before it counts as failed
    retry_seconds: float = 1.0  # while degraded, probe Redis at most this often
    fail_mode: str = "closed"  # "closed": blocks known locally stay; "open": nobody is blocked while degraded
    journal_max: int = 100_000  # updates kept during an outage for replay to Redis (oldest dropped beyond it)
    max_connections: int = 32  # Redis connection pool size per process (callers beyond it wait)
    idle_ttl: float = 86_400.0  # an untouched key expires after this (or when its score has decayed to ~0)


@dataclass(frozen=True)
class GeoipConfig:
    """MaxMind databases; empty paths disable GeoIP features without affecting anything else."""

    country_db: str = ""
    asn_db: str = ""


@dataclass(frozen=True)
class ThresholdConfig:
    """The dynamic block threshold ``T = base × (1 − 0.5·fail_rate + 0.8·heat)`` (DESIGN.md)."""

    window_seconds: float = 300.0
    interval_seconds: float = 30.0
    fail_weight: float = 0.5
    heat_weight: float = 0.8
    min_threshold: float = -80.0
    max_threshold: float = -20.0
    heat_half_life: float = 300.0  # attack heat of a country/ASN halves after this many quiet seconds
    override: float | None = None  # a manual block threshold that wins over the computed one


@dataclass(frozen=True)
class Config:
    """The whole configuration: one attribute per section."""

    reputation: ReputationConfig = field(default_factory=ReputationConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    geoip: GeoipConfig = field(default_factory=GeoipConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)


# ---------------------------------------------------------------------------------------------------------------
# generic loading


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a TOML or already-parsed value to ``tp`` (a type hint), or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        return _coerce(value, args[0], where)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = _parse_list_string(value, where)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected a boolean, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return tp(value) if tp is float or not isinstance(value, str) else int(value.strip(), 0)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _parse_list_string(text: str, where: str) -> list[Any]:
    text = text.strip()
    if text.startswith("["):
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not a TOML array: {exc}") from None
    return [part.strip() for part in text.split(",") if part.strip()]


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``STORMGUARD_STORE_MAX_KEYS=5`` -> ``{"store": {"max_keys": "5"}}`` for known sections and keys only."""
    out: dict[str, dict[str, str]] = {}
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        for section in sections:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1:]
                if key in {f.name for f in dataclasses.fields(hints[section])}:
                    out.setdefault(section, {})[key] = value
                break
    return out


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the TOML file (``path``, else ``$STORMGUARD_CONFIG`` when set), then the environment.

    Unknown sections or keys in the file are errors, so a typo never silently leaves a default in place.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: {exc}") from None
    hints = typing.get_type_hints(Config)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)} (known: {', '.join(sorted(hints))})")
    merged: dict[str, dict[str, Any]] = {name: dict(data.get(name, {})) for name in hints}
    for section, values in _env_overrides(env).items():
        merged[section].update(values)
    return Config(**{name: _build(hints[name], merged[name], name) for name in hints})


def section_from_mapping(cls: type, data: Mapping[str, Any]) -> Any:
    """Build one section dataclass from a plain mapping (CLI flags, tests) with the same checks as the file."""
    return _build(cls, data, cls.__name__)
