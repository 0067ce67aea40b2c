"""Output datasets of the Dask engine: a folder of ``part-NNNNN.parquet`` files, written into a hidden partial
folder beside the target and renamed into place only when every task has finished (an interrupted run never
leaves a half dataset under the requested name)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PART_GLOB = "part-*.parquet"


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def check_dataset_target(out: Path) -> None:
    """``ValueError`` unless ``out`` names a ``.parquet`` folder that is absent or a dataset written before (only
    ``part-*.parquet`` files in it): nothing else is ever replaced."""
    if out.suffix.lower() not in {".parquet", ".pq"}:
        raise ValueError(f"{out}: the dask engine writes a Parquet dataset (a folder of parts): "
                         "the output must end in .parquet")
    if out.is_file() or (out.is_dir() and any(not p.match(PART_GLOB) for p in out.iterdir())):
        raise ValueError(f"{out} exists and is not a dataset written by the dask engine; "
                         "remove it or choose another output")


@contextmanager
def partial_dataset(out: Path) -> Iterator[Path]:
    """A fresh folder for the parts of ``out``; on a clean exit it replaces ``out``, else it is removed."""
    check_dataset_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for leftover in tmp.iterdir():  # a writer's partial file, left by a worker that was killed
            if not leftover.match(PART_GLOB):
                leftover.unlink()
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def dataset_bytes(path: Path) -> int:
    """Bytes on disk of a Parquet file or dataset folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("*.parquet"))
    return path.stat().st_size
