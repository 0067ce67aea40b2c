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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stormguard.features.clients import vector as fv

if TYPE_CHECKING:
    import dask.dataframe as dd
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


def window_part(part: pd.DataFrame, window: float | None) -> pd.DataFrame:
    """Worker: the features of one shuffled partition (the local engine's function)."""
    from stormguard.features.clients.windows import client_features

    return client_features(part, key=CLIENT_COLUMN, window=window)


def _write_part(func: Callable[..., pd.DataFrame], part: pd.DataFrame, args: tuple[Any, ...],
                writer: Callable[[pd.DataFrame, Path], None], folder: str, index: int) -> int:
    """Worker: ``func(part, *args)`` written by ``writer`` to ``folder`` (nothing when it has no rows)."""
    from stormguard.features.distributed.dataset import part_name

    frame = func(part, *args)
    if len(frame):
        writer(frame, Path(folder) / part_name(index))
    return len(frame)


def by_client(client: Client, records: str | Path, key: str, partitions: int | None = None) -> dd.DataFrame:
    """The record file or dataset ``records`` (conformed to the schema, with the client key in
    :data:`CLIENT_COLUMN`, records without a key left out) shuffled so that each client key is in exactly one
    partition. ``partitions`` (default: one per :data:`PART_BYTES` of records, at least two per worker)."""
    import dask.dataframe as dd
    from stormguard.features.distributed.cluster import worker_count
    from stormguard.features.distributed.dataset import dataset_bytes

    source = Path(records)
    if source.suffix.lower() not in {".parquet", ".pq"} or not source.exists():
        raise ValueError(f"{source}: the dask engine reads Parquet records (a file, or a dataset folder written "
                         "by 'stormguard replay --engine dask')")
    workers = worker_count(client)
    by_size = math.ceil(dataset_bytes(source) / PART_BYTES)
    if partitions is None:
        partitions = max(2 * workers, by_size)
    frame = dd.read_parquet(str(source))
    inputs = max(workers, by_size)
    if frame.npartitions > inputs:  # many small parts (a replay of many small files): fewer, larger tasks
        frame = frame.repartition(npartitions=inputs)
    meta = keyed(frame._meta, key)  # an unknown key column fails here, before any task runs
    return frame.map_partitions(keyed, key, meta=meta).shuffle(on=CLIENT_COLUMN, npartitions=partitions)


def map_to_dataset(client: Client, frame: dd.DataFrame, func: Callable[..., pd.DataFrame], args: tuple[Any, ...],
                   writer: Callable[[pd.DataFrame, Path], None], empty: pd.DataFrame, output: str | Path, *,
                   desc: str, show_progress: bool | None = None) -> int:
    """``func(partition, *args)`` on every partition of ``frame``, each result written by ``writer`` as a part of
    the dataset folder ``output`` (``empty``, when no partition had rows, so the schema is there); returns the
    row count. A partition that fails fails the run (its clients would be missing): nothing is replaced then."""
    from dask import delayed
    from stormguard.features.distributed.cluster import as_completed_with_progress
    from stormguard.features.distributed.dataset import part_name, partial_dataset

    with partial_dataset(Path(output)) as tmp:
        parts = [delayed(_write_part)(func, p, args, writer, str(tmp), i) for i, p in enumerate(frame.to_delayed())]
        total = 0
        for future in as_completed_with_progress(client.compute(parts), desc, show_progress):
            total += int(future.result())
        if total == 0:
            writer(empty, tmp / part_name(0))
    return total


def features_dask(client: Client, records: str | Path, output: str | Path, *, key: str = "src_ip",
                  window: float | None = fv.DEFAULT_WINDOW_S, partitions: int | None = None,
                  show_progress: bool | None = None) -> int:
    """Client features of the record file or dataset ``records`` into the feature dataset folder ``output``, on
    the cluster of ``client`` (see :func:`by_client` for ``partitions``); returns the number of feature rows."""
    import dask
    from stormguard.features.clients.windows import features_frame, write_features
    from stormguard.features.distributed.dataset import check_dataset_target

    if window is not None and not window > 0:
        raise ValueError(f"window must be positive seconds or None, not {window!r}")
    check_dataset_target(Path(output))
    with dask.config.set({"dataframe.convert-string": False}):  # the schema's own string dtype, as local
        shuffled = by_client(client, records, key, partitions)
        return map_to_dataset(client, shuffled, window_part, (window,), write_features, features_frame([]),
                              output, desc="features", show_progress=show_progress)
