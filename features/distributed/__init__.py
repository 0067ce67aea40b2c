"""The batch pipeline on Dask (``--engine dask``): the same readers and feature definitions as the local engine,
scheduled by ``distributed`` over the workers of a cluster (or a ``LocalCluster`` sized to this machine).

* :mod:`.cluster` — connect to a scheduler or start a local cluster; a progress bar over tasks.
* :mod:`.replay` — inputs → tasks (a file, a byte range of a large log, a flow share of a large capture) → a
  partitioned Parquet record dataset, with the local engine's counts and located problems.
* :mod:`.windows` — records → a shuffle by client key → per-client window features, one partition at a time.

``dask`` and ``distributed`` are an optional extra (``pip install 'stormguard[dask]'``); nothing here is imported
by the local engine.
"""
