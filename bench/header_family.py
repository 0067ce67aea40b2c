#!/usr/bin/env python3
"""Cost of the header-family feature (features/http/families.py) in batch and online, against the same code with
the step switched off, in the same run (interleaved), medians over ``--runs``.

    python bench/header_family.py                  # 3 runs, ~300k records per batch input, 100k online events
    python bench/header_family.py --runs 5 --records 600000 --events 200000

Rows: ``client_features`` on the corpus Apache log (no header names: the step must cost nothing there) and on the
corpus HARs + the project's JSON-lines sample (header names on every record), both repeated to ``--records``;
``OnlineClientFeatures.open`` on Chrome-like connection events with the header names as the live server hands them
over (a list). Prints seconds (batch) or microseconds per event (online) and the ratio with/without.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
CHROMIUM_NAMES = ["host", "connection", "sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform",
                  "upgrade-insecure-requests", "user-agent", "accept", "sec-fetch-site", "sec-fetch-mode",
                  "sec-fetch-user", "sec-fetch-dest", "accept-encoding", "accept-language"]


def _frame(paths: list[Path], records: int) -> pd.DataFrame:
    from stormguard.features.replay import read_file

    from stormguard.report import ReplayStats

    base = pd.DataFrame([r for p in paths for r in read_file(p, ReplayStats())])
    reps = max(1, records // max(len(base), 1))
    parts = []
    for i in range(reps):  # many clients, shifted in time, the records themselves as read
        part = base.copy()
        part["src_ip"] = part["src_ip"].fillna("har").astype(str) + f"-{i % 500}"
        part["ts"] = part["ts"] + i
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("STORMGUARD_CORPUS",
                                                                           ROOT.parent / "shared" / "corpus")))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()

    from stormguard.features.clients import vector as fv
    from stormguard.features.clients import windows as W
    from stormguard.features.clients.online import OnlineClientFeatures

    inputs = {
        "apache log (no headers)": [args.corpus / "logs" / "elastic-examples-apache_logs.log"],
        "HARs + jsonl sample (headers)": sorted((args.corpus / "har").glob("*.har")) + [
            ROOT / "data" / "sample-access.jsonl"],
    }
    on_batch = W._header_family

    def off_batch(records: pd.DataFrame, ua: object) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(len(records), dtype=bool), np.zeros(len(records), dtype=bool)

    for name, paths in inputs.items():
        df = _frame(paths, args.records)
        times: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(args.runs):
            for label, fn in (("without", off_batch), ("with", on_batch)):
                W._header_family = fn
                t = time.perf_counter()
                W.client_features(df, window=300.0)
                times[label].append(time.perf_counter() - t)
        W._header_family = on_batch
        a, b = statistics.median(times["without"]), statistics.median(times["with"])
        print(f"client_features, {name}: {len(df):,} records, median of {args.runs}: without the step (baseline) "
              f"{a:.2f} s, with {b:.2f} s, ratio {b / a:.3f}")

    events = [{"src_ip": f"10.0.{i % 250}.{i % 200}", "ts": 1.7e9 + i * 0.001, "user_agent": CHROME,
               "header_names": list(CHROMIUM_NAMES), "status": 200, "http_version": "1.1"}
              for i in range(args.events)]
    on_online = fv.record_header_family
    times = {"without": [], "with": []}
    for _ in range(args.runs):
        for label, fn in (("without", lambda *_a: "unknown"), ("with", on_online)):
            fv.record_header_family = fn
            feats = OnlineClientFeatures("src_ip", 300.0)
            t = time.perf_counter()
            for event in events:
                feats.open(event)
            times[label].append((time.perf_counter() - t) / len(events) * 1e6)
    fv.record_header_family = on_online
    a, b = statistics.median(times["without"]), statistics.median(times["with"])
    print(f"OnlineClientFeatures.open, {len(events):,} events, median of {args.runs}: without the step (baseline) "
          f"{a:.2f} us/event, with {b:.2f} us/event, ratio {b / a:.3f}")


if __name__ == "__main__":
    main()
