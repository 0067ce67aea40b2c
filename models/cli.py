"""``stormguard ua train`` and ``stormguard ua score``: the User-Agent model on its own, for lists of UAs.

The main command line wires this in with ``register(subparsers)``; heavy imports (pandas, scikit-learn, skops)
happen inside the command functions so ``stormguard --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["cmd_ua_score", "cmd_ua_train", "register"]

KEY_ENV = "STORMGUARD_BUNDLE_KEY"
SCORE_CHUNK = 100_000


def _key() -> bytes | None:
    """The optional HMAC key for bundles, from the environment (never from a command-line argument)."""
    value = os.environ.get(KEY_ENV)
    return value.encode("utf-8") if value else None


def _read_table(path: Path) -> Any:
    import pandas as pd

    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.suffix.lower() in {".parquet", ".pq"}:
        return pd.read_parquet(path)
    # Every cell as text and no NA guessing: a UA of "NULL" or "" is data, not missing.
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)


def _write_table(frame: Any, path: Path) -> None:
    if path.suffix.lower() not in {".csv", ".parquet", ".pq"}:
        raise ValueError(f"output {path} must end in .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    print(f"{title}: ROC-AUC {metrics['roc_auc']:.4f}, bot recall {metrics['recall_at_1pct_fpr']:.4f} at "
          f"{metrics['fpr_at_threshold']:.2%} browser FPR (threshold {metrics['threshold']:.3f})")


def cmd_ua_train(args: argparse.Namespace) -> int:
    """Fit the UA model on a labelled (or unlabelled) list and save a bundle; print a summary."""
    import numpy as np
    from stormguard.models.bundle import fingerprint_frame, save_bundle
    from stormguard.models.ua import FEATURE_SCHEMA_VERSION, UAModel, as_bot_labels
    from stormguard.models.ua_eval import evaluate_ua, evaluate_ua_by_source, evaluate_ua_grouped

    started = time.perf_counter()
    src = Path(args.labelled)
    frame = _read_table(src)
    if args.column not in frame.columns:
        raise ValueError(f"{src}: no {args.column!r} column (columns: {', '.join(map(str, frame.columns))})")
    frame = frame.rename(columns={args.column: "user_agent"})
    labelled = "label" in frame.columns and not args.no_labels
    if labelled:
        frame = frame[frame["label"].astype(str).str.strip() != ""]
        y = as_bot_labels(frame["label"])
        counts = f"{len(frame)} UAs: {int(y.sum())} bot, {int((y == 0).sum())} browser"
    else:
        y = None
        counts = f"{len(frame)} UAs, no labels (clusters only; scores will have no bot_probability)"
    if len(frame) == 0:
        raise ValueError(f"{src}: no rows to train on")
    print(counts)
    params = {"n_clusters": args.clusters}
    metrics: dict[str, Any] = {"n": len(frame)}
    if y is not None:
        metrics.update({"n_bots": int(y.sum()), "n_browsers": int((y == 0).sum())})
    if args.cv:
        if y is None:
            raise ValueError("--cv needs a label column (bot/browser)")
        cv = evaluate_ua(frame, n_splits=args.folds, seed=args.seed, **params)
        cv_metrics = {k: cv[k] for k in ("roc_auc", "recall_at_1pct_fpr", "fpr_at_threshold", "threshold")}
        metrics["cv"] = {**cv_metrics, "n_splits": args.folds, "fold_roc_auc": cv["fold_roc_auc"]}
        _print_metrics(f"{args.folds}-fold CV", cv_metrics)
        grouped = evaluate_ua_grouped(frame, n_splits=args.folds, seed=args.seed, **params)
        metrics["cv_grouped_by_skeleton"] = {k: grouped[k] for k in cv_metrics}
        _print_metrics(f"{args.folds}-fold CV, version-insensitive groups", grouped)
        if "sources" in frame.columns:
            loso = evaluate_ua_by_source(frame, seed=args.seed, **params)
            metrics["leave_one_source_out"] = {k: loso[k] for k in cv_metrics}
            _print_metrics("leave-one-source-out", loso)
    model = UAModel(random_state=args.seed, **params).fit(frame["user_agent"].tolist(), y)
    fingerprint = fingerprint_frame(frame, ["user_agent", "label"] if labelled else ["user_agent"])
    out = save_bundle(args.output, {"ua": model}, kind="ua", schema_version=FEATURE_SCHEMA_VERSION,
                      data_fingerprint=fingerprint, metrics=metrics, key=_key())
    summary = model.cluster_summary()
    print(f"clusters: {len(summary)} (largest first)")
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_colwidth", 70):
        top = summary.sort_values("size", ascending=False).head(args.show)
        print(top.to_string(index=False, float_format=lambda v: f"{v:.2f}" if np.isfinite(v) else "-"))
    print(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB, data {fingerprint[:19]}…) in "
          f"{time.perf_counter() - started:.1f} s")
    return 0


def cmd_ua_score(args: argparse.Namespace) -> int:
    """Score a list of UAs with a saved bundle; each distinct UA is scored once (logs repeat them heavily)."""
    import numpy as np
    import pandas as pd
    from stormguard.models.bundle import load_bundle
    from stormguard.models.ua import FEATURE_SCHEMA_VERSION, as_bot_labels

    started = time.perf_counter()
    bundle = load_bundle(args.bundle, expected_schema=FEATURE_SCHEMA_VERSION, kind="ua", key=_key())
    model = bundle.estimators["ua"]
    src = Path(args.input)
    frame = _read_table(src)
    if args.column not in frame.columns:
        raise ValueError(f"{src}: no {args.column!r} column (columns: {', '.join(map(str, frame.columns))})")
    column = frame[args.column]
    codes, uniques = pd.factorize(column.where(column.notna(), "").astype(str), use_na_sentinel=False)
    parts = [model.describe(list(uniques[i:i + SCORE_CHUNK])) for i in range(0, len(uniques), SCORE_CHUNK)]
    scored = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"bot_probability": [], "cluster": [], "distance": []})
    out = frame.copy()
    for column in ("bot_probability", "cluster", "distance"):
        out[column] = scored[column].to_numpy()[codes] if len(codes) else scored[column].to_numpy()
    _write_table(out, Path(args.output))
    proba = out["bot_probability"].to_numpy(dtype=float)
    line = f"scored {len(out)} rows ({len(uniques)} distinct UAs) -> {args.output}"
    if len(proba) and np.isfinite(proba).any():
        line += f"; {np.mean(proba >= 0.5):.1%} with bot_probability >= 0.5"
    print(line)
    if "label" in frame.columns and np.isfinite(proba).all() and len(proba):
        from sklearn.metrics import roc_auc_score

        labels = frame["label"].astype(str).str.strip()
        keep = (labels != "").to_numpy()
        y = as_bot_labels(labels[keep])
        if len(np.unique(y)) == 2:
            print(f"labels present: ROC-AUC {roc_auc_score(y, proba[keep]):.4f}")
    print(f"time: {time.perf_counter() - started:.2f} s", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``ua`` (with ``train`` and ``score``) to the main parser's subparsers."""
    ua = subparsers.add_parser(
        "ua", help="User-Agent model: train on labelled UAs, score lists of UAs",
        description="The User-Agent model on its own: character n-gram vectors, clusters (id, cosine distance to "
                    "the centroid, make-up) and, with labels, a calibrated bot probability.",
        epilog="Run 'stormguard ua train --help' or 'stormguard ua score --help' for their options.",
    )
    sub = ua.add_subparsers(dest="ua_command", metavar="UA_COMMAND")

    def _usage(_: argparse.Namespace) -> int:
        ua.print_help()
        return 2

    ua.set_defaults(func=_usage)

    p = sub.add_parser(
        "train", help="fit the UA model on LABELLED.csv and save a bundle",
        description="Fit the User-Agent model on a table with a user_agent column and, optionally, a label column "
                    "(bot/browser; without it only clusters are fitted) and save it as a model bundle (skops; "
                    "no code runs on load). Prints counts, cluster make-up, and with --cv the cross-validated "
                    f"ROC-AUC and bot recall at 1% browser FPR. If ${KEY_ENV} is set the bundle is signed "
                    "(HMAC-SHA256) with it.",
    )
    p.add_argument("labelled", metavar="LABELLED.csv", help="CSV or Parquet with user_agent [and label] columns")
    p.add_argument("-o", "--output", required=True, metavar="UA.skops", help="bundle to write")
    p.add_argument("--cv", action="store_true",
                   help="cross-validate first (stratified k-fold; k-fold with UAs differing only in digits kept "
                        "in one fold; leave-one-source-out when a 'sources' column exists) and store the "
                        "metrics in the bundle")
    p.add_argument("--folds", type=int, default=5, help="folds for --cv (default 5)")
    p.add_argument("--clusters", type=int, default=24, help="number of UA clusters (default 24)")
    p.add_argument("--seed", type=int, default=0, help="random seed: same data and seed give the same model")
    p.add_argument("--column", default="user_agent", help="column holding the UAs (default user_agent)")
    p.add_argument("--no-labels", action="store_true", help="ignore a label column: fit clusters only")
    p.add_argument("--show", type=int, default=12, help="clusters to print in the summary (default 12)")
    p.set_defaults(func=cmd_ua_train)

    p = sub.add_parser(
        "score", help="add bot_probability, cluster and distance to a list of UAs",
        description="Score every row of INPUT (CSV or Parquet with a user_agent column) with a bundle written by "
                    "'stormguard ua train' and write the input with three more columns: bot_probability (empty "
                    "for a model trained without labels), cluster and distance (cosine distance to the cluster "
                    "centroid; high = unusual). The bundle is refused when it was modified, was written for "
                    f"another feature schema or scikit-learn major version, or (with ${KEY_ENV} set) is not "
                    "signed with that key.",
    )
    p.add_argument("bundle", metavar="UA.skops", help="bundle written by 'stormguard ua train'")
    p.add_argument("input", metavar="INPUT.csv", help="CSV or Parquet with a user_agent column")
    p.add_argument("-o", "--output", required=True, metavar="OUT.csv", help="output: .csv or .parquet")
    p.add_argument("--column", default="user_agent", help="column holding the UAs (default user_agent)")
    p.set_defaults(func=cmd_ua_score)
