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
