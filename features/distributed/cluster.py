"""A Dask client for one command: a running scheduler's, or a ``LocalCluster`` started for the run and sized to
the machine (one single-threaded worker process per CPU: the readers are pure Python and hold the GIL)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from stormguard.features.logs.split import default_jobs

if TYPE_CHECKING:
    from distributed import Client, Future

#: Seconds to wait for a named scheduler to answer before giving up.
CONNECT_TIMEOUT = 30
#: Where a local cluster's dashboard listens (a random free port when this one is taken).
LOCAL_DASHBOARD = "127.0.0.1:8787"


def require_dask() -> None:
    """``ImportError`` → a one-line instruction (``dask`` is an optional extra)."""
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as exc:
        raise SystemExit("stormguard: --engine dask needs dask and distributed: "
                         "pip install 'stormguard[dask]'") from exc


@contextmanager
def dask_client(scheduler: str | None = None, *, n_workers: int | None = None,
                memory_limit: str | int | None = "auto", dashboard: str | None = LOCAL_DASHBOARD,
                report: bool = True) -> Iterator[Client]:
    """A client of the scheduler at ``scheduler`` (``tcp://host:port``), or of a ``LocalCluster`` on loopback with
    ``n_workers`` processes (default: the CPUs available) limited to ``memory_limit`` each (``"auto"``: the
    machine's memory shared out). With ``report``, prints the scheduler, the worker count and the dashboard
    address to stderr; closes what it started."""
    require_dask()
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT)
    else:
        import dask

        # Tasks stream their records to Parquet and hand back only counts, so there is nothing for a worker to
        # spill, and pausing one (at 80 % of its limit, which the ~130 MB of imported libraries reach quickly
        # under a small limit) would only stall it; a worker that really passes its limit is still restarted at
        # 95 % and its task reported as failed.
        with dask.config.set({"distributed.worker.memory.pause": False}):
            cluster = LocalCluster(n_workers=n_workers or default_jobs(), threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=dashboard, memory_limit=memory_limit,
                                   silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        if report:
            workers = len(client.scheduler_info().get("workers", {}))
            where = "local cluster" if cluster is not None else "scheduler"
            print(f"dask: {where} {client.scheduler.address}, {workers} worker(s), dashboard: {dashboard_link(client)}",
                  file=sys.stderr)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def dashboard_link(client: Client) -> str:
    """The dashboard's address, or why there is none (it needs ``bokeh``)."""
    services = client.scheduler_info().get("services", {})
    if "dashboard" not in services:
        return "none (the scheduler serves no dashboard; it needs bokeh)"
    return str(client.dashboard_link)


def worker_count(client: Client) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


def as_completed_with_progress(futures: Sequence[Future], desc: str, show: bool | None = None
                               ) -> Iterator[Future]:
    """``futures`` as they finish (failed ones too), with a tqdm bar over tasks on a terminal (``show=None``:
    when stderr is one)."""
    from distributed import as_completed

    if show is None:
        show = sys.stderr.isatty()
    bar: Any = None
    if show and futures:
        from tqdm import tqdm

        bar = tqdm(total=len(futures), unit="task", desc=desc, file=sys.stderr, leave=False)
    try:
        for future in as_completed(list(futures)):
            if bar is not None:
                bar.update(1)
            yield future
    finally:
        if bar is not None:
            bar.close()
