#!/usr/bin/env python3
"""Train the bundled default behaviour model (``data/default-model.skops``) from the project's own sample.

``stormguard serve`` loads this bundle when no ``--model`` is given, so a fresh checkout scores live clients out of
the box. It is trained on the three files of this folder only (``sample.pcap``, ``sample-access.log``,
``sample-access.jsonl``; see ``data/README.md``), never on third-party data, through the public API of
:mod:`stormguard.models.train` (``load_feature_table`` → ``train_model`` → ``save_model``).

Choices, and why:

- **window = 300 s** (``features.vector.DEFAULT_WINDOW_S``, the server's ``live_window``): ``conn_rate_per_min``
  is divided by the window, so training and live vectors must use the same one;
- **labels from the generator's cast** (:data:`CAST`; ``data/README.md`` documents which program played which
  client): the reconnect storm, the short-lived handshaker and the scanner are abusive, the browser, the
  well-behaved curl, the urllib script and the IPv6 curl are normal; the client without a UA and the UA/TLS
  mismatch are left unlabelled (ambiguous on purpose). With both classes present the model also fits its
  calibrated classifier, which is what gives a model trained on 17 clients any discriminating power;
- **small and deterministic**: ``random_state`` fixed, 4 clusters, 50 trees (the bundle stays far below 2 MB); no
  UA model without ``--corpus`` (the sample has too few distinct UAs to fit one); with it, a small UA model fitted
  on the corpus' ``ua/ua_dev.csv`` (``--no-ua`` leaves it out, for comparison). The bundle's manifest records the training-data
  fingerprint; the creation time and library versions are the only parts that differ between runs.

Usage: ``python data/make_model.py [-o data/default-model.skops] [--seed 0]``. Takes a few seconds.

**From the corpus** (issue 12; how the committed default is built): ``python data/make_model.py --corpus
../shared/corpus``. The labelled corpus sources (:mod:`stormguard.models.sources`: scanner logs, fail2ban fixtures,
Iliou humans, labelling functions over the Apache log) join the sample's cast; a leave-one-source-out run
(:mod:`stormguard.models.transfer`) chooses the tier knots on held-out sources and its metrics (knots chosen inside
each training fold: nested) are stored in the bundle's manifest; the final model (behaviour models + content
classifier + named rules) is fitted on every source. The recipe is :func:`stormguard.models.combined.fit_combined`,
which ``stormguard train DATA --content --corpus CORPUS`` uses too, with the user's data in place of the sample.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
INPUTS = ("sample.pcap", "sample-access.log", "sample-access.jsonl")
DEFAULT_OUTPUT = DATA_DIR / "default-model.skops"
WINDOW_S = 300.0
N_CLUSTERS = 4
N_TREES = 50
MAX_BYTES = 2_000_000

#: Source address → label, from the client cast of ``make_sample.py`` (1 abusive, 0 normal; absent = unlabelled).
CAST: dict[str, float] = {
    "127.0.0.5": 1.0,   # reconnect storm: 30 TLS connections to /events in ~4 s, each dropped after one event
    "127.0.0.7": 1.0,   # short-lived: handshakes closed without a request, bare TCP connect/close
    "127.0.0.8": 1.0,   # plain-HTTP scanner: /.env, /wp-login.php, /admin (404s)
    "127.0.0.1": 0.0,   # headless Chromium, one page load
    "127.0.0.2": 0.0,   # well-behaved curl, requests 1.5 s apart
    "127.0.0.3": 0.0,   # Python urllib script, keep-alive
    "::1": 0.0,         # curl over IPv6, one request
}


def build(output: Path = DEFAULT_OUTPUT, seed: int = 0, data_dir: Path = DATA_DIR, corpus: Path | None = None,
          ua: bool = True) -> Path:
    from stormguard.models.behaviour import evidence_floor_share
    from stormguard.models.train import load_feature_table, save_model, train_model

    from stormguard.config import Config

    inputs = [data_dir / name for name in INPUTS]
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        raise SystemExit(f"missing sample file(s): {', '.join(missing)} (run data/make_sample.py)")
    config = Config()  # the default reputation anchors: the mapping must match the server's defaults
    features = load_feature_table(inputs, key="src_ip", window=WINDOW_S, show_progress=False)
    transfer: dict[str, object] = {}
    if corpus is None:
        model = train_model(features, CAST, config=config, n_clusters=N_CLUSTERS, n_estimators=N_TREES,
                            random_state=seed)
    else:
        model, transfer = _corpus_model(features, corpus, config, seed, _ua_model(corpus, seed) if ua else None)
    scores = model.score_frame(features)
    metrics = {
        "n_clients": len(features), "key": "src_ip", "window": WINDOW_S, "kinds": model.kind_counts_,
        "tiers": scores["tier"].value_counts().to_dict(), "prior_bad": 0.02,
        "anomaly_p_low": evidence_floor_share(0.02), "ua_model": bool(ua and corpus is not None),
        "ja3_lists": {"bad": 0, "known": 0},
        "n_labelled": int(features["key"].isin(CAST.keys()).sum()), "seed": seed,
        "trained_on": list(INPUTS) + (["corpus sources (stormguard.models.sources)"] if corpus else []),
        "generator": "data/make_model.py" + (" --corpus" if corpus else ""), "leave_one_source_out": transfer,
    }
    out = save_model(output, model, features, metrics)
    out.chmod(0o644)  # save_bundle writes through mkstemp (0600); the bundled default is meant to be shared
    size = out.stat().st_size
    if size >= MAX_BYTES:
        raise SystemExit(f"{out}: {size:,} bytes, over the {MAX_BYTES:,}-byte budget; lower N_TREES/N_CLUSTERS")
    by_key = scores.assign(label=features["key"].map(CAST)).sort_values("score")
    print(by_key[["key", "source_kind", "score", "tier", "profile", "label"]].to_string(index=False))
    return out


def _ua_model(corpus: Path, seed: int) -> object:
    """The UA model of the default bundle: ``ua/ua_dev.csv`` of the corpus with
    :data:`stormguard.models.combined.DEFAULT_UA_PARAMS`, as ``stormguard ua train ../shared/corpus/ua/ua_dev.csv --features 1024 --components 8 --clusters 8``."""
    import pandas as pd
    from stormguard.models.combined import DEFAULT_UA_PARAMS
    from stormguard.models.ua import UAModel, as_bot_labels

    frame = pd.read_csv(corpus / "ua" / "ua_dev.csv", dtype=str, keep_default_na=False, na_filter=False)
    frame = frame[frame["label"].str.strip() != ""]
    model = UAModel(random_state=seed, **DEFAULT_UA_PARAMS)
    return model.fit(frame["user_agent"].tolist(), as_bot_labels(frame["label"]))


def _corpus_model(sample: object, corpus: Path, config: object, seed: int,
                  ua_model: object = None) -> tuple[object, dict[str, object]]:
    """Labelled corpus sources + the sample's cast → :func:`stormguard.models.combined.fit_combined`, exactly as
    ``stormguard train data/sample.pcap data/sample-access.log data/sample-access.jsonl --window 300 --clusters 4
    --trees 50 --labels CAST.csv --corpus CORPUS`` (``tests/test_train_content.py`` checks they agree): behaviour
    models (profiles, anomaly, classifier) from the sample's cast, as without --corpus, so that live and capture
    clients are judged as before; content model and rules from the labelled corpus windows and the sample's
    labelled windows with requests (source ``data``); tier knots from leave-one-source-out, nested figures in the
    manifest."""
    import json

    from stormguard.models.behaviour import ReputationModel
    from stormguard.models.combined import content_windows, data_sources, fit_combined
    from stormguard.models.content import ContentClassifier
    from stormguard.models.sources import corpus_sources
    from stormguard.models.train import reputation_template

    table = corpus_sources(corpus, progress=print)
    print(table.lf_table.to_string(index=False))
    labels = sample["key"].map(CAST).to_numpy(dtype=float)  # type: ignore[index]
    sources = data_sources(sample, alone=False)  # type: ignore[arg-type]
    rows = content_windows(sample, labels, sources, table.features)  # type: ignore[arg-type]

    def make() -> ReputationModel:  # what ``stormguard train --content`` builds with --clusters 4 --trees 50
        return reputation_template(config=config, n_clusters=N_CLUSTERS, n_estimators=N_TREES, random_state=seed,
                                   rules=True, ua_model=ua_model, ua_inputs=False)

    model, metrics = fit_combined(sample, labels, rows, make, ContentClassifier(random_state=seed),  # type: ignore[arg-type]
                                  feature_sources=sources, progress=print)
    metrics["labelling_functions"] = table.lf_table.to_dict("records")
    metrics["skipped"] = table.skipped
    print(json.dumps({k: v for k, v in metrics.items() if k != "labelling_functions"}, indent=1, default=str))
    return model, metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help="bundle path (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="random_state of every estimator (default 0)")
    ap.add_argument("--corpus", type=Path, help="train on the labelled corpus sources too (see the docstring)")
    ap.add_argument("--no-ua", action="store_true", help="with --corpus: leave the UA model out (for comparison)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = build(args.output, args.seed, corpus=args.corpus, ua=not args.no_ua)
    print(f"saved {out} ({out.stat().st_size:,} bytes) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
