"""``stormguard serve``: run the protected SSE hub under uvicorn (uvloop + httptools, access log off).

DESIGN.md: uvicorn's access log halves throughput and h11 gives ~0.35× of httptools, so neither is used. Settings
reach worker processes through ``$STORMGUARD_SERVER_SETTINGS`` (JSON) because ``--workers`` re-imports the app
factory in every process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stormguard.server.settings import ENV_VAR, ServerSettings


def load_settings(config: str | None) -> ServerSettings:
    """Defaults ← ``[server]`` table of the TOML config (or the whole file) ← ``$STORMGUARD_SERVER_SETTINGS``."""
    data: dict[str, Any] = {}
    if config:
        doc = tomllib.loads(Path(config).read_text())
        data.update(doc.get("server", doc))
    env = os.environ.get(ENV_VAR)
    if env:
        import json

        data.update(json.loads(env))
    return ServerSettings.from_mapping(data)


def cmd_serve(args: argparse.Namespace) -> int:
    import dataclasses

    import uvicorn

    if args.workers > 1:
        # The in-memory hub, limiter and quota are per process: with several workers a publish would reach only
        # the streams of the worker that received it. Multi-process serving waits for the Redis store.
        print("stormguard serve: --workers > 1 needs a shared store (Redis, not implemented yet); "
              "run one worker per process/port behind a balancer meanwhile", file=sys.stderr)
        return 2
    settings = load_settings(args.config)
    if args.shadow:
        settings = dataclasses.replace(settings, shadow=True)
    if args.audit_log:
        settings = dataclasses.replace(settings, audit_path=args.audit_log)
    token = os.environ.get("STORMGUARD_PUBLISH_TOKEN")
    if token:
        settings = dataclasses.replace(settings, publish_token=token)
    os.environ[ENV_VAR] = settings.to_json()
    uvicorn.run("stormguard.server.app:create_app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, loop="uvloop", http="httptools", access_log=False, lifespan="on",
                timeout_graceful_shutdown=max(1, int(settings.shutdown_grace) + 2), log_level=args.log_level)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``stormguard`` command line (called from ``stormguard.cli.build_parser``)."""
    p = subparsers.add_parser(
        "serve", help="run the protected SSE hub (Starlette under uvicorn)",
        description="Run the SSE hub (GET /events, POST /publish, /metrics, /healthz) behind the defence layers: "
                    "identity -> circuit breaker -> reputation gate -> limiter -> quota. Settings come from "
                    "--config (TOML, [server] table) and $STORMGUARD_SERVER_SETTINGS (JSON); the publish token "
                    "from $STORMGUARD_PUBLISH_TOKEN.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1; more need the Redis store, not yet available)")
    p.add_argument("--config", help="TOML file with a [server] table of settings")
    p.add_argument("--shadow", action="store_true", help="dry run: decide, count and log refusals, but admit")
    p.add_argument("--audit-log", help="JSON-lines audit file ('-' for stderr)")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
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
