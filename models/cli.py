"""``stormguard train|evaluate|score`` (the behaviour scorer) and ``stormguard ua train|score`` (the UA model).

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

__all__ = ["cmd_evaluate", "cmd_score", "cmd_train", "cmd_ua_score", "cmd_ua_train", "register"]

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
    params = {"n_clusters": args.clusters, "n_features": args.features, "n_components": args.components}
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
    """Add ``train``, ``evaluate``, ``score`` and ``ua`` (with ``train`` and ``score``) to the main parser."""
    register_behaviour(subparsers)
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
    p.add_argument("--features", type=int, default=2**17,
                   help="hashed character n-gram width (default 131072; 1024 keeps the bundle small)")
    p.add_argument("--components", type=int, default=48, help="SVD components of the clustering (default 48)")
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


# -- the behaviour scorer: train / evaluate / score ---------------------------------------------------------------
def _say(message: str, started: float = 0.0) -> None:
    """Progress lines on stderr, with the elapsed time (stdout keeps the summary)."""
    stamp = f"[{time.perf_counter() - started:6.1f} s] " if started else ""
    print(f"{stamp}{message}", file=sys.stderr, flush=True)


def _window(value: float | None) -> float | None:
    return None if value in (None, 0) else float(value)


def _table_opts(args: argparse.Namespace) -> dict[str, Any]:
    fields = {}
    for item in getattr(args, "log_field", None) or []:
        col, sep, name = item.partition("=")
        if not sep:
            raise ValueError(f"--log-field {item!r}: expected COLUMN=NAME")
        fields[col.strip()] = name.strip()
    return {"log_format": args.log_format, "log_fields": fields or None, "source_kind": args.source_kind}


def _load_data(args: argparse.Namespace, started: float, key: str, window: float | None) -> Any:
    from stormguard.models.train import load_feature_table

    return load_feature_table(args.data, key=key, window=window, progress=lambda m: _say(m, started),
                              show_progress=None if not getattr(args, "no_progress", False) else False,
                              **_table_opts(args))


def _print_frame(frame: Any, rows: int = 20) -> None:
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 30, "display.max_colwidth", 60):
        print(frame.head(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _tier_counts(scores: Any) -> str:
    counts = scores["tier"].value_counts()
    counts = counts[counts > 0]
    order = ["trusted", "neutral", "low", "blocked"]
    names = [n for n in order if n in counts.index] + [n for n in counts.index if n not in order]
    return ", ".join(f"{n} {int(counts[n]):,} ({counts[n] / len(scores):.1%})" for n in names)


def cmd_train(args: argparse.Namespace) -> int:
    """Inputs → feature table → ReputationModel → bundle; progress on stderr, summary on stdout."""
    from stormguard.features.distributed.cli import check_engine
    from stormguard.models.behaviour import evidence_floor_share
    from stormguard.models.train import read_labels, save_model, train_model

    from stormguard.config import load_config

    started = time.perf_counter()
    config = load_config(args.config)
    window = _window(args.window)
    labels = read_labels(args.labels) if args.labels else None
    sample_info: dict[str, Any] = {}
    if check_engine(args):
        features, sample_info = _train_sample_on_dask(args, window, labels, started)
    else:
        features = _load_data(args, started, args.key, window)
    if labels is not None:
        hit = features["key"].astype("object").isin(labels.keys())
        _say(f"labels: {len(labels):,} keys, {int(hit.sum()):,} of {len(features):,} clients labelled", started)
    ua_model = None
    if args.ua_model:
        from stormguard.models.bundle import load_bundle
        from stormguard.models.ua import FEATURE_SCHEMA_VERSION as UA_SCHEMA

        ua_model = load_bundle(args.ua_model, expected_schema=UA_SCHEMA, kind="ua", key=_key()).estimators["ua"]
        _say(f"UA model: {args.ua_model}", started)
    bad = list(args.bad_ja3 or []) or ([config.reputation.bad_ja3_path] if config.reputation.bad_ja3_path else [])
    known = list(args.known_ja3 or []) or (
        [config.reputation.library_ja3_path] if config.reputation.library_ja3_path else [])
    params = {"ua_model": ua_model, "config": config, "n_clusters": args.clusters, "n_estimators": args.trees,
              "prior_bad": args.prior_bad, "bad_ja3_paths": bad, "known_ja3_paths": known,
              "min_kind_clients": args.min_kind_clients, "random_state": args.seed}
    transfer: dict[str, Any] | None = None
    if args.content or args.corpus:
        model, transfer = _train_combined(args, features, labels, params, started)
    else:
        model = train_model(features, labels, progress=lambda m: _say(m, started), **params)
    _say("scoring the training clients", started)
    scores = model.score_frame(features)
    metrics: dict[str, Any] = {
        "n_clients": len(features), "key": args.key, "window": window, "kinds": model.kind_counts_,
        "tiers": scores["tier"].value_counts().to_dict(), "prior_bad": args.prior_bad,
        "anomaly_p_low": evidence_floor_share(args.prior_bad), "ua_model": bool(ua_model is not None),
        "ja3_lists": {"bad": len(bad), "known": len(known)},
    }
    if sample_info:  # trained on the cluster: which rows the models saw
        metrics.update(engine="dask", **sample_info)
    if transfer is not None:
        metrics["leave_one_source_out"] = transfer
        metrics["content_model"] = {"corpus": bool(args.corpus), "labels": bool(labels)}
    if labels is not None:
        from stormguard.models.evaluate import evaluate_scores
        from stormguard.models.train import label_vector

        ev = evaluate_scores(scores, label_vector(features, labels), [model.mapping_.low_score], model.mapping_.block_score)
        metrics["training_roc_auc"] = ev["roc_auc"]
        metrics["n_labelled"] = ev["n"]
    out = save_model(args.output, model, features, metrics, key=_key())
    print(f"clients: {len(features):,} ({', '.join(f'{k} {v:,}' for k, v in model.kind_counts_.items())}); "
          f"models: {', '.join(sorted(model.models_))} (fallback {model.fallback_})")
    for kind, m in sorted(model.models_.items()):
        print(f"\n[{kind}] profiles{' + classifier' if m.classifier_ is not None else ''}:")
        summary = m.cluster_summary()
        if "ua_bot_probability" in summary.columns and ua_model is None:
            summary = summary.drop(columns=["ua_bot_probability"])
        _print_frame(summary)
    print(f"\ntraining clients by tier: {_tier_counts(scores)}")
    print(f"anomaly alone reaches the low tier below p = {metrics['anomaly_p_low']:.4f} (prior_bad {args.prior_bad})")
    if "training_roc_auc" in metrics:
        print(f"labelled clients: {metrics['n_labelled']:,}, training ROC-AUC {metrics['training_roc_auc']:.4f}")
    if transfer is not None:
        _print_transfer(transfer)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - started:.1f} s")
    return 0


def _train_combined(args: argparse.Namespace, features: Any, labels: dict[str, float] | None,
                    params: dict[str, Any], started: float) -> tuple[Any, dict[str, Any]]:
    """``train --content``: the combined recipe of :mod:`stormguard.models.combined` (as ``data/make_model.py``).

    Content windows (:func:`~stormguard.models.combined.content_windows`): the data's labelled windows with
    request targets, plus with ``--corpus`` the corpus' labelled sources."""
    from stormguard.models.combined import content_windows, data_sources, fit_combined
    from stormguard.models.content import ContentClassifier
    from stormguard.models.train import label_vector, reputation_template

    y = label_vector(features, labels) if labels else None
    if y is None and not args.corpus:
        raise ValueError("--content needs labelled windows: give --labels (both classes) and/or --corpus CORPUS")
    sources = data_sources(features, alone=not args.corpus)
    corpus_rows = None
    if args.corpus:
        from stormguard.models.sources import corpus_sources

        table = corpus_sources(Path(args.corpus), progress=lambda m: _say(m, started))
        for reason, n in sorted(table.skipped.items()):
            _say(f"corpus: skipped {n:,}: {reason}", started)
        corpus_rows = table.features
    rows = content_windows(features, y, sources, corpus_rows)
    mine = rows["lf"] == "labels"
    _say(f"content windows: {int(mine.sum()):,} from the data ({int(rows.loc[mine, 'label'].sum()):,} abusive), "
         f"{int((~mine).sum()):,} from the corpus", started)
    return fit_combined(features, y, rows, lambda: reputation_template(rules=True, ua_inputs=False, **params),
                        ContentClassifier(random_state=args.seed), feature_sources=sources,
                        progress=lambda m: _say(m, started))


def _print_transfer(m: dict[str, Any]) -> None:
    from stormguard.models.transfer import source_line

    print(f"\nleave-one-source-out over {len(m['sources'])} sources (tier knots chosen inside each training fold): "
          f"ROC-AUC {m['roc_auc']:.4f}, PR-AUC {m['pr_auc']:.4f}, abusive low/blocked "
          f"{m['abusive_low_or_blocked']:.1%}, human low/blocked {m['human_low_or_blocked']:.2%}")
    for row in m["per_source"]:
        print(f"  {source_line(row)}")
    print(f"tier knots (log-odds) saved in the bundle: {m['knots'][0]:.2f} / {m['knots'][1]:.2f}")


def _load_scorer(args: argparse.Namespace, started: float) -> tuple[Any, Any]:
    from stormguard.models.train import load_model

    model, bundle = load_model(args.model, key=_key())
    _say(f"model {args.model} (trained {bundle.created}, {bundle.metrics.get('n_clients', '?')} clients)", started)
    return model, bundle


def _data_key_window(args: argparse.Namespace, bundle: Any) -> tuple[str, float | None]:
    key = args.key or bundle.metrics.get("key") or "src_ip"
    window = _window(args.window) if args.window is not None else _window(bundle.metrics.get("window"))
    return key, window


def cmd_score(args: argparse.Namespace) -> int:
    """Score every client of DATA; write a CSV/Parquet and/or load the scores into a reputation store."""
    from stormguard.features.distributed.cli import check_engine

    started = time.perf_counter()
    if not args.output and not args.store:
        raise ValueError("nothing to do: give -o SCORES (.csv/.parquet) and/or --store URL")
    model, bundle = _load_scorer(args, started)
    key, window = _data_key_window(args, bundle)
    if check_engine(args):
        scores = _score_on_dask(args, model, key, window, started)
    else:
        features = _load_data(args, started, key, window)
        t0 = time.perf_counter()
        scores = model.score_frame(features)
        dt = time.perf_counter() - t0
        _say(f"scored {len(scores):,} clients in {dt:.2f} s", started)
        if args.explain:
            from stormguard.models.content import explain_signals

            scores["explain"] = explain_signals(features)
        if args.output:
            _write_table(scores, Path(args.output))
            print(f"scores: {len(scores):,} -> {args.output}")
    if args.store:
        from stormguard.scoring.batch import fill_store
        from stormguard.scoring.stores import open_store
        from stormguard.scoring.stores.sync import SyncStore

        from stormguard.config import load_config

        config = load_config(args.config)
        with SyncStore(open_store(args.store, config, failover=False)) as store:
            n = fill_store(scores, store)
        print(f"store: {n:,} keys loaded into {args.store.split('?')[0]}")
    print(f"tiers: {_tier_counts(scores)}")
    worst = scores.sort_values("score").head(args.show)
    if len(worst):
        _print_frame(worst[[c for c in ("key", "score", "tier", "profile", "p_value", "reasons", "explain")
                            if c in worst]],
                     args.show)
    return 0


def _train_sample_on_dask(args: argparse.Namespace, window: float | None, labels: Any, started: float
                          ) -> tuple[Any, dict[str, Any]]:
    """``train --engine dask``: features of one Parquet record file or dataset on the cluster (into a scratch
    dataset beside the bundle, removed afterwards), and a stratified sample of ``--sample-rows`` of them."""
    import shutil
    import tempfile

    from stormguard.features.distributed.cluster import dask_client
    from stormguard.models.distributed import stratified_training_sample

    if len(args.data) != 1 or Path(args.data[0]).suffix.lower() not in {".parquet", ".pq"}:
        raise ValueError("--engine dask trains on one Parquet record file or dataset (write it with "
                         "'stormguard replay --engine dask')")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with dask_client(args.scheduler) as client:
            sample, info = stratified_training_sample(
                client, args.data[0], scratch / "features.parquet", size=args.sample_rows, key=args.key,
                window=window, labels=labels, seed=args.seed, partitions=args.partitions,
                show_progress=None if not getattr(args, "no_progress", False) else False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _say(f"features: {info['population_rows']:,} clients on the cluster (key={args.key}, window="
         f"{window or 'whole input'}); training on {info['training_set']}: {info['sample_rows']:,} rows", started)
    return sample, info


def _score_on_dask(args: argparse.Namespace, model: Any, key: str, window: float | None, started: float) -> Any:
    """``score --engine dask``: one Parquet record file or dataset → a score dataset (``-o``), read back for the
    store and the summary."""
    import pandas as pd
    from stormguard.features.distributed.cluster import dask_client
    from stormguard.models.distributed import score_dask

    if len(args.data) != 1 or Path(args.data[0]).suffix.lower() not in {".parquet", ".pq"}:
        raise ValueError("--engine dask scores one Parquet record file or dataset (write it with "
                         "'stormguard replay --engine dask')")
    if not args.output:
        raise ValueError("--engine dask writes a score dataset: give -o SCORES.parquet")
    with dask_client(args.scheduler) as client:
        n = score_dask(client, args.data[0], args.output, model, key=key, window=window, partitions=args.partitions,
                       explain=args.explain, show_progress=None if not getattr(args, "no_progress", False) else False)
    _say(f"scored {n:,} clients on the cluster (key={key}, window={window or 'whole input'})", started)
    print(f"scores: {n:,} -> {args.output} (dataset)")
    return pd.read_parquet(args.output)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score DATA and compare with labels: ROC-AUC, precision/recall at thresholds, tiers × labels, clusters."""
    import json
    import math

    from stormguard.models.evaluate import evaluate_scores, write_svg_plot
    from stormguard.models.train import label_vector, read_labels

    started = time.perf_counter()
    model, bundle = _load_scorer(args, started)
    if args.loso:
        from stormguard.models.transfer_cli import evaluate_loso

        return evaluate_loso(model, Path(args.loso), args.json, lambda m: _say(m, started))
    if not args.data or not args.labels:
        raise ValueError("evaluate needs DATA and --labels (or --loso CORPUS for the leave-one-source-out headline)")
    key, window = _data_key_window(args, bundle)
    features = _load_data(args, started, key, window)
    labels = read_labels(args.labels)
    scores = model.score_frame(features)
    y = label_vector(features, labels)
    mp = model.mapping_
    thresholds = args.threshold or [mp.low_score, mp.block_score, 0.0]
    ev = evaluate_scores(scores, y, thresholds, mp.block_score)

    def fmt(v: Any) -> str:
        return "n/a (one class)" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}"

    print(f"clients: {len(scores):,}; labelled {ev['n']:,} ({ev['n_bad']:,} abusive, {ev['n_good']:,} normal), "
          f"unlabelled {ev['n_unlabelled']:,}")
    print(f"ROC-AUC (score): {fmt(ev['roc_auc'])}; ROC-AUC (anomaly alone): {fmt(ev['roc_auc_anomaly'])}")
    print("thresholds (flagged = score < t; <= t at the block score):")
    for row in ev["thresholds"]:
        print(f"  t={row['threshold']:>7.1f}  flagged {row['flagged']:>6,}  precision {fmt(row['precision'])}  "
              f"recall {fmt(row['recall'])}  FPR {fmt(row['fpr'])}")
    print(f"normal clients in low or blocked tiers: {fmt(ev['low_or_blocked_share_of_normal'])}")
    print("\ntiers x labels:")
    print(ev["confusion"].to_string())
    print("\nper cluster:")
    _print_frame(ev["clusters"], 50)
    if args.plot:
        out = write_svg_plot(args.plot, scores, y, [mp.block_score, mp.low_score, mp.trusted_score])
        print(f"plot: {out}")
    if args.json:
        doc = {k: v for k, v in ev.items() if k not in ("confusion", "clusters")}
        doc["confusion"] = ev["confusion"].to_dict()
        Path(args.json).write_text(json.dumps(doc, indent=2, default=float), encoding="utf-8")
    return 0


def _data_args(p: argparse.ArgumentParser, defaults_from_bundle: bool) -> None:
    src = "the model's training value" if defaults_from_bundle else None
    p.add_argument("--key", default=None if defaults_from_bundle else "src_ip",
                   help="client key for records/raw inputs: src_ip, ip_ua, ip_ja3, ip_ja4 or a record column such as "
                        f"session (default: {src or 'src_ip'})")
    p.add_argument("--window", type=float, default=None if defaults_from_bundle else 0.0,
                   help="window seconds for records/raw inputs (0 = whole input as one window; default: "
                        f"{src or '0'})")
    p.add_argument("--log-format", default="auto", help="access-log format for raw logs: auto, combined, common, "
                                                        "jsonl, iliou")
    p.add_argument("--log-field", action="append", metavar="COLUMN=NAME", help="JSON-lines field mapping (repeatable)")
    p.add_argument("--source-kind", default="other",
                   help="source kind of feature files without a source_kind column (log, capture, har, live)")
    p.add_argument("--no-progress", action="store_true", help="never show a replay progress bar")
    p.add_argument("--config", metavar="TOML", help="configuration file (default: $STORMGUARD_CONFIG)")


def register_behaviour(subparsers: Any) -> None:
    """``train``, ``evaluate`` and ``score``: the behaviour scorer."""
    from stormguard.features.distributed.cli import add_engine_options

    inputs_help = ("feature files (stormguard features), record files (stormguard replay; .parquet/.csv), or raw "
                   "captures, logs and folders (replayed first)")
    p = subparsers.add_parser(
        "train", help="fit the behaviour scorer (profiles, anomaly, optional classifier) and save a bundle",
        description="Fit the behaviour scorer on client feature vectors: per source kind (logs count requests, "
                    "captures connections) scaled features and fingerprint encodings, profile clusters, an "
                    "isolation-forest anomaly score turned into a conformal p-value, a calibrated classifier when "
                    "--labels are given, the UA model's outputs with --ua-model, and the calibrated mapping to a "
                    "reputation score in [-100, 100] anchored at the config's tiers and block score. Saved as a "
                    f"skops bundle (no code runs on load; signed with ${KEY_ENV} when set).",
    )
    p.add_argument("data", nargs="+", metavar="FEATURES_OR_RECORDS", help=inputs_help)
    p.add_argument("-o", "--output", required=True, metavar="MODEL.skops", help="bundle to write")
    p.add_argument("--labels", action="append", metavar="FILE",
                   help="labels: 'key label' lines or CSV with key,label (human/browser = normal; bot, "
                        "moderate_bot, advanced_bot, crawler = abusive); repeatable, folders recursed")
    p.add_argument("--ua-model", metavar="UA.skops", help="UA bundle (stormguard ua train): adds bot probability "
                                                          "and cluster distance as inputs and evidence")
    p.add_argument("--bad-ja3", action="append", metavar="PATH",
                   help="JA3 list whose entries are bad (SSLBL CSV); default: config reputation.bad_ja3_path")
    p.add_argument("--known-ja3", action="append", metavar="PATH",
                   help="JA3 -> application list (CSV/JSON); default: config reputation.library_ja3_path")
    p.add_argument("--clusters", type=int, default=6, help="profile clusters per source kind (default 6)")
    p.add_argument("--trees", type=int, default=100, help="isolation-forest trees (default 100)")
    p.add_argument("--prior-bad", type=float, default=0.02,
                   help="prior share of abusive clients: the score 0 point of the mapping (default 0.02)")
    p.add_argument("--min-kind-clients", type=int, default=30,
                   help="source kinds with fewer clients use the pooled model (default 30)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--content", action="store_true",
                   help="also fit the request-content classifier and the named content rules on the labelled "
                        "windows (--labels, --corpus), with tier knots chosen leave-one-source-out: the recipe of "
                        "the bundled default model (data/make_model.py)")
    p.add_argument("--corpus", metavar="CORPUS",
                   help="add the labelled sources of the reference corpus (scanner logs, fail2ban fixtures, Iliou "
                        "humans, Apache LFs) to the content model's windows; implies --content")
    _data_args(p, defaults_from_bundle=False)
    add_engine_options(p, partitions=True)
    p.add_argument("--sample-rows", type=int, default=200_000, metavar="N",
                   help="dask engine: features of every client are computed on the cluster; the models train on a "
                        "stratified sample of at most N of them (by source kind and label; the bundle records it). "
                        "Default 200000")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "evaluate", help="compare a behaviour bundle's scores with labels",
        description="Score DATA with a bundle from 'stormguard train' and compare with labels: ROC-AUC (score and "
                    "anomaly alone), precision/recall/FPR at score thresholds (default: the low-tier boundary, "
                    "the block score and 0), tiers x labels, and a per-cluster summary; --plot writes an SVG.",
    )
    p.add_argument("model", metavar="MODEL.skops")
    p.add_argument("data", nargs="*", metavar="DATA", help=inputs_help)
    p.add_argument("--labels", action="append", metavar="FILE", help="labels (see 'train --help')")
    p.add_argument("--loso", metavar="CORPUS", help="the headline: leave-one-source-out over the labelled sources of "
                                                    "the reference corpus (stormguard.models.sources)")
    p.add_argument("--threshold", type=float, action="append", metavar="SCORE",
                   help="score threshold to report (repeatable)")
    p.add_argument("--plot", metavar="FILE.svg", help="write score histograms (and ROC) as SVG")
    p.add_argument("--json", metavar="FILE.json", help="write the metrics as JSON")
    _data_args(p, defaults_from_bundle=True)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser(
        "score", help="score every client; write CSV/Parquet and/or fill the reputation store",
        description="Score every client of DATA with a bundle from 'stormguard train': key, score in [-100, 100], "
                    "tier, cluster, profile, anomaly, p_value, [bot_probability,] top reasons. Writes them with "
                    "-o (.csv/.parquet) and/or loads them into the reputation store given by --store "
                    "(pipelined bulk load; one score per key: latest window, lowest score).",
    )
    p.add_argument("model", metavar="MODEL.skops")
    p.add_argument("data", nargs="+", metavar="DATA", help=inputs_help)
    p.add_argument("-o", "--output", metavar="SCORES", help="output table: .csv or .parquet")
    p.add_argument("--store", metavar="URL", help="reputation store URL (memory://, redis://...) to fill")
    p.add_argument("--show", type=int, default=10, help="lowest-scored clients to print (default 10)")
    p.add_argument("--explain", action="store_true",
                   help="add an 'explain' column: each client's top suspicious request-content signals with values")
    _data_args(p, defaults_from_bundle=True)
    add_engine_options(p, partitions=True)
    p.set_defaults(func=cmd_score)
