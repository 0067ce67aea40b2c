"""A real Dask cluster for tests: ``dask scheduler`` and ``dask worker`` processes on loopback, started and
stopped by the test (ports chosen by the scheduler itself, found through its scheduler file; every wait bounded
by a deadline)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Seconds a process may take to come up (imports of pandas/pyarrow/distributed on a loaded 2-core machine).
START_DEADLINE = 90.0


def _wait_for_file(path: Path, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while not (path.exists() and path.stat().st_size > 0):
        if proc.poll() is not None:
            raise RuntimeError(f"dask scheduler exited ({proc.returncode}):\n{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"dask scheduler did not write {path} in time:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)  # polling a condition with a deadline, not a synchronisation sleep


@contextmanager
def dask_processes(folder: Path, workers: int = 2, memory_limit: str = "0") -> Iterator[str]:
    """Start ``dask scheduler`` plus ``workers`` single-threaded ``dask worker`` processes on 127.0.0.1 and
    yield the scheduler address once every worker has registered; stop them all afterwards."""
    from distributed import Client

    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    procs: list[subprocess.Popen[bytes]] = []
    logs = []

    def start(name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = folder / f"{name}.log"
        logs.append(log)
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=folder)
        procs.append(proc)
        return proc

    try:
        sched = start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0",
                                    "--dashboard-address", "127.0.0.1:0",
                                    "--scheduler-file", str(scheduler_file)])
        _wait_for_file(scheduler_file, sched, logs[0], time.monotonic() + START_DEADLINE)
        for i in range(workers):
            start(f"worker{i}", ["worker", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
                                 "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                                 "--memory-limit", memory_limit, "--local-directory", str(folder / f"w{i}"),
                                 "--name", f"test-worker-{i}"])
        with Client(scheduler_file=str(scheduler_file), timeout=START_DEADLINE) as client:
            try:
                client.wait_for_workers(workers, timeout=START_DEADLINE)
            except TimeoutError as exc:
                text = "\n".join(log.read_text(errors="replace")[-2000:] for log in logs)
                raise TimeoutError(f"{workers} dask workers did not register in time:\n{text}") from exc
            address = client.scheduler.address
        yield address
    finally:
        if scheduler_file.exists() and procs and procs[0].poll() is None:
            try:  # an orderly shutdown of scheduler and workers (quicker than signals to nannies)
                with Client(scheduler_file=str(scheduler_file), timeout=10) as client:
                    client.shutdown()
            except (OSError, TimeoutError):
                pass
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass
        for proc in reversed(procs):  # workers first, then the scheduler
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
