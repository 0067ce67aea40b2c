"""Server settings: one dataclass holding every default DESIGN.md gives, so config (TOML/env) maps onto fields.

Kept free of Starlette/uvicorn imports so the command line and config loaders can build it cheaply.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

ENV_VAR = "STORMGUARD_SERVER_SETTINGS"


@dataclass(frozen=True, slots=True)
class TierLimits:
    """What a reputation tier may hold: concurrent streams, idle kick, and a hard stream lifetime (0 = none)."""

    max_streams: int
    idle_timeout: float
    max_lifetime: float = 0.0


def default_tiers() -> dict[str, TierLimits]:
    """DESIGN.md: trusted 8 streams / idle 15 min; neutral 3 / 5 min; low 1 stream closed after 30 s."""
    return {
        "trusted": TierLimits(8, 900.0),
        "neutral": TierLimits(3, 300.0),
        "low": TierLimits(1, 300.0, 30.0),
    }


@dataclass
class ServerSettings:
    """Every knob of ``stormguard serve``; defaults from DESIGN.md, overridable by TOML/env (see ``from_mapping``)."""

    # hub
    publish_token: str | None = None
    heartbeat_interval: float = 15.0
    history_max_events: int = 1000
    history_max_age: float = 300.0
    max_topics_per_stream: int = 16
    send_queue_size: int = 256
    send_timeout: float = 10.0
    stream_capacity: int = 10000          # streams at which the load used by the retry chooser reaches 1
    # identity
    trusted_proxies: tuple[str, ...] = ()
    proxy_headers: tuple[str, ...] = ("forwarded", "x-forwarded-for")
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
    # limiter
    ip_rate: float = 3.0
    ip_burst: float = 2.0
    ip_soft_remaining: float = 1.0        # admitted with fewer tokens left than this → degraded (longer retry:)
    token_rate: float = 50.0
    token_burst: float = 100.0
    token_soft_remaining: float = 20.0
    limiter_max_entries: int = 1_000_000
    limited_paths: tuple[str, ...] = ("/events",)
    # quota (tiers: the reputation gate sets the tier; default everyone is neutral)
    tiers: dict[str, TierLimits] = field(default_factory=default_tiers)
    default_tier: str = "neutral"
    # refusals: reason -> pace | stop | 429 | 503
    refusal_actions: dict[str, str] = field(default_factory=lambda: {
        "rate": "pace", "token_rate": "pace", "quota": "pace", "breaker": "pace", "blocked": "stop",
        "shutdown": "pace",
    })
    # retry chooser (milliseconds)
    retry_base_ms: dict[str, int] = field(default_factory=lambda: {
        "stream": 3000, "rate": 5000, "token_rate": 5000, "quota": 10000, "breaker": 15000, "blocked": 300000,
        "shutdown": 3000,
    })
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
    enable_test_routes: bool = False

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ServerSettings:
        """Build from plain data (TOML table, JSON): unknown keys are an error, so typos do not pass silently."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown server settings: {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        defaults = cls()
        for key, value in data.items():
            if key == "tiers":
                value = {k: v if isinstance(v, TierLimits) else TierLimits(**v) for k, v in value.items()}
            if isinstance(value, dict):     # tables merge onto the defaults: [server.tiers.low] alone keeps the rest
                value = {**getattr(defaults, key), **value}
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    def to_json(self) -> str:
        """Serialise for worker processes (uvicorn --workers re-imports the app factory in each process)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> ServerSettings:
        """Settings handed over by ``stormguard serve`` through the environment; defaults when unset."""
        raw = os.environ.get(ENV_VAR)
        return cls.from_mapping(json.loads(raw)) if raw else cls()
