"""The ``stormguard`` command line: one entry point, one subcommand per job.

Subcommands import their machinery lazily so that ``stormguard --help`` is instant and a subcommand never pays for
libraries it does not use.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from stormguard.report import ReplayStats

EPILOG = "Run 'stormguard SUBCOMMAND --help' for the options of each subcommand."


def _default_sample() -> Path:
    """The bundled sample capture: from the working directory, else next to this package's checkout.

    Only the capture: the sample's access logs describe the same requests, so reading them as well would count
    every request two or three times and inflate the reconnect features.
    """
    here = Path("data") / "sample.pcap"
    if here.exists():
        return here
    return Path(__file__).resolve().parent.parent / "data" / "sample.pcap"


def _parse_fields(items: Sequence[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    fields: dict[str, str] = {}
    for item in items:
        column, sep, name = item.partition("=")
        if not sep or not column or not name:
            raise SystemExit(f"stormguard: --log-field expects COLUMN=NAME (e.g. src_ip=client), got {item!r}")
        fields[column] = name
    return fields


def _check_output(path: Path) -> None:
    if path.suffix.lower() not in {".parquet", ".pq", ".csv"}:
        raise SystemExit(f"stormguard: output {path} must end in .parquet or .csv")
    path.parent.mkdir(parents=True, exist_ok=True)


def _report(stats: ReplayStats, started: float, verbose: bool) -> None:
    stats.print_problems(sys.stderr, limit=1000 if verbose else 20)
    print(stats.summary(), file=sys.stderr)
    print(f"time: {time.perf_counter() - started:.2f} s", file=sys.stderr)


def cmd_replay(args: argparse.Namespace) -> int:
    from stormguard.features.replay import replay_to_file

    out = Path(args.output)
    _check_output(out)
    started = time.perf_counter()
    stats = ReplayStats()
    rows = replay_to_file(args.inputs, out, stats, log_format=args.log_format,
                          log_fields=_parse_fields(args.log_field),
                          show_progress=None if not args.no_progress else False)
    _report(stats, started, args.verbose)
    print(f"wrote {rows} records to {out}", file=sys.stderr)
    if stats.files == 0:
        print("stormguard replay: no readable input", file=sys.stderr)
        return 2
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from stormguard.features.windows import build_features

    out = Path(args.output)
    _check_output(out)
    window = None if args.window in (0, None) else float(args.window)
    frame = build_features(Path(args.records), out, key=args.key, window=window)
    print(f"wrote {len(frame)} feature vectors ({frame.shape[1]} columns) to {out}", file=sys.stderr)
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    """replay → features on the given inputs (default: the bundled sample)."""
    from stormguard.features.replay import replay
    from stormguard.features.windows import client_features
    from stormguard.schema import write_records

    inputs = args.inputs or [str(_default_sample())]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stats = ReplayStats()
    records = replay(inputs, stats)
    records_path = out_dir / "records.parquet"
    write_records(records, records_path)
    _report(stats, started, verbose=False)
    window = None if args.window in (0, None) else float(args.window)
    features = client_features(records, key=args.key, window=window)
    features_path = out_dir / "features.parquet"
    features.to_parquet(features_path, index=False)
    print(f"records:  {len(records):>7}  -> {records_path}")
    print(f"features: {len(features):>7}  -> {features_path}  (key={args.key}, window={window or 'whole input'})")
    if len(features):
        import pandas as pd

        cols = [c for c in ("key", "n_conn", "conn_rate_per_min", "reconnects_10s", "short_lived_2s",
                            "header_entropy_mean", "distinct_uas", "distinct_ja3", "ja4_mode")
                if c in features.columns]
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            top = features.sort_values(cols[1] if len(cols) > 1 else features.columns[0], ascending=False)
            print(top[cols].head(args.show).to_string(index=False))
    return 0 if stats.files else 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stormguard",
        description="Behavioural fingerprinting and reputation for Server-Sent-Events services: replay captures "
                    "and logs into connection records and client feature vectors.",
        epilog=EPILOG,
    )
    from stormguard import __version__

    parser.add_argument("--version", action="version", version=f"stormguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")

    p = sub.add_parser(
        "replay", help="captures and logs -> one row per connection (JA3/JA4, SNI, ALPN, HTTP headers)",
        description="Read pcap/pcapng captures, access logs (combined/common, JSON lines, HAR) and folders of "
                    "them (recursed; files recognised by content) into one connection-record table: one row per "
                    "TLS/QUIC/DTLS ClientHello, HTTP request, other TCP connection or log line. Damaged inputs are "
                    "read up to the damage and reported with file and offset/line; a summary goes to stderr.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="capture or log files, or folders")
    p.add_argument("-o", "--output", required=True, help="output file: .parquet or .csv")
    p.add_argument("--log-format", default="auto",
                   help="access-log format: auto (default), combined, common, jsonl, iliou")
    p.add_argument("--log-field", action="append", metavar="COLUMN=NAME",
                   help="JSON-lines field for a record column, e.g. src_ip=client (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="list every located problem, not the first 20")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "features", help="connection records -> per-client feature vectors",
        description="Compute per-client feature vectors (reconnect rate, reconnects within 10 s, short-lived "
                    "connections, inter-arrival, header entropy and order, distinct UAs/JA3s, UA/TLS consistency, "
                    "JA3/JA4) per client key and time window from a replay output.",
    )
    p.add_argument("records", help="records file written by 'stormguard replay' (.parquet or .csv)")
    p.add_argument("-o", "--output", required=True, help="output file: .parquet or .csv")
    p.add_argument("--key", default="src_ip",
                   help="client key: src_ip (default), ip_ua, ip_ja3, or any record column (e.g. session)")
    p.add_argument("--window", type=float, default=300.0,
                   help="window length in seconds (default 300; 0 = the whole input as one window)")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser(
        "pipeline", help="replay -> features on inputs (default: the bundled sample in data/)",
        description="Run the whole pipeline that exists so far on the given inputs, or on the bundled sample "
                    "(data/) when none are given, writing records.parquet and features.parquet to --out-dir.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="capture or log files or folders (default: data/sample.pcap)")
    p.add_argument("--out-dir", default="out", help="where to write the outputs (default: out/)")
    p.add_argument("--key", default="src_ip", help="client key (see 'stormguard features --help')")
    p.add_argument("--window", type=float, default=0.0, help="window seconds (default 0: whole input)")
    p.add_argument("--show", type=int, default=15, help="how many clients to print (default 15)")
    p.set_defaults(func=cmd_pipeline)

    from stormguard.server.cli import register as register_serve

    register_serve(sub)

    from stormguard.scoring.cli import register as register_reputation

    register_reputation(sub)

    from stormguard.models.cli import register as register_ua

    register_ua(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("stormguard: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        print(f"stormguard {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
