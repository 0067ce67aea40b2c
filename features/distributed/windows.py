"""``stormguard features --engine dask``: a record dataset → a shuffle by client key → the local engine's
:func:`~stormguard.features.clients.windows.client_features` on each partition → a feature dataset.

Every feature is a function of one client's records in one window, so once the shuffle has brought all the
records of a client key together (whichever files and partitions they came from), a partition's features are
exactly the rows the local engine computes for those keys. The key is the text
:func:`~stormguard.features.clients.windows.client_keys` gives (composite keys such as ``ip_ja3`` included);
records without one are dropped before the shuffle, as the local engine does not count them either. Each output
part is sorted by key and window start; parts hold disjoint sets of keys.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from stormguard.features.clients import vector as fv

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

#: Column the shuffle partitions on (dropped again by the feature computation).
CLIENT_COLUMN = "_stormguard_client"
#: Record bytes on disk (compressed Parquet) per output partition: a few hundred MB in memory.
PART_BYTES = 16 << 20


def keyed(part: pd.DataFrame, key: str) -> pd.DataFrame:
    """The records (conformed to the schema) with their client key, those without one left out."""
    from stormguard.features.clients.windows import client_keys

    from stormguard.schema import conform

    records = conform(part)
    keys = client_keys(records, key)
    records[CLIENT_COLUMN] = keys
    return records[keys.notna().to_numpy()]


def window_part(part: pd.DataFrame, window: float | None, folder: str, index: int) -> int:
    """Worker: the features of one shuffled partition, written to ``folder`` (nothing when it has none)."""
    from stormguard.features.clients.windows import client_features, write_features
    from stormguard.features.distributed.dataset import part_name

    frame = client_features(part, key=CLIENT_COLUMN, window=window)
    if len(frame):
        write_features(frame, Path(folder) / part_name(index))
    return len(frame)


def features_dask(client: Client, records: str | Path, output: str | Path, *, key: str = "src_ip",
                  window: float | None = fv.DEFAULT_WINDOW_S, partitions: int | None = None,
                  show_progress: bool | None = None) -> int:
    """Client features of the record file or dataset ``records`` into the feature dataset folder ``output``, on
    the cluster of ``client``; returns the number of feature rows. ``partitions`` (default: one per
    :data:`PART_BYTES` of records, at least two per worker) is the shuffle's output partition count."""
    import dask
    import dask.dataframe as dd
    from dask import delayed
    from stormguard.features.clients.windows import features_frame, write_features
    from stormguard.features.distributed.cluster import as_completed_with_progress, worker_count
    from stormguard.features.distributed.dataset import (
        check_dataset_target,
        dataset_bytes,
        part_name,
        partial_dataset,
    )

    if window is not None and not window > 0:
        raise ValueError(f"window must be positive seconds or None, not {window!r}")
    source, out = Path(records), Path(output)
    if source.suffix.lower() not in {".parquet", ".pq"} or not source.exists():
        raise ValueError(f"{source}: the dask engine reads Parquet records (a file, or a dataset folder written "
                         "by 'stormguard replay --engine dask')")
    check_dataset_target(out)
    workers = worker_count(client)
    by_size = math.ceil(dataset_bytes(source) / PART_BYTES)
    if partitions is None:
        partitions = max(2 * workers, by_size)
    with dask.config.set({"dataframe.convert-string": False}):  # the schema's own string dtype, as local
        frame = dd.read_parquet(str(source))
        inputs = max(workers, by_size)
        if frame.npartitions > inputs:  # many small parts (a replay of many small files): fewer, larger tasks
            frame = frame.repartition(npartitions=inputs)
        meta = keyed(frame._meta, key)  # an unknown key column fails here, before any task runs
        shuffled = frame.map_partitions(keyed, key, meta=meta).shuffle(on=CLIENT_COLUMN, npartitions=partitions)
        with partial_dataset(out) as tmp:
            parts = [delayed(window_part)(p, window, str(tmp), i) for i, p in enumerate(shuffled.to_delayed())]
            futures = client.compute(parts)
            total = 0
            for future in as_completed_with_progress(futures, "features", show_progress):
                total += int(future.result())  # a failed partition fails the run: its clients would be missing
            if total == 0:
                write_features(features_frame([]), tmp / part_name(0))
    return total
