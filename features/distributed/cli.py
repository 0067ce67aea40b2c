"""The ``--engine dask`` side of ``stormguard replay`` and ``stormguard features`` (options and runners; the
local side stays in :mod:`stormguard.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from stormguard.report import ReplayStats


def add_engine_options(p: argparse.ArgumentParser, *, split: bool = False, partitions: bool = False) -> None:
    """``--engine``, ``--scheduler`` and the Dask engine's tuning options of one subcommand."""
    p.add_argument("--engine", choices=("local", "dask"), default="local",
                   help="local (default): this machine's processes; dask: tasks on a Dask cluster, output a "
                        "Parquet dataset folder")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="dask engine: the scheduler to use (e.g. tcp://dask-scheduler:8786); default: start a local "
                        "cluster sized to this machine")
    if split:
        p.add_argument("--split-mb", type=float, default=16.0, metavar="MB",
                       help="dask engine: files at least this large are read as several tasks (logs in byte "
                            "ranges on line boundaries, captures in spans on record boundaries routed to flow shares); default 16")
    if partitions:
        p.add_argument("--partitions", type=int, default=None, metavar="N",
                       help="dask engine: partitions of the shuffle by client key (default: from the records' "
                            "size, at least two per worker)")


def _check_engine(args: argparse.Namespace) -> None:
    if args.scheduler and args.engine != "dask":
        raise SystemExit("stormguard: --scheduler is for --engine dask")


def split_bytes_of(args: argparse.Namespace) -> int:
    """``--split-mb`` in bytes (``SystemExit`` unless positive)."""
    if not args.split_mb > 0:
        raise SystemExit(f"stormguard: --split-mb must be positive, not {args.split_mb}")
    return int(args.split_mb * (1 << 20))


def replay_on_dask(args: argparse.Namespace, out: Path, stats: ReplayStats, log_fields: dict[str, str] | None
                   ) -> int:
    from stormguard.features.distributed.cluster import dask_client
    from stormguard.features.distributed.replay import replay_dask

    split = split_bytes_of(args)
    with dask_client(args.scheduler) as client:
        return replay_dask(client, args.inputs, out, stats, log_format=args.log_format, log_fields=log_fields,
                           split_bytes=split,
                           show_progress=None if not args.no_progress else False)


def features_on_dask(args: argparse.Namespace, out: Path, window: float | None) -> int:
    from stormguard.features.distributed.cluster import dask_client
    from stormguard.features.distributed.windows import features_dask

    if args.partitions is not None and args.partitions < 1:
        raise SystemExit(f"stormguard: --partitions must be at least 1, not {args.partitions}")
    with dask_client(args.scheduler) as client:
        return features_dask(client, args.records, out, key=args.key, window=window, partitions=args.partitions)


def check_engine(args: argparse.Namespace) -> bool:
    """Whether the run is on Dask (``SystemExit`` for a ``--scheduler`` without ``--engine dask``)."""
    _check_engine(args)
    return args.engine == "dask"
