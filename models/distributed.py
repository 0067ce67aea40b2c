"""``stormguard score --engine dask``: a record dataset → a shuffle by client key → per partition, the local
engine's features (:func:`~stormguard.models.train.features_from_records`) and the bundle's
:meth:`~stormguard.models.behaviour.ReputationModel.score_frame` → a score dataset.

A client's score depends only on its own feature rows (the fitted model is applied row by row), and the shuffle
brings every record of a client key into one partition, so each partition's scores are exactly the local
engine's rows for its keys. The model is sent to every worker once (``scatter``), not with every task.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client


def score_part(part: pd.DataFrame, model: Any, window: float | None, explain: bool) -> pd.DataFrame:
    """Worker: the scores of one shuffled partition (features per source family, then the model)."""
    from stormguard.features.distributed.windows import CLIENT_COLUMN
    from stormguard.models.train import features_from_records

    features = features_from_records(part, key=CLIENT_COLUMN, window=window)
    scores = model.score_frame(features)
    if explain:
        from stormguard.models.content import explain_signals

        scores["explain"] = explain_signals(features)
    return scores


def write_scores(frame: pd.DataFrame, path: Path) -> None:
    frame.to_parquet(path, index=False)


def score_dask(client: Client, records: str | Path, output: str | Path, model: Any, *, key: str = "src_ip",
               window: float | None = None, partitions: int | None = None, explain: bool = False,
               show_progress: bool | None = None) -> int:
    """Score every client of the record file or dataset ``records`` with ``model`` into the dataset folder
    ``output``, on the cluster of ``client``; returns the number of score rows."""
    import dask
    from stormguard.features.distributed.dataset import check_dataset_target
    from stormguard.features.distributed.windows import by_client, map_to_dataset

    from stormguard.schema import records_frame

    check_dataset_target(Path(output))
    empty = score_part(records_frame([]).assign(_stormguard_client=[]), model, window, explain)
    [shared] = client.scatter([model], broadcast=True)
    with dask.config.set({"dataframe.convert-string": False}):
        shuffled = by_client(client, records, key, partitions)
        return map_to_dataset(client, shuffled, score_part, (shared, window, explain), write_scores, empty, output,
                              desc="score", show_progress=show_progress)


def features_part(part: pd.DataFrame, window: float | None) -> pd.DataFrame:
    """Worker: the training features of one shuffled partition (per source family, as the local engine)."""
    from stormguard.features.distributed.windows import CLIENT_COLUMN
    from stormguard.models.train import features_from_records

    return features_from_records(part, key=CLIENT_COLUMN, window=window)


def write_features_part(frame: pd.DataFrame, path: Path) -> None:
    frame.to_parquet(path, index=False)


def _strata(frame: pd.DataFrame, labels: Any, seed: int) -> pd.DataFrame:
    """``stratum`` (source kind, and label when there are labels: 1, 0 or none) and ``draw``, a uniform number
    in [0, 1) fixed by the row's key, window and ``seed`` (so a sample does not depend on partitioning)."""
    import numpy as np
    import pandas as pd

    kind = frame["source_kind"].astype("string").fillna("other")
    if labels is not None:
        y = frame["key"].astype("object").map(labels).astype("float64")
        kind = kind + "|" + y.map({1.0: "bad", 0.0: "good"}).fillna("unlabelled").astype("string")
    ident = pd.DataFrame({"key": frame["key"].astype("string"), "w": frame["window_start"].astype("float64")})
    hashed = pd.util.hash_pandas_object(ident, index=False, hash_key=f"{seed:016d}"[:16])
    draw = (hashed.to_numpy(dtype=np.uint64) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return frame.assign(_stratum=kind.to_numpy(), _draw=draw)


def _below(part: pd.DataFrame, labels: Any, seed: int, cut: dict[str, float]) -> pd.DataFrame:
    """Worker: the rows whose draw is below their stratum's cut (the candidates of the sample)."""
    marked = _strata(part, labels, seed)
    keep = marked["_draw"].to_numpy() < marked["_stratum"].map(cut).fillna(0.0).to_numpy()
    return marked[keep]


def stratified_training_sample(client: Client, records: str | Path, scratch: str | Path, *, size: int,
                               key: str = "src_ip", window: float | None = None, labels: Any = None,
                               seed: int = 0, partitions: int | None = None,
                               show_progress: bool | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Training features of every client of ``records``, computed on the cluster into the dataset ``scratch``,
    and a stratified sample of at most ``size`` of them for the driver: strata are the source kinds (and, with
    ``labels``, bad / good / unlabelled within each), each allotted its proportional share (at least one row),
    rows chosen by a draw fixed by key, window and ``seed``. Returns the sample and a description of it for the
    bundle (``training_set``: ``all rows`` when everything fits, else ``stratified sample``)."""
    import dask
    import dask.dataframe as dd
    import pandas as pd
    from stormguard.features.distributed.windows import by_client, map_to_dataset
    from stormguard.models.train import features_from_records

    from stormguard.schema import records_frame

    if size < 1:
        raise ValueError(f"sample size must be at least 1, not {size}")
    empty = features_from_records(records_frame([]).assign(_stormguard_client=[]), key="_stormguard_client",
                                  window=window)
    with dask.config.set({"dataframe.convert-string": False}):
        shuffled = by_client(client, records, key, partitions)
        total = map_to_dataset(client, shuffled, features_part, (window,), write_features_part, empty, scratch,
                               desc="features", show_progress=show_progress)
        frame = dd.read_parquet(str(scratch))
        meta = _strata(frame._meta, labels, seed)
        counts = client.compute(frame.map_partitions(_strata, labels, seed, meta=meta)["_stratum"]
                                .value_counts()).result()
        counts = {str(k): int(v) for k, v in counts.items()}
        if total <= size:
            quota = dict(counts)
        else:
            quota = {k: min(v, max(1, round(size * v / total))) for k, v in counts.items()}
        # candidates: rows below a cut a little above each stratum's share, then the exact lowest draws here
        cut = {k: min(1.0, 1.2 * quota[k] / v + 64.0 / v) for k, v in counts.items()}
        candidates = client.compute(frame.map_partitions(_below, labels, seed, cut, meta=meta)).result()
    picked = [g.nsmallest(quota[str(k)], "_draw") for k, g in candidates.groupby("_stratum", sort=True)]
    sample = pd.concat(picked, ignore_index=True) if picked else candidates.iloc[:0]
    sample = sample.sort_values(["key", "window_start"], kind="stable").drop(columns=["_stratum", "_draw"])
    info = {"training_set": "all rows" if total <= size else "stratified sample", "population_rows": total,
            "sample_rows": len(sample), "sample_size_asked": size, "sample_seed": seed,
            "strata": {k: {"population": counts[k], "sample": quota[k]} for k in sorted(counts)},
            "incremental": "not used: the behaviour models (clusters, isolation forest, calibration) fit on all "
                           "rows they are given, so they train on the sample"}
    return sample.reset_index(drop=True), info
