"""``stormguard serve``: run the protected SSE hub under uvicorn (uvloop + httptools, access log off).

DESIGN.md: uvicorn's access log halves throughput and h11 gives ~0.35× of httptools, so neither is used. Settings
reach worker processes through ``$STORMGUARD_SERVER_SETTINGS`` (JSON), the config file through
``$STORMGUARD_CONFIG`` and the store through ``$STORMGUARD_STORE_URL``, because ``--workers`` re-imports the app
factory in every process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stormguard.server.ops.settings import ENV_VAR, ServerSettings, server_tiers_from

from stormguard.config import CONFIG_ENV, Config, ConfigError, load_config


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` onto ``base``; tables merge one level deep (a JSON ``refusal_actions`` keeps the TOML's others)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = {**out[key], **value}
        out[key] = value
    return out


def load_config_and_settings(config: str | None, store: str | None = None) -> tuple[Config, ServerSettings]:
    """The whole config and the server's settings, lowest precedence first: defaults, the TOML file (``config``,
    else ``$STORMGUARD_CONFIG``), ``STORMGUARD_<SECTION>_<KEY>`` variables, ``$STORMGUARD_SERVER_SETTINGS`` (JSON),
    and ``store`` (``--store``) for the store URL. Server tiers come from the ``[reputation]`` tier table."""
    cfg = load_config(config)
    if store:
        cfg = dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, url=store))
    settings = cfg.server
    env = os.environ.get(ENV_VAR)
    if env:
        data = json.loads(env)
        if not isinstance(data, dict):
            raise ConfigError(f"${ENV_VAR}: expected a JSON object")
        merged = _merge(dataclasses.asdict(settings), data)
        tiers = merged.pop("tiers")
        settings = ServerSettings.from_mapping(merged)
        settings.tiers = server_tiers_from(cfg.reputation, tiers)
    return cfg, settings


def load_settings(config: str | None) -> ServerSettings:
    """The server's settings alone (see :func:`load_config_and_settings`)."""
    return load_config_and_settings(config)[1]


def shared_store(url: str) -> bool:
    return urlsplit(url).scheme in ("redis", "rediss", "unix")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    try:
        cfg, settings = load_config_and_settings(args.config, args.store)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"stormguard serve: {exc}", file=sys.stderr)
        return 2
    from stormguard.scoring.enforce.bridge import bouncer_key, machine

    try:   # [crowdsec] credentials: one clear line here rather than a failing worker
        machine(cfg.crowdsec)
        bouncer_key(cfg.crowdsec)
    except ConfigError as exc:
        print(f"stormguard serve: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1 and cfg.crowdsec.lapi_url:
        # Each worker runs its own importer (the range table is per process) on the one bouncer key: full pulls,
        # so they do not split the decision deltas. Export from one place only: `stormguard crowdsec push`.
        os.environ["STORMGUARD_CROWDSEC_FULL_PULLS"] = "1"
        if cfg.crowdsec.export_blocks and machine(cfg.crowdsec) is not None:
            print("stormguard serve: --workers > 1: CrowdSec export is off in the workers (they would push every "
                  "block N times); run `stormguard crowdsec push` beside them", file=sys.stderr)
        os.environ["STORMGUARD_CROWDSEC_EXPORT_BLOCKS"] = "0"
    if args.workers > 1 and not shared_store(cfg.store.url):
        # The in-memory reputation, hub, limiter and quota are per process. With --store redis://… reputation,
        # hub history, fan-out, the limiter's buckets and the stream-count leases are shared between workers.
        print("stormguard serve: --workers > 1 needs a shared store (--store redis://…); "
              "run one worker per process/port behind a balancer otherwise", file=sys.stderr)
        return 2
    if shared_store(cfg.store.url) and settings.history_url == "memory://":
        # one shared store: the hub's history and fan-out go through its Redis Streams too, so every worker and
        # every process on that Redis serves the same topics
        settings = dataclasses.replace(settings, history_url=cfg.store.url)
    if shared_store(cfg.store.url) and not settings.limiter_url:
        # and the per-address / per-token buckets too (local buckets only while Redis is unreachable)
        settings = dataclasses.replace(settings, limiter_url=cfg.store.url)
    if shared_store(cfg.store.url) and not settings.quota_url:
        # and the concurrent-stream counts, as leases a dead process gives back (server/layers/quota_shared.py)
        settings = dataclasses.replace(settings, quota_url=cfg.store.url)
    if args.shadow:
        settings = dataclasses.replace(settings, shadow=True)
    if args.audit_log:
        settings = dataclasses.replace(settings, audit_path=args.audit_log)
    if args.conn_log:
        if args.workers > 1:  # one writer per file: several workers would interleave and rotate under each other
            print("stormguard serve: --conn-log needs --workers 1 (run one server per log file)", file=sys.stderr)
            return 2
        settings = dataclasses.replace(settings, conn_log=str(Path(args.conn_log).resolve()))
    token = os.environ.get("STORMGUARD_PUBLISH_TOKEN")
    if token:
        settings = dataclasses.replace(settings, publish_token=token)
    problem, settings = admin_settings(args, settings)
    if problem:
        print(f"stormguard serve: {problem}", file=sys.stderr)
        return 2
    # Workers re-import the factory: hand everything over through the environment.
    from stormguard.models.bundle import BundleError
    from stormguard.server.live.model import check_model, resolve_model

    if args.no_model or args.model:
        settings = dataclasses.replace(settings, model="none" if args.no_model else str(Path(args.model).resolve()))
    model_path = resolve_model(settings.model) if settings.reputation and settings.live_rules else None
    if model_path is not None:  # fail here with one clear line, and let every worker load the same file
        try:
            settings = dataclasses.replace(settings, model=str(check_model(model_path).resolve()))
        except BundleError as exc:
            print(f"stormguard serve: {exc}", file=sys.stderr)
            return 2
    os.environ[ENV_VAR] = settings.to_json()
    if args.config:
        os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    os.environ["STORMGUARD_STORE_URL"] = cfg.store.url
    from stormguard.server.layers.headlimit import GuardedHttpToolsProtocol, HeadLimits
    from stormguard.server.layers.identity import check_proxy_headers

    try:
        HeadLimits.from_settings(settings)
        check_proxy_headers(settings.proxy_headers)
    except ValueError as exc:
        print(f"stormguard serve: {exc}", file=sys.stderr)
        return 2
    # httptools with the request head bounded in bytes, headers, URL and time (headlimit.py)
    http: Any = GuardedHttpToolsProtocol
    if args.tls_cert:  # TLS terminated in process, the ClientHello fingerprinted on the way (server/tls_hello.py)
        import ssl

        from stormguard.server.tls_hello import CERT_ENV, KEY_ENV, server_context

        try:
            server_context(args.tls_cert, args.tls_key)  # fail here with one clear line
        except (OSError, ssl.SSLError) as exc:
            print(f"stormguard serve: --tls-cert/--tls-key: {exc}", file=sys.stderr)
            return 2
        os.environ[CERT_ENV] = str(Path(args.tls_cert).resolve())
        os.environ[KEY_ENV] = str(Path(args.tls_key).resolve()) if args.tls_key else ""
        http = "stormguard.server.tls_hello:HelloHttpProtocol"
    uvicorn.run("stormguard.server.app:create_app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, loop="uvloop", http=http, access_log=False, lifespan="on",
                # stormguard's identity layer decides which proxies may set the client address: uvicorn's own
                # default would trust X-Forwarded-For from 127.0.0.1 and rewrite the address before we see it
                proxy_headers=False, forwarded_allow_ips="",
                timeout_graceful_shutdown=max(1, int(settings.shutdown_grace) + 2), log_level=args.log_level)
    return 0


def admin_settings(args: argparse.Namespace, settings: ServerSettings) -> tuple[str | None, ServerSettings]:
    """``--admin-port``/``--admin-host`` and ``$STORMGUARD_ADMIN_TOKEN`` onto the settings; a problem, if any."""
    if getattr(args, "admin_port", None) is not None:
        settings = dataclasses.replace(settings, admin_port=args.admin_port)
    if getattr(args, "admin_host", None):
        settings = dataclasses.replace(settings, admin_host=args.admin_host)
    admin_token = os.environ.get("STORMGUARD_ADMIN_TOKEN")
    if admin_token:
        settings = dataclasses.replace(settings, admin_token=admin_token)
    if settings.admin_port:
        if args.workers > 1:
            return "--admin-port needs --workers 1 (the admin listener is one socket in one process)", settings
        if not (settings.admin_token or settings.jwt_secret or settings.jwt_public_key):
            return ("--admin-port needs credentials: $STORMGUARD_ADMIN_TOKEN, [server] admin_token, or a JWT key "
                    "(jwt_secret / jwt_public_key) for tokens with the admin role"), settings
    return None, settings


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``stormguard`` command line (called from ``stormguard.cli.build_parser``)."""
    p = subparsers.add_parser(
        "serve", help="run the protected SSE hub (Starlette under uvicorn)",
        description="Run the SSE hub (GET /events, POST /publish, /metrics, /healthz) behind the defence layers: "
                    "identity -> circuit breaker -> reputation gate -> tenant (JWT) -> limiter -> quota. Settings "
                    "come from --config (TOML: [server]; tiers from [reputation]), STORMGUARD_SERVER_<KEY> "
                    "variables and $STORMGUARD_SERVER_SETTINGS (JSON); the publish token from "
                    "$STORMGUARD_PUBLISH_TOKEN.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (default 1; more need a shared store: --store redis://...)")
    p.add_argument("--config", help="TOML config ([server], [reputation], [store], [threshold]...; "
                                    "default $STORMGUARD_CONFIG)")
    p.add_argument("--store", metavar="URL", help="reputation store: memory:// (default), redis://host:6379/0, "
                                                  "rediss://..., unix:///path (overrides [store] url)")
    p.add_argument("--shadow", action="store_true", help="dry run: decide, count and log refusals, but admit")
    p.add_argument("--audit-log", help="JSON-lines audit file ('-' for stderr)")
    p.add_argument("--conn-log", metavar="FILE", help="one JSON line per connection (the record schema, readable by "
                                                      "'stormguard replay'), rotated by size")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", metavar="PATH", help="behaviour model bundle that scores live clients in micro-batches "
                   "off the accept path (default: [server] model, i.e. data/default-model.skops of this checkout)")
    g.add_argument("--no-model", action="store_true", help="no live model scoring")
    p.add_argument("--admin-port", type=int, metavar="PORT",
                   help="serve the admin API and dashboard (/admin/...) on this port (default: [server] admin_port; "
                        "0 = off); credentials: $STORMGUARD_ADMIN_TOKEN or a JWT with the admin role")
    p.add_argument("--admin-host", metavar="ADDR", help="admin listener address (default 127.0.0.1)")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    p.add_argument("--tls-cert", metavar="PEM", help="terminate TLS here (certificate chain, PEM) and fingerprint "
                   "each client's ClientHello (JA3/JA4/SNI/ALPN) for the identity layer")
    p.add_argument("--tls-key", metavar="PEM", help="private key for --tls-cert (if not in the same file)")
    p.set_defaults(func=cmd_serve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry (``python -m stormguard.server.cli serve …``) until the lead wires ``register``."""
    parser = argparse.ArgumentParser(prog="stormguard")
    register(parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())


def cmd_proxy(args: argparse.Namespace) -> int:
    """``stormguard proxy``: the layers in front of any HTTP service (server/proxy.py) under uvicorn."""
    import uvicorn

    try:
        cfg, settings = load_config_and_settings(args.config, args.store)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"stormguard proxy: {exc}", file=sys.stderr)
        return 2
    parts = urlsplit(args.upstream)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        print(f"stormguard proxy: --upstream must be http://HOST:PORT, got {args.upstream!r}", file=sys.stderr)
        return 2
    from stormguard.server.layers.headlimit import GuardedHttpToolsProtocol

    os.environ[ENV_VAR] = settings.to_json()
    if args.config:      # the app factory loads the same file ([reputation], [crowdsec], …), as serve's workers do
        os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    os.environ["STORMGUARD_PROXY"] = json.dumps({"upstream": args.upstream, "timeout": args.timeout,
                                                 "sse_paths": args.sse_path or ["/events"],
                                                 "store": cfg.store.url})
    uvicorn.run("stormguard.server.proxy:proxy_app_from_env", factory=True, host=args.host, port=args.port,
                loop="uvloop", http=GuardedHttpToolsProtocol, access_log=False, lifespan="on",
                proxy_headers=False, forwarded_allow_ips="", log_level=args.log_level)
    return 0


def register_proxy(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "proxy", help="put every defence layer in front of any HTTP service (a reverse proxy)",
        description="Forward every request to --upstream through identity, breaker, reputation gate, limiter and "
                    "quota; stream SSE and chunked responses through unbuffered; set X-Forwarded-For/Forwarded; "
                    "answer 502/504 with a clear body when the upstream is unreachable or slow. The proxy's own "
                    "health and metrics are at /_stormguard/healthz and /_stormguard/metrics.")
    p.add_argument("--upstream", required=True, metavar="URL", help="the service, http://HOST:PORT")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--sse-path", action="append", metavar="PATH",
                   help="an upstream stream route the quota counts (repeatable; default /events)")
    p.add_argument("--timeout", type=float, default=30.0, help="upstream connect/write timeout, s (default 30)")
    p.add_argument("--config", help="TOML config (default $STORMGUARD_CONFIG)")
    p.add_argument("--store", metavar="URL", help="reputation store (default memory://)")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    p.set_defaults(func=cmd_proxy)
    return p
