"""``stormguard storm`` — drive labelled client classes against an SSE service and report how it converges."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "storm", help="drive a reconnect storm of labelled client classes against an SSE service",
        description="Drive labelled client classes (well-behaved EventSource clients, no-backoff reconnectors, "
                    "flappers, UA rotators, header-poor scripts, slow readers, a botnet, scanners, publishers) "
                    "against TARGET, each class from its own range of source addresses, for DURATION seconds; "
                    "print a progress line a second and the convergence table next to the seed's; write the "
                    "report (JSON, with a PNG plot beside it) and the ground-truth labels (one row per address).")
    p.add_argument("--target", required=True, metavar="URL", help="the service, http://HOST:PORT")
    p.add_argument("--profile", metavar="PROFILE.toml", help="client classes (default: the shipped default.toml)")
    p.add_argument("--duration", type=float, metavar="S", help="seconds of storm (default: the profile's)")
    p.add_argument("--scale", type=float, default=1.0, metavar="F", help="multiply every class's client count")
    p.add_argument("--processes", type=int, default=0, metavar="N", help="generator processes (default: CPUs)")
    p.add_argument("--report", metavar="OUT.json", help="write the report here (and OUT.png beside it)")
    p.add_argument("--labels", metavar="OUT.csv", help="write key,class,behaviour,label per source address")
    p.add_argument("--token", metavar="TOKEN", help="publish token (default: $STORMGUARD_PUBLISH_TOKEN)")
    p.add_argument("--metrics-url", metavar="URL", help="Prometheus page for RSS and loop lag "
                                                        "(default: TARGET/metrics)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from stormguard.storm.profile import ProfileError, load_profile
    from stormguard.storm.record import convergence_table, plot
    from stormguard.storm.runner import run_storm, save_report, write_labels

    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        raise ValueError(str(exc)) from None
    if args.scale != 1.0:
        profile = profile.scaled(args.scale)
    if args.duration is not None:
        profile.duration = args.duration
    if args.labels:
        n = write_labels(profile, Path(args.labels))
        print(f"labels: {n} addresses -> {args.labels}", file=sys.stderr)
    report = run_storm(args.target, profile, token=args.token or os.environ.get("STORMGUARD_PUBLISH_TOKEN"),
                       processes=args.processes, metrics_url=args.metrics_url, progress=not args.quiet)
    print(convergence_table(report))
    if args.report:
        path = Path(args.report)
        save_report(report, path)
        png = path.with_suffix(".png")
        drew = plot(report, str(png))
        print(f"report -> {path}" + (f", plot -> {png}" if drew else " (no plot: matplotlib is not installed)"),
              file=sys.stderr)
    return 0
