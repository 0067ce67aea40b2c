"""``stormguard reputation get|set|block|unblock|top|load`` — inspect and change reputation entries.

Registered into the main command line by :func:`register`; it imports the store machinery only when run.
With ``memory://`` the store lives only as long as the command, so these commands are meant for ``redis://``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

_HELP = "inspect and change reputation entries in a store (get, set, block, unblock, top, load)"


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``reputation`` subcommand to the main parser's subparsers ``sub``."""
    p = sub.add_parser(
        "reputation", help=_HELP,
        description="Inspect and change reputation entries. The store comes from --store, else the config file's "
                    "[store] url (STORMGUARD_STORE_URL). Scores are shown decayed to now.")
    p.add_argument("--store", metavar="URL", help="store URL: redis://host:6379/0, rediss://..., unix:///path, "
                                                   "memory:// (default: config [store] url)")
    p.add_argument("--config", metavar="TOML", help="configuration file (default: $STORMGUARD_CONFIG)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    ops = p.add_subparsers(dest="op", metavar="OP", required=True)

    g = ops.add_parser("get", help="show entries", description="Show the entries of one or more client keys.")
    g.add_argument("keys", nargs="+", metavar="KEY")
    s = ops.add_parser("set", help="set a score", description="Set a key's score (clamped to [-100, 100]).")
    s.add_argument("key", metavar="KEY")
    s.add_argument("score", type=finite_float, help="new score, e.g. -60 (clamped to [-100, 100])")
    s.add_argument("--reason", default="manual")
    b = ops.add_parser("block", help="block a key", description="Refuse a key's new connections for a while.")
    b.add_argument("key", metavar="KEY")
    b.add_argument("--for", dest="seconds", type=float, help="seconds (default: config block_seconds)")
    b.add_argument("--reason", default="manual-block")
    u = ops.add_parser("unblock", help="lift a block", description="Lift a key's block (the score is kept).")
    u.add_argument("key", metavar="KEY")
    u.add_argument("--reason", default="manual-unblock")
    t = ops.add_parser("top", help="lowest (or highest) scores", description="List the lowest current scores.")
    t.add_argument("-n", type=int, default=10, help="how many (default 10)")
    t.add_argument("--best", action="store_true", help="highest scores instead of lowest")
    ld = ops.add_parser("load", help="bulk-load model scores",
                        description="Load KEY,SCORE rows (CSV with a header naming 'key' and 'score' columns, or "
                                    "parquet) into the store in pipelined batches.")
    ld.add_argument("file", type=Path)
    ld.add_argument("--reason", default="model")
    p.set_defaults(func=run)
    return p


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan``/``inf`` would poison a store's ranking)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _print(rows: list[Any], as_json: bool, now: float) -> None:
    if as_json:
        for r in rows:
            print(json.dumps(r.as_dict()))
        return
    print(f"{'key':<40} {'score':>9} {'blocked':>9} {'last bad':>20}  reasons")
    for r in rows:
        blocked = f"{r.block_until - now:.0f}s" if r.blocked(now) else "-"
        bad = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.last_bad)) if r.last_bad else "-"
        print(f"{r.key:<40} {r.score:>9.3f} {blocked:>9} {bad:>20}  {','.join(r.reasons)}")


def _rows(path: Path) -> Any:
    """``(key, score)`` rows of a CSV (a header naming ``key`` and ``score``) or Parquet file; a bad row is an error
    naming the file, line and field, before anything past it is loaded."""
    if path.suffix.lower() in (".parquet", ".pq"):
        import pandas as pd

        frame = pd.read_parquet(path, columns=["key", "score"])
        yield from zip(frame["key"].astype(str), frame["score"].astype(float), strict=True)
        return
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if "key" not in header or "score" not in header:
            raise ValueError(f"{path}:1: expected a header row naming the 'key' and 'score' columns, got {header!r}")
        for row in reader:
            try:
                score = float(row["score"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{reader.line_num}: field 'score': not a number: {row['score']!r}") from None
            if not math.isfinite(score):
                raise ValueError(f"{path}:{reader.line_num}: field 'score': must be finite, got {row['score']!r}")
            yield row["key"], score


def run(args: argparse.Namespace) -> int:
    """Run one operation; a store that cannot be reached is a one-line error (exit 2), not a traceback."""
    try:
        return _run(args)
    except Exception as exc:  # redis errors are not OSError, so the main CLI would not catch them
        if type(exc).__module__.startswith("redis"):
            print(f"stormguard reputation: store error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
        raise


def _run(args: argparse.Namespace) -> int:
    from stormguard.scoring.stores import open_store
    from stormguard.scoring.stores.sync import SyncStore

    from stormguard.config import load_config

    config = load_config(args.config)
    url = args.store or config.store.url
    if url.startswith("memory://"):
        if not args.store:
            raise ValueError("no store to inspect: give --store redis://HOST:6379/0 (or set [store] url / "
                             "STORMGUARD_STORE_URL); a memory:// store lives only as long as this command")
        print("stormguard reputation: note: memory:// lives only for this command (it starts empty)", file=sys.stderr)
    now = time.time()
    # The CLI wants errors, not a silent fallback: no failover wrapper here.
    with SyncStore(open_store(url, config, failover=False)) as store:
        if args.op == "get":
            rows = [store.get(k, now=now) for k in args.keys]
        elif args.op == "set":
            rows = [store.set(args.key, args.score, args.reason, now=now)]
        elif args.op == "block":
            seconds = config.reputation.block_seconds if args.seconds is None else args.seconds
            rows = [store.block(args.key, now + seconds, args.reason, now=now)]
        elif args.op == "unblock":
            rows = [store.unblock(args.key, args.reason, now=now)]
        elif args.op == "top":
            rows = store.top(args.n, worst=not args.best, now=now)
        else:
            started = time.perf_counter()
            n = store.load_scores(_rows(args.file), now=now, reason=args.reason)
            took = time.perf_counter() - started
            print(f"loaded {n} scores in {took:.2f} s ({n / max(took, 1e-9):,.0f}/s)", file=sys.stderr)
            return 0
        _print(rows, args.json, now)
    return 0
