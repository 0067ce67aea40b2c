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
    from stormguard.features.distributed.cli import check_engine
    from stormguard.features.replay import replay_to_file

    out = Path(args.output)
    _check_output(out)
    started = time.perf_counter()
    stats = ReplayStats()
    if check_engine(args):
        from stormguard.features.distributed.cli import replay_on_dask

        rows = replay_on_dask(args, out, stats, _parse_fields(args.log_field))
    else:
        rows = replay_to_file(args.inputs, out, stats, log_format=args.log_format,
                              log_fields=_parse_fields(args.log_field),
                              show_progress=None if not args.no_progress else False, jobs=args.jobs)
    _report(stats, started, args.verbose)
    if stats.files == 0:
        if out.is_dir():  # a dataset of the dask engine
            import shutil

            shutil.rmtree(out)
        out.unlink(missing_ok=True)  # no output is better than an empty table that looks like a result
        print("stormguard replay: no readable input (no output written)", file=sys.stderr)
        return 2
    print(f"wrote {rows} records to {out}", file=sys.stderr)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from stormguard.features.clients.windows import build_features
    from stormguard.features.distributed.cli import check_engine

    out = Path(args.output)
    _check_output(out)
    window = None if args.window in (0, None) else float(args.window)
    if check_engine(args):
        from stormguard.features.distributed.cli import features_on_dask

        rows = features_on_dask(args, out, window)
        print(f"wrote {rows} feature vectors to the dataset {out}", file=sys.stderr)
        return 0
    frame = build_features(Path(args.records), out, key=args.key, window=window)
    print(f"wrote {len(frame)} feature vectors ({frame.shape[1]} columns) to {out}", file=sys.stderr)
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    """replay → features → score (bundled model) → reputation store, on the inputs (default: the bundled sample)."""
    from stormguard.features.clients.windows import client_features
    from stormguard.features.distributed.cli import check_engine
    from stormguard.features.replay import replay
    from stormguard.schema import write_records

    inputs = args.inputs or [str(_default_sample())]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if check_engine(args):
        return _pipeline_on_dask(args, inputs, out_dir, started)
    stats = ReplayStats()
    records = replay(inputs, stats)
    if stats.files == 0:
        _report(stats, started, verbose=False)
        print("stormguard pipeline: no readable input (no output written)", file=sys.stderr)
        return 2
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
        _print_top(features, _feature_columns(features.columns), args.show)
    model_path = None if args.no_model else Path(args.model) if args.model else _default_model()
    if model_path is not None and len(records):
        _score_into_store(records, model_path, out_dir, args.store, args.show)
    return 0 if stats.files else 2


def _default_model() -> Path | None:
    """The bundled default model (``data/default-model.skops``), trained by ``data/make_model.py``."""
    for base in (Path("data"), Path(__file__).resolve().parent.parent / "data"):
        path = base / "default-model.skops"
        if path.exists():
            return path
    return None


def _score_into_store(records: object, model_path: Path, out_dir: Path, store_url: str, show: int) -> None:
    """Score the clients with a behaviour bundle, write scores.parquet, load them into the store, show tiers."""
    import pandas as pd

    from stormguard.config import load_config
    from stormguard.features.clients.windows import client_features
    from stormguard.models.train import features_from_records, load_model
    from stormguard.scoring.pipeline import print_store_run, rate_into_store
    from stormguard.scoring.stores import open_store
    from stormguard.scoring.stores.sync import SyncStore

    model, bundle = load_model(model_path)
    key = bundle.metrics.get("key") or "src_ip"
    window = bundle.metrics.get("window") or None
    scores = model.score_frame(features_from_records(records, key=key, window=window))  # type: ignore[arg-type]
    scores_path = out_dir / "scores.parquet"
    scores.to_parquet(scores_path, index=False)
    config = load_config(None)
    ts = pd.to_numeric(records["ts"], errors="coerce")  # type: ignore[index]
    end = float(ts.max()) if ts.notna().any() else time.time()
    windows = client_features(records, key=key, window=config.server.live_window)  # type: ignore[arg-type]
    store = SyncStore(open_store(store_url, config, failover=False))
    try:
        run = rate_into_store([scores], [windows], store, config, end=end, show=show)
    finally:
        store.close()
    print_store_run(run, store_url=store_url, live_window=config.server.live_window,
                    scores_line=f"scores:   {len(scores):>7}  -> {scores_path}  (model {model_path.name}, key={key}, "
                                f"window={window or 'whole input'})")


def _pipeline_on_dask(args: argparse.Namespace, inputs: list[str], out_dir: Path, started: float) -> int:
    """``pipeline --engine dask``: each stage on the cluster into a dataset folder of ``out_dir`` (records,
    features, scores), the store filled here from the score and live-window datasets part by part."""
    import shutil

    import dask.dataframe as dd

    from stormguard.config import load_config
    from stormguard.features.distributed.cli import split_bytes_of
    from stormguard.features.distributed.cluster import dask_client
    from stormguard.features.distributed.dataset import check_dataset_target
    from stormguard.features.distributed.replay import replay_dask
    from stormguard.features.distributed.windows import features_dask

    records_path, features_path = out_dir / "records.parquet", out_dir / "features.parquet"
    model_path = None if args.no_model else Path(args.model) if args.model else _default_model()
    for target in (records_path, features_path, *([out_dir / "scores.parquet"] if model_path else [])):
        check_dataset_target(target)  # before any work: a local run's files are not replaced by datasets
    window = None if args.window in (0, None) else float(args.window)
    config = load_config(None)
    progress = None if not args.no_progress else False
    stats = ReplayStats()
    with dask_client(args.scheduler) as client:
        rows = replay_dask(client, inputs, records_path, stats, split_bytes=split_bytes_of(args),
                           show_progress=progress)
        _report(stats, started, verbose=False)
        if stats.files == 0:
            shutil.rmtree(records_path, ignore_errors=True)
            print("stormguard pipeline: no readable input (no output written)", file=sys.stderr)
            return 2
        n_features = features_dask(client, records_path, features_path, key=args.key, window=window,
                                   partitions=args.partitions, show_progress=progress)
        print(f"records:  {rows:>7}  -> {records_path} (dataset)")
        print(f"features: {n_features:>7}  -> {features_path} (dataset)  (key={args.key}, "
              f"window={window or 'whole input'})")
        if n_features:
            cols = _feature_columns(dd.read_parquet(str(features_path)).columns)
            # each part's top rows, then the top of those: exactly the local engine's table
            parts = dd.read_parquet(str(features_path), columns=cols)
            tops = client.compute(parts.map_partitions(_top_features, cols, args.show, meta=parts._meta)).result()
            _print_top(tops, cols, args.show)
        if model_path is not None and rows:
            from stormguard.scoring.pipeline import scores_on_dask

            scores_on_dask(client, records_path, out_dir, model_path, args.store, config,
                           partitions=args.partitions, show=args.show, show_progress=progress)
    return 0


def _feature_columns(columns: Sequence[str]) -> list[str]:
    return [c for c in ("key", "n_conn", "conn_rate_per_min", "reconnects_10s", "short_lived_2s",
                        "header_entropy_mean", "distinct_uas", "distinct_ja3", "ja4_mode") if c in columns]


def _top_features(features: object, cols: list[str], show: int) -> object:
    """The ``show`` clients with the most of the first feature column after the key (ties: by key)."""
    import pandas as pd

    frame: pd.DataFrame = features  # type: ignore[assignment]
    by = cols[1] if len(cols) > 1 else cols[0]
    if by == "key":
        return frame.sort_values("key", kind="stable").head(show)
    return frame.sort_values([by, "key"], ascending=[False, True], kind="stable").head(show)


def _print_top(features: object, cols: list[str], show: int) -> None:
    import pandas as pd

    top: pd.DataFrame = _top_features(features, cols, show)  # type: ignore[assignment]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(top[cols].to_string(index=False))


#: Example command lines shown at the end of each subcommand's ``--help`` (a subcommand may set its own epilog
#: with :func:`stormguard.clihelp.examples` instead).
EXAMPLES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("replay",): ("stormguard replay data/sample.pcap -o out/records.parquet",
                  "stormguard replay capture.pcapng /var/log/nginx/access.log -o out/records.csv --jobs 2",
                  "stormguard replay app.jsonl --log-field src_ip=client -o out/app.parquet",
                  "stormguard replay captures/ logs/ --engine dask -o out/records.parquet",
                  "stormguard replay logs/ --engine dask --scheduler tcp://127.0.0.1:8786 --split-mb 128 "
                  "-o out/records.parquet"),
    ("features",): ("stormguard features out/records.parquet -o out/features.parquet",
                    "stormguard features out/records.parquet --key ip_ja3 --window 60 -o out/f.csv",
                    "stormguard features out/records.parquet --engine dask --scheduler tcp://127.0.0.1:8786 "
                    "-o out/features.parquet"),
    ("pipeline",): ("stormguard pipeline",
                    "stormguard pipeline access.log --out-dir out/ --store redis://127.0.0.1:6379/0",
                    "stormguard pipeline captures/ logs/ --engine dask --scheduler tcp://127.0.0.1:8786 "
                    "--out-dir out/"),
    ("serve",): ("STORMGUARD_PUBLISH_TOKEN=secret stormguard serve --port 8000",
                 "stormguard serve --store redis://127.0.0.1:6379/0 --workers 2 --audit-log audit.jsonl"),
    ("reputation", "get"): ("stormguard reputation get 203.0.113.7 --store redis://127.0.0.1:6379/0",),
    ("reputation", "set"): ("stormguard reputation set 203.0.113.7 -60 --reason manual --store redis://127.0.0.1:6379/0",),
    ("reputation", "block"): ("stormguard reputation block 203.0.113.7 --for 600 --store redis://127.0.0.1:6379/0",),
    ("reputation", "unblock"): ("stormguard reputation unblock 203.0.113.7 --store redis://127.0.0.1:6379/0",),
    ("reputation", "top"): ("stormguard reputation top -n 20 --store redis://127.0.0.1:6379/0",
                            "stormguard reputation top -n 20 --best --json --store redis://127.0.0.1:6379/0"),
    ("reputation", "load"): ("stormguard reputation load scores.csv --store redis://127.0.0.1:6379/0",),
    ("train",): ("stormguard train out/records.parquet -o model.skops",
                 "stormguard train out/records.parquet --engine dask --sample-rows 100000 -o model.skops",
                 "stormguard train logs/ --log-format iliou --key session --labels annotations/ -o model.skops",
                 "stormguard train access.log --window 300 --labels labels.csv --content -o model.skops",
                 "stormguard train access.log --window 300 --labels labels.csv --corpus ../shared/corpus "
                 "-o model.skops"),
    ("evaluate",): ("stormguard evaluate model.skops logs/ --labels annotations/ --plot eval.svg",),
    ("score",): ("stormguard score data/default-model.skops access.log -o scores.csv",
                 "stormguard score model.skops records.parquet --store redis://127.0.0.1:6379/0",
                 "stormguard score model.skops out/records.parquet --engine dask -o out/scores.parquet"),
    ("ua", "train"): ("stormguard ua train ../shared/corpus/ua/ua_dev.csv -o ua.skops --cv",
                      "stormguard ua train ../shared/corpus/ua/ua_dev.csv --features 1024 --components 8 --clusters 8 "
                      "-o ua-small.skops"),
    ("ua", "score"): ("stormguard ua score ua.skops uas.csv -o uas-scored.csv",),
    ("proxy",): ("stormguard proxy --upstream http://127.0.0.1:9000 --port 8080",
                  "stormguard proxy --upstream http://127.0.0.1:9000 --sse-path /stream --store redis://127.0.0.1:6379/0"),
    ("demo",): ("stormguard demo", "stormguard demo --out-dir out/demo --duration 30 --scale 1 "
                                   "--store redis://127.0.0.1:6379/0"),
    ("export", "nftables"): ("stormguard export nftables --store redis://127.0.0.1:6379/0 -o blocked.nft",
                             "stormguard export nftables --apply --watch --interval 2 --store redis://127.0.0.1:6379/0",
                             "stormguard export nftables --apply --dry-run --nft-command 'sudo nft'"),
    ("export", "blocklist"): ("stormguard export blocklist --format nginx-geo -o /etc/nginx/stormguard.geo "
                              "--store redis://127.0.0.1:6379/0",
                              "stormguard export blocklist --format haproxy-map -o stormguard.map --watch"),
    ("crowdsec", "pull"): ("STORMGUARD_CROWDSEC_BOUNCER_KEY=... stormguard crowdsec pull --lapi-url "
                           "http://127.0.0.1:8080 --store redis://127.0.0.1:6379/0",
                           "stormguard crowdsec pull --once --config stormguard.toml"),
    ("crowdsec", "push"): ("stormguard crowdsec push --once --config stormguard.toml",
                           "stormguard crowdsec push --duration 3600 --store redis://127.0.0.1:6379/0"),
    ("doctor",): ("stormguard doctor", "stormguard doctor --config stormguard.toml --store redis://127.0.0.1:6379/0"),
    ("storm",): ("stormguard storm --target http://127.0.0.1:8000 --duration 30 --report out/storm.json "
                 "--labels out/labels.csv",
                 "stormguard storm --target http://127.0.0.1:8000 --profile my-mix.toml --scale 20 --processes 2"),
}


def build_parser() -> argparse.ArgumentParser:
    from stormguard.clihelp import Parser

    parser = Parser(
        prog="stormguard",
        description="Behavioural fingerprinting and reputation for Server-Sent-Events services: replay captures "
                    "and logs into connection records and client feature vectors.",
        epilog=EPILOG,
    )
    from stormguard import __version__

    parser.add_argument("--version", action="version", version=f"stormguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    from stormguard.features.distributed.cli import add_engine_options

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
    p.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                   help="worker processes for large inputs (default: the CPUs available; 1 = this process only)")
    p.add_argument("-v", "--verbose", action="store_true", help="list every located problem, not the first 20")
    add_engine_options(p, split=True)
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
    add_engine_options(p, partitions=True)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser(
        "pipeline", help="replay -> features -> score -> store, on inputs (default: the bundled sample)",
        description="Run the whole batch pipeline on the given inputs, or on the bundled sample capture "
                    "(data/sample.pcap) when none are given: replay into records.parquet, client features into "
                    "features.parquet, scores from the bundled behaviour model (data/default-model.skops) into "
                    "scores.parquet, and those scores into the reputation store (in memory by default), printing "
                    "the resulting tiers.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="capture or log files or folders (default: data/sample.pcap)")
    p.add_argument("--out-dir", default="out", help="where to write the outputs (default: out/)")
    p.add_argument("--key", default="src_ip", help="client key (see 'stormguard features --help')")
    p.add_argument("--window", type=float, default=0.0, help="window seconds (default 0: whole input)")
    p.add_argument("--show", type=int, default=15, help="how many clients to print (default 15)")
    p.add_argument("--model", help="behaviour bundle to score with (default: data/default-model.skops)")
    p.add_argument("--no-model", action="store_true", help="stop after the features")
    p.add_argument("--store", default="memory://",
                   help="reputation store to load the scores into (default memory://: lives for this command)")
    p.add_argument("--no-progress", action="store_true", help="dask engine: never show a progress bar")
    add_engine_options(p, split=True, partitions=True)
    p.set_defaults(func=cmd_pipeline)

    from stormguard.server.cli import register as register_serve
    from stormguard.server.cli import register_proxy

    register_serve(sub)
    register_proxy(sub)

    from stormguard.scoring.cli import register as register_reputation

    register_reputation(sub)

    from stormguard.models.cli import register as register_ua

    register_ua(sub)

    from stormguard.storm.cli import register as register_storm

    register_storm(sub)

    from stormguard.storm.demo import register as register_demo

    register_demo(sub)

    from stormguard.scoring.enforce.cli import register as register_enforce

    register_enforce(sub)
    finish_parser(parser)
    return parser


def finish_parser(parser: argparse.ArgumentParser) -> None:
    """The conventions of :mod:`stormguard.clihelp`, applied to every subcommand however it was registered."""
    from stormguard.clihelp import (
        HelpFormatter,
        accept_options_anywhere,
        check_no_numeric_options,
        examples,
        walk,
    )

    for path, p in walk(parser):
        p.formatter_class = HelpFormatter
        if not p.epilog and path in EXAMPLES:
            p.epilog = examples(*EXAMPLES[path])
    accept_options_anywhere(parser)
    check_no_numeric_options(parser)


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
    except Exception as exc:  # a store that cannot be reached: redis errors are neither OSError nor ValueError
        if type(exc).__module__.split(".")[0] != "redis":
            raise
        print(f"stormguard {args.command}: store error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
