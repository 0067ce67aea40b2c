"""The last stage of ``stormguard pipeline``: model scores and the live rules into a reputation store, then every
client's tier — shared by the local engine (one frame of each) and the Dask engine (the parts of the score and
window datasets, read one at a time, so the driver never holds all of either).

Everything happens "as of the end of the input": the model's scores and the rules' deductions are written with the
input's own timestamps, and tiers are read at its last timestamp (old logs are not decayed away). The three steps
run in the same order in both engines: every model score is loaded, then the rules observe every live window (in
``last_ts`` order within a part; a rule's update touches only its own key, and the parts of a dataset shuffled by
client key hold disjoint keys, so the order across parts does not matter), then each client is classified.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from stormguard.scoring.stores.sync import SyncStore

    from stormguard.config import Config


@dataclass
class StoreRun:
    """What :func:`rate_into_store` did: keys loaded from the model, rule penalties applied, clients per tier,
    and the ``show`` lowest-scored clients (score, then key)."""

    loaded: int = 0
    penalties: int = 0
    clients: int = 0
    tiers: Counter[str] = field(default_factory=Counter)
    worst: list[tuple[float, str, str, str]] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame({"key": [w[1] for w in self.worst], "score": [w[0] for w in self.worst],
                             "tier (X-IP-Rating)": [w[2] for w in self.worst],
                             "reasons": [w[3] for w in self.worst]})


def rate_into_store(score_parts: Iterable[pd.DataFrame], window_parts: Iterable[pd.DataFrame], store: SyncStore,
                    config: Config, *, end: float, show: int = 15) -> StoreRun:
    """Load ``score_parts`` (score tables, each holding whole keys) into ``store`` at ``end``, apply the live rules
    to ``window_parts`` (client feature windows of ``config.server.live_window``), then classify every key seen in
    either at ``end``."""
    from stormguard.scoring.batch import fill_store
    from stormguard.scoring.engine import ReputationEngine

    run = StoreRun()
    keys: set[str] = set()
    for scores in score_parts:
        run.loaded += fill_store(scores, store, now=end)
        keys.update(scores["key"].astype(str))
    engine = ReputationEngine(store.store, config)
    for windows in window_parts:
        for row in windows.sort_values(["last_ts", "key"], kind="stable").to_dict("records"):
            verdict, _ = store.run(engine.observe(str(row["key"]), row, now=float(row["last_ts"])))
            run.penalties += bool(verdict.reasons)
        keys.update(windows["key"].astype(str))
    def decisions() -> Iterator[tuple[float, str, str, str]]:
        for key in sorted(keys):
            decision = store.run(engine.decide(key, now=end))
            run.tiers[decision.tier.name] += 1
            yield (round(decision.reputation.score, 1), key, decision.tier.name,
                   ", ".join(decision.reputation.reasons))

    every = decisions()
    run.worst = heapq.nsmallest(show, every) if show > 0 else []  # bounded: keeps `show` of them
    for _ in every:  # (show 0: classify all the same, for the tier counts)
        pass
    run.clients = len(keys)
    return run


def dataset_parts(path: str | Path, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """The parts of a Parquet dataset folder (or the one file) in part order, one at a time."""
    import pandas as pd
    from stormguard.features.distributed.dataset import PART_GLOB

    path = Path(path)
    for part in sorted(path.glob(PART_GLOB)) if path.is_dir() else [path]:
        yield pd.read_parquet(part, columns=columns)


def print_store_run(run: StoreRun, *, store_url: str, scores_line: str, live_window: float) -> None:
    import pandas as pd

    print(scores_line)
    print(f"store:    {run.loaded:>7}  model scores loaded into {store_url.split('?')[0]}, "
          f"{run.penalties} rule penalties applied (the live rules, on {live_window:g} s windows)")
    print("tiers:    " + ", ".join(f"{tier} {n}" for tier, n in sorted(run.tiers.items())))
    with pd.option_context("display.width", 160):
        print(run.table().to_string(index=False))


def scores_on_dask(client: Any, records: Path, out_dir: Path, model_path: Path, store_url: str, config: Config,
                   *, partitions: int | None = None, show: int = 15, show_progress: bool | None = None) -> None:
    """The Dask engine's last stage: the bundle's scores into the dataset ``out_dir/scores.parquet`` and the live
    windows into a scratch dataset (removed afterwards), both on the cluster of ``client``; then
    :func:`rate_into_store` over their parts, here."""
    import shutil
    import tempfile

    import dask.dataframe as dd
    from stormguard.features.distributed.windows import features_dask
    from stormguard.models.distributed import score_dask
    from stormguard.models.train import load_model
    from stormguard.scoring.stores import open_store
    from stormguard.scoring.stores.sync import SyncStore

    model, bundle = load_model(model_path)
    key = bundle.metrics.get("key") or "src_ip"
    window = bundle.metrics.get("window") or None
    scores_path = out_dir / "scores.parquet"
    n = score_dask(client, records, scores_path, model, key=key, window=window, partitions=partitions,
                   show_progress=show_progress)
    ts = client.compute(dd.read_parquet(str(records), columns=["ts"])["ts"].max()).result()
    end = float(ts) if ts == ts and ts is not None else time.time()  # (NaN: no timestamp at all)
    scratch = Path(tempfile.mkdtemp(prefix=".live-windows.", dir=out_dir))
    try:
        windows_path = scratch / "windows.parquet"
        features_dask(client, records, windows_path, key=key, window=config.server.live_window,
                      partitions=partitions, show_progress=show_progress)
        store = SyncStore(open_store(store_url, config, failover=False))
        try:
            run = rate_into_store(dataset_parts(scores_path), dataset_parts(windows_path), store, config, end=end,
                                  show=show)
        finally:
            store.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_store_run(run, store_url=store_url, live_window=config.server.live_window,
                    scores_line=f"scores:   {n:>7}  -> {scores_path} (dataset)  (model {model_path.name}, key={key}, "
                                f"window={window or 'whole input'})")
