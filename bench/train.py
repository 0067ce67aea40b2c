"""Benchmark of the behaviour scorer: training on 1,000,000 connection records, batch and live scoring.

How the records are built (nothing from the corpus is copied into the project): ``bench/build_corpus.py``'s
``build_log`` repeats the corpus Apache log (``logs/elastic-examples-apache_logs.log``, 10,000 lines, 1,753 clients)
until it has ``--records`` lines; each repetition moves on by whole days and maps every client address to a new one,
so the 1,000,000 lines hold 100 × 1,753 distinct clients with the corpus' real request timing, UAs, paths and
statuses. The file (cached in ``bench/out/``) is replayed once with ``stormguard.features.replay.replay`` (timed
and printed, but not part of training: training starts from connection records).

Rows printed (medians over ``--runs``):

- ``train``: records → per-client feature vectors (``--window`` s tumbling windows) → ``ReputationModel.fit``
  (profiles, isolation forest, conformal reference, mapping). Target < 60 s.
- ``batch score``: ``ReputationModel.score_frame`` over every training client (score, tier, cluster, profile,
  anomaly, p-value, reasons). Target ≥ 200,000 clients/s.
- ``live micro-batch``: ``LiveScorer.score`` of 256 client vectors (a random sample, as the server would collect
  them), median of ``--live-runs`` calls after a warm-up. Target < 20 ms.

Issue 12 added request-content features and a content model (classifier + named rules): every row is printed for
the **previous** model (behaviour models only, as trained above), the **content** model (the same model plus a
content classifier fitted on the corpus' labelled sources, ``stormguard.models.sources``, and the rules) and the
**content + UA** model (the default bundle's recipe: behaviour refitted beside the small UA model of
``stormguard.models.combined.DEFAULT_UA_PARAMS``, whose outputs are gated evidence, not behaviour inputs, plus
content and rules), each with its ratio to the previous
model measured in the same run, and
``features`` reports lines/s of the feature step (content features included; target >= 200,000 lines/s).

A measurement, not a test: it always exits 0 and prints ``MISSED`` next to a missed target. With ``--ua-model
UA.skops`` the UA model's outputs are inputs too (each distinct UA is scored once per batch; the live scorer keeps
an LRU of them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _corpus(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("STORMGUARD_CORPUS")
    return Path(env) if env else HERE.parent.parent / "shared" / "corpus"


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _content_model(model: object, corpus: Path) -> object:
    """``model`` plus the content classifier (fitted on the corpus' labelled sources) and the named rules."""
    import copy

    from stormguard.models.content import ContentClassifier
    from stormguard.models.sources import corpus_sources

    rows = corpus_sources(corpus, windows=(300.0,)).features
    rows = rows[rows["source"] != "apache-crawlers"].reset_index(drop=True)
    out = copy.deepcopy(model)
    out.rules = True  # type: ignore[attr-defined]
    return out.fit_content(ContentClassifier(), rows, rows["label"].to_numpy(dtype=float),  # type: ignore[attr-defined]
                           rows["source"].to_numpy())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000, help="connection records to train on")
    ap.add_argument("--window", type=float, default=300.0, help="feature window seconds (0 = whole input)")
    ap.add_argument("--runs", type=int, default=3, help="training / batch-scoring runs (median)")
    ap.add_argument("--live-runs", type=int, default=50, help="live micro-batch calls (median)")
    ap.add_argument("--batch", type=int, default=256, help="live micro-batch size")
    ap.add_argument("--ua-model", help="UA bundle to include (stormguard ua train)")
    ap.add_argument("--corpus", help="corpus folder (default ../shared/corpus or $STORMGUARD_CORPUS)")
    ap.add_argument("--out-dir", default=str(HERE / "out"), help="cache folder for the built log")
    args = ap.parse_args(argv)

    import numpy as np
    import pandas as pd
    from build_corpus import build_log
    from stormguard.features.replay import replay
    from stormguard.models.behaviour import LiveScorer
    from stormguard.models.train import features_from_records, train_model

    from stormguard.report import ReplayStats

    log_path, meta = build_log(_corpus(args.corpus), Path(args.out_dir), lines=args.records,
                               log=lambda m: print(m, file=sys.stderr))
    t0 = time.perf_counter()
    records = replay([log_path], ReplayStats(), show_progress=False)
    t_replay = time.perf_counter() - t0
    records = records.iloc[: args.records]
    print(f"records: {len(records):,} from {log_path.name} (replay {t_replay:.1f} s, not counted)")
    window = None if not args.window else args.window
    ua = None
    if args.ua_model:
        from stormguard.models.bundle import load_bundle
        from stormguard.models.ua import FEATURE_SCHEMA_VERSION

        ua = load_bundle(args.ua_model, expected_schema=FEATURE_SCHEMA_VERSION, kind="ua").estimators["ua"]

    train_times, feat_times, score_rates, score_cpu_rates = [], [], [], []
    model = features = None
    for run in range(args.runs):
        t0 = time.perf_counter()
        features = features_from_records(records, key="src_ip", window=window)
        t1 = time.perf_counter()
        model = train_model(features, ua_model=ua, random_state=run)
        t2 = time.perf_counter()
        feat_times.append(t1 - t0)
        train_times.append(t2 - t0)
        t3, c3 = time.perf_counter(), time.process_time()
        scores = model.score_frame(features)
        t4, c4 = time.perf_counter(), time.process_time()
        score_rates.append(len(scores) / (t4 - t3))
        score_cpu_rates.append(len(scores) / max(c4 - c3, 1e-9))
        print(f"run {run + 1}: features {t1 - t0:.1f} s + fit {t2 - t1:.1f} s = {t2 - t0:.1f} s "
              f"({len(features):,} clients); batch score {t4 - t3:.2f} s ({len(scores) / (t4 - t3):,.0f} clients/s)",
              flush=True)
    assert model is not None and features is not None
    content = _content_model(model, _corpus(args.corpus))
    from stormguard.models.combined import DEFAULT_UA_PARAMS
    from stormguard.models.ua import UAModel, as_bot_labels

    uas = pd.read_csv(_corpus(args.corpus) / "ua" / "ua_dev.csv", dtype=str, keep_default_na=False)
    small_ua = UAModel(random_state=0, **DEFAULT_UA_PARAMS).fit(uas["user_agent"].tolist(),
                                                                 as_bot_labels(uas["label"]))
    t0 = time.perf_counter()
    from stormguard.models.train import reputation_template

    recipe = reputation_template(ua_model=small_ua, random_state=0, rules=True, ua_inputs=False)
    with_ua = _content_model(recipe.fit(features), _corpus(args.corpus))
    print(f"default recipe (behaviour with the small UA model + content): fit {time.perf_counter() - t0:.1f} s")
    train = statistics.median(train_times)
    feat = statistics.median(feat_times)
    print()
    print(f"train (features + fit), {len(records):,} records: median {train:.1f} s "
          f"(features {feat:.1f} s)  target < 60 s  {_mark(train < 60)}")
    print(f"features: median {len(records) / feat:,.0f} lines/s (request-content features included)  "
          f"target >= 200,000  {_mark(len(records) / feat >= 200_000)}")
    base: dict[str, float] = {}
    for name, m in (("previous model", model), ("content model", content),
                    ("content + UA model (the default bundle's recipe)", with_ua)):
        rates, cpu_rates = [], []
        for _ in range(args.runs):
            t3, c3 = time.perf_counter(), time.process_time()
            m.score_frame(features)
            rates.append(len(features) / (time.perf_counter() - t3))
            cpu_rates.append(len(features) / max(time.process_time() - c3, 1e-9))
        rate = statistics.median(rates)
        rng = np.random.default_rng(0)
        live = LiveScorer(m)
        lat, lat_cpu = [], []
        for i in range(args.live_runs + 5):
            sample = features.iloc[rng.choice(len(features), size=args.batch, replace=False)].assign(
                source_kind="log")
            t0, c0 = time.perf_counter(), time.process_time()
            live.score(sample)
            if i >= 5:
                lat.append((time.perf_counter() - t0) * 1000)
                lat_cpu.append((time.process_time() - c0) * 1000)
        ms = statistics.median(lat)
        print(f"{name}: batch score median {rate:,.0f} clients/s (CPU time: {statistics.median(cpu_rates):,.0f} "
              f"clients per CPU-second)  target >= 200,000  {_mark(rate >= 200_000)}; "
              f"live micro-batch of {args.batch}: median {ms:.1f} ms (p90 {np.percentile(lat, 90):.1f} ms, CPU "
              f"{statistics.median(lat_cpu):.1f} ms)  target < 20 ms  {_mark(ms < 20)}")
        if base:
            print(f"  vs previous model: batch {rate / base['rate']:.2f}x the clients/s, live "
                  f"{ms / base['ms']:.2f}x the latency")
        else:
            base = {"rate": rate, "ms": ms}
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
