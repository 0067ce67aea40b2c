"""stormguard configuration: one TOML file plus ``STORMGUARD_<SECTION>_<KEY>`` environment variables.

Every part of the project owns one section (``[reputation]``, ``[store]``, ``[geoip]``, ``[threshold]``,
``[server]``, ``[crowdsec]``), declared here as a dataclass whose defaults are the seed values of DESIGN.md, so that running
without any file gives the documented behaviour. Precedence, lowest first: dataclass defaults, the TOML file, the
environment. Loading is generic (driven by type hints) so a new section is one dataclass and one field on
:class:`Config`, not new parsing code.

Environment values are parsed by the field's type: numbers, booleans (``1/true/yes/on``), strings, lists (a TOML
array such as ``["10.0.0.0/8"]`` or a comma-separated string) and, for structured fields (rules, tiers), a TOML
inline value (``STORMGUARD_REPUTATION_RULES='[{name="x", feature="y", op=">=", value=1, delta=-5}]'``,
``STORMGUARD_SERVER_REFUSAL_ACTIONS='{rate="429"}'``). Tables of dict-typed fields (``[server.refusal_actions]``)
merge onto their defaults, so naming one reason keeps the others.

The server's stream tiers are not configured twice: ``[server]`` derives them from the one ``[reputation]`` tier
table (streams, idle seconds, session seconds); ``[server.tiers.<name>]`` may only adjust a tier that table names.
"""

from __future__ import annotations

import dataclasses
import json
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
        RuleConfig("short_disconnects", "short_lived_2s", ">=", 3, -30.0),
        RuleConfig("bad_ja3", "ja3_bad", "==", True, -40.0),
        RuleConfig("ua_tls_mismatch", "ua_tls_mismatch", "==", True, -15.0),
        RuleConfig("slow_reader", "slow_reader_evictions", ">=", 1, -25.0),   # live only: streams ended unread
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


@dataclass(frozen=True, slots=True)
class TierLimits:
    """What a reputation tier may hold on the server: concurrent streams, idle kick, hard stream lifetime (0 = none)."""

    max_streams: int
    idle_timeout: float
    max_lifetime: float = 0.0


@dataclass(frozen=True)
class TenantLimitConfig:
    """``[server.tenant_limits.<tenant>]`` (``"*"``: every tenant without its own entry): soft/hard limits of one
    tenant pool (``stormguard.server.layers.tenant_limits``). A rate of 0 leaves that bucket out."""

    rate: float = 0.0                     # new connections per second for the whole tenant (hard: refused)
    burst: float = 1.0
    soft_remaining: float = 0.0           # admitted with fewer tokens left → degraded
    subject_rate: float = 0.0             # per token / JWT subject of this tenant
    subject_burst: float = 1.0
    subject_soft_remaining: float = 0.0
    soft_streams: int = 0                 # open streams of the tenant at/above this → new ones degraded (0 = off)


def tier_limits(tiers: list[TierConfig]) -> dict[str, TierLimits]:
    """The server's view of the ``[reputation]`` tier table."""
    return {t.name: TierLimits(t.streams, t.idle_seconds, t.session_seconds) for t in tiers}


def default_server_tiers() -> dict[str, TierLimits]:
    """DESIGN.md: trusted 8 streams / idle 15 min; neutral 3 / 5 min; low 1 stream, idle and closed after 30 s."""
    return tier_limits(_default_tiers())


JWT_REASONS = ("jwt_missing", "jwt_malformed", "jwt_signature", "jwt_expired", "jwt_not_yet_valid", "jwt_audience",
               "jwt_issuer", "jwt_algorithm", "jwt_claim", "jwt_invalid")


def _default_refusal_actions() -> dict[str, str]:
    return {"rate": "pace", "token_rate": "pace", "tenant_rate": "pace", "quota": "pace", "tenant_quota": "pace", "breaker": "pace",
            "blocked": "stop", "shutdown": "pace", **dict.fromkeys(JWT_REASONS, "stop")}


def _default_retry_base() -> dict[str, int]:
    return {"stream": 3000, "rate": 5000, "token_rate": 5000, "tenant_rate": 5000, "quota": 10000, "tenant_quota": 10000,
            "breaker": 15000, "blocked": 300000, "shutdown": 3000}


SERVER_SETTINGS_ENV = "STORMGUARD_SERVER_SETTINGS"   # JSON hand-over from ``stormguard serve`` to its workers


@dataclass
class ServerConfig:
    """``[server]``: every knob of ``stormguard serve`` (``stormguard.server.ops.settings.ServerSettings``).

    Mutable on purpose (tests and embedding apps adjust one field); defaults are DESIGN.md's. Environment:
    ``STORMGUARD_SERVER_<FIELD>``.
    """

    # hub
    publish_token: str | None = None
    heartbeat_interval: float = 15.0
    history_max_events: int = 1000
    history_max_age: float = 300.0
    history_url: str = "memory://"        # redis://… → history and fan-out on Redis Streams, shared by processes
    history_prefix: str = "sg:hub"
    max_topics_per_stream: int = 16
    send_queue_size: int = 256
    send_timeout: float = 10.0
    slow_reader_timeout: float = 15.0     # bytes waiting, none acknowledged by the client this long → slow_reader
    slow_reader_max_bytes: int = 1 << 20  # bytes waiting for one stream (transport + kernel) beyond → slow_reader
    stream_capacity: int = 10000          # streams at which the load used by the retry chooser reaches 1
    # identity
    trusted_proxies: tuple[str, ...] = ()
    proxy_headers: tuple[str, ...] = ("x-forwarded-for",)   # the ONE header the trusted proxy sets (or "forwarded")
    ja3_header: str = "x-ja3"
    ja4_header: str = "x-ja4"
    sni_header: str = "x-tls-sni"
    # breaker
    breaker_window: float = 10.0
    breaker_buckets: int = 10
    breaker_threshold: float = 0.5
    breaker_min_requests: int = 20
    breaker_open_timeout: float = 30.0
    breaker_probes: int = 3
    loop_lag_threshold: float = 0.5
    loop_monitor_interval: float = 0.25
    # reputation gate and live rules (store and rules: [store], [reputation], [threshold])
    reputation: bool = True               # gate on the reputation store; tiers from the store's score
    reputation_paths: tuple[str, ...] = ("/events",)   # where the store gate reads (never per published event)
    live_rules: bool = True               # connection events feed online features, rules and the threshold
    live_window: float = 300.0            # online feature window (the batch default, so vectors agree)
    model: str = "default"                # live model bundle: "default" = data/default-model.skops of a checkout;
                                          # "" / "none" = off; else a path
    model_interval: float = 0.25          # seconds between live model micro-batches
    live_flush_interval: float = 0.05     # seconds between batches of live rule updates
    live_queue_size: int = 100_000        # connection events waiting for the batcher (beyond: dropped, counted)
    live_max_keys: int = 100_000          # clients tracked by the online features (LRU beyond)
    live_refusal_layers: tuple[str, ...] = ("limiter", "tenant")   # refusals counted as connection attempts
    # address groups (server/live/groups.py): a /24 (/64) whose addresses together make many short-lived streams
    group_short_lived: int = 0            # short-lived streams per group and window that act (0 = off)
    group_min_addresses: int = 20         # ... from at least this many distinct addresses
    group_window: float = 60.0
    group_block_seconds: float = 300.0    # first crossing: lowest tier; the next ones: refused; each this long
    group_prefix_v4: int = 24
    group_prefix_v6: int = 64
    group_max: int = 10_000               # networks tracked (LRU beyond)
    block_recheck_seconds: float = 1.0    # a block seen locally is re-read from the store at most this often
    block_cache_size: int = 100_000
    # tenants (JWT): a key enables them
    jwt_secret: str | None = None         # HS256 shared secret
    jwt_public_key: str | None = None     # RS256 public key: PEM text or a file path
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = 0.0
    jwt_required: bool = True             # with a key configured, /events without a token is refused
    jwt_query_param: str = "access_token"     # EventSource cannot set headers: ?access_token=...
    jwt_paths: tuple[str, ...] = ("/events",)
    tenant_claim: str = "tenant"
    tenant_streams: int = 1000            # concurrent streams per tenant pool (default pool size)
    tenant_pools: dict[str, int] = field(default_factory=dict)   # per-tenant pool sizes
    tenant_limits: dict[str, TenantLimitConfig] = field(default_factory=dict)   # per-pool soft/hard limits
    soft_lower_tier: bool = True          # a request past a soft threshold is also served one tier lower
    # limiter
    ip_rate: float = 3.0
    ip_burst: float = 2.0
    ip_soft_remaining: float = 1.0        # admitted with fewer tokens left than this → degraded (longer retry:)
    token_rate: float = 50.0
    token_burst: float = 100.0
    token_soft_remaining: float = 20.0
    limiter_max_entries: int = 1_000_000
    limiter_url: str = ""                 # redis://… → buckets shared by processes ("" = per process, in memory)
    limiter_prefix: str = "sg:lim"        # Redis key prefix (hash tag) of shared buckets; a URL ?prefix= wins
    limited_paths: tuple[str, ...] = ("/events",)   # "*": every path but exempt_paths
    challenge: bool = False              # proof-of-work page for low-tier browsers; a pass lifts one tier
    challenge_secret: str = ""           # HMAC key of challenges and pass cookies ("" = random per process)
    challenge_difficulty: int = 16       # leading zero bits of SHA-256 the browser must find (~65k hashes)
    challenge_ttl: float = 3600.0        # seconds a pass cookie lifts its client
    conn_log: str = ""                   # serve --conn-log: one JSON line per request (server/ops/connlog.py)
    conn_log_max_bytes: int = 100 << 20  # rotate the connection log past this size
    conn_log_backups: int = 5            # rotated files kept (FILE.1 … FILE.N)
    quota_url: str = ""                   # redis://… (…?cluster=1) → stream counts as leases shared by processes
    quota_prefix: str = "sg:q"            # Redis key prefix of the leases; a URL ?prefix= wins (gets ":q")
    quota_lease_seconds: float = 15.0     # a dead process's streams stop counting within this (renewed lease/3)
    # quota (tiers from [reputation]; default everyone is neutral)
    tiers: dict[str, TierLimits] = field(default_factory=default_server_tiers)
    default_tier: str = "neutral"
    # refusals: reason -> pace | stop | 429 | 503
    refusal_actions: dict[str, str] = field(default_factory=_default_refusal_actions)
    # retry chooser (milliseconds)
    retry_base_ms: dict[str, int] = field(default_factory=_default_retry_base)
    retry_tier_factor: dict[str, float] = field(default_factory=lambda: {"trusted": 0.5, "neutral": 1.0, "low": 3.0})
    retry_load_gain: float = 3.0
    retry_degrade_factor: float = 2.0
    retry_jitter: float = 0.25
    retry_shutdown_jitter: float = 0.9
    retry_min_ms: int = 500
    retry_max_ms: int = 600000
    # operations
    shadow: bool = False
    audit_path: str | None = None
    audit_queue_size: int = 10000
    exempt_paths: tuple[str, ...] = ("/healthz", "/metrics")
    shutdown_grace: float = 3.0
    # request head bounds, enforced in the HTTP protocol (server/layers/headlimit.py): 431/414/408, counted
    head_max_bytes: int = 65536           # request line + headers
    head_max_headers: int = 128
    head_max_url: int = 8192
    head_timeout: float = 10.0            # seconds from a head's first byte (or the connection) to its end
    enable_test_routes: bool = False
    # admin API and dashboard (server/ops/admin.py): a separate listener, loopback by default; 0 = off
    admin_port: int = 0
    admin_host: str = "127.0.0.1"
    admin_token: str | None = None        # bearer token ($STORMGUARD_ADMIN_TOKEN wins)
    admin_role_claim: str = "role"        # or a JWT (jwt_secret / jwt_public_key) whose claim holds admin_role
    admin_role: str = "admin"
    admin_cookie_max_age: int = 3600      # the dashboard's login cookie
    admin_stream_interval: float = 1.0    # seconds between dashboard updates (EventSource)
    # dynamic quotas (server/ops/controller.py): downgrade streams, tighten rates, step back when healthy
    controller: bool = True
    controller_interval: float = 30.0     # seconds between evaluations
    controller_window: float = 300.0      # rejection ratio window
    controller_reject_ratio: float = 0.1  # above this ...
    controller_reject_hold: float = 120.0  # ... for this long: one downgrade step
    controller_healthy_ratio: float = 0.05  # hysteresis: healthy only below this ratio
    controller_surge_factor: float = 1.1  # new streams per interval above this × recent p95: one tightening step
    controller_surge_min: float = 10.0    # ... and at least this many new streams in the interval
    controller_history: int = 120         # intervals behind the p95
    controller_min_history: int = 10      # no surge decisions before this many intervals
    controller_cooldown: float = 300.0    # healthy this long: one step back toward the baseline
    controller_step_share: float = 0.25   # one step: this share of the quota ...
    controller_min_step: float = 1.0      # ... at least this much ...
    controller_max_step_share: float = 0.5  # ... at most this share
    controller_floor: float = 0.25        # never below this share of the baseline
    controller_max_level: int = 4         # steps below the baseline at most
    quota_max_streams: int = 10_000       # bounds of PUT /admin/quotas
    quota_max_pool: int = 1_000_000
    quota_max_rate: float = 100_000.0

    def __post_init__(self) -> None:
        for name in ("slow_reader_timeout", "slow_reader_max_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"server.{name}: must be a number >= 0 (0 = off), got {value!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ServerConfig:
        """Build from plain data (TOML table, JSON): unknown keys are an error, so typos do not pass silently;
        tables merge onto the defaults (``[server.tiers.low]`` alone keeps the other tiers)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown server settings: {', '.join(sorted(unknown))}")
        return _build(cls, data, "server")

    def to_json(self) -> str:
        """Serialise for worker processes (uvicorn --workers re-imports the app factory in each process)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> ServerConfig:
        """Settings handed over by ``stormguard serve`` through ``$STORMGUARD_SERVER_SETTINGS``; defaults when unset."""
        raw = os.environ.get(SERVER_SETTINGS_ENV)
        return cls.from_mapping(json.loads(raw)) if raw else cls()


@dataclass(frozen=True)
class CrowdsecConfig:
    """``[crowdsec]``: the CrowdSec Local API in both directions (``stormguard.scoring.enforce``).

    Import (stormguard as a bouncer) runs when ``lapi_url`` and a bouncer key are set; export (stormguard as a
    source) when machine credentials are set. Secrets come from the environment
    (``STORMGUARD_CROWDSEC_BOUNCER_KEY``, ``STORMGUARD_CROWDSEC_MACHINE_PASSWORD``) or files, not the TOML.
    """

    lapi_url: str = ""                    # http://127.0.0.1:8080
    bouncer_key: str = ""                 # from `cscli bouncers add NAME` (one key per server process)
    bouncer_key_file: str = ""
    credentials_file: str = ""            # from `cscli machines add NAME --auto -f FILE` (url, login, password)
    machine_id: str = ""
    machine_password: str = ""
    import_decisions: bool = True
    export_blocks: bool = True
    pull_interval: float = 10.0
    scan_interval: float = 2.0            # how often stormguard's blocks are listed for export
    push_interval: float = 5.0            # at most one alerts call per interval
    push_batch: int = 100                 # alerts per call
    queue_path: str = "stormguard-crowdsec-queue.sqlite"
    queue_max: int = 100_000
    timeout: float = 5.0
    max_backoff: float = 120.0
    full_pulls: bool = False              # every pull the whole active set (set by `serve --workers N`)


@dataclass(frozen=True)
class Config:
    """The whole configuration: one attribute per section."""

    reputation: ReputationConfig = field(default_factory=ReputationConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    geoip: GeoipConfig = field(default_factory=GeoipConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    crowdsec: CrowdsecConfig = field(default_factory=CrowdsecConfig)


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
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp) or (str, Any)
        if isinstance(value, str):
            value = _parse_table_string(value, where)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {_coerce(k, key_tp, where): _coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        if isinstance(value, str):
            value = _parse_list_string(value, where)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
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


def _parse_table_string(text: str, where: str) -> dict[str, Any]:
    """A TOML inline table (``{rate="429"}``) or a JSON object (``{"rate": "429"}``)."""
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as exc:
        try:
            value = json.loads(text)
        except ValueError:
            raise ConfigError(f"{where}: not a TOML inline table: {exc}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}") from None
        return value


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    for k, v in kwargs.items():           # dict-typed fields: a table merges onto the default table
        f = fields[k]
        if isinstance(v, dict) and typing.get_origin(hints[k]) is dict and f.default_factory is not dataclasses.MISSING:
            kwargs[k] = {**f.default_factory(), **v}
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
            data = tomllib.loads(p.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})") \
                from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: {exc}") from None
    hints = typing.get_type_hints(Config)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)} (known: {', '.join(sorted(hints))})")
    merged: dict[str, dict[str, Any]] = {name: dict(data.get(name, {})) for name in hints}
    for section, values in _env_overrides(env).items():
        merged[section].update(values)
    server_tiers = merged["server"].pop("tiers", None)
    try:
        sections = {name: _build(hints[name], merged[name], name) for name in hints}
        sections["server"].tiers = server_tiers_from(sections["reputation"], server_tiers)
    except ConfigError as exc:  # name the file (the message already names the section and key)
        if path is not None and not str(exc).startswith(str(path)):
            raise ConfigError(f"{path}: {exc}") from None
        raise
    return Config(**sections)


def server_tiers_from(rep: ReputationConfig, overrides: Any = None) -> dict[str, TierLimits]:
    """The ``[reputation]`` tier table as server limits, with ``[server.tiers.<name>]`` adjustments merged in.

    An adjustment may only name a tier of that table: the tier names (and the scores that lead to them) have one
    source of truth.
    """
    tiers = tier_limits(rep.tiers)
    if not overrides:
        return tiers
    if isinstance(overrides, str):
        overrides = _parse_table_string(overrides, "server.tiers")
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"server.tiers: expected a table, got {overrides!r}")
    for name, value in overrides.items():
        if name not in tiers:
            raise ConfigError(f"server.tiers.{name}: no such tier in [reputation] tiers ({', '.join(tiers)})")
        if isinstance(value, TierLimits):
            tiers[name] = value
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"server.tiers.{name}: expected a table, got {value!r}")
        tiers[name] = _build(TierLimits, {**dataclasses.asdict(tiers[name]), **value}, f"server.tiers.{name}")
    return tiers


def section_from_mapping(cls: type, data: Mapping[str, Any]) -> Any:
    """Build one section dataclass from a plain mapping (CLI flags, tests) with the same checks as the file."""
    return _build(cls, data, cls.__name__)
