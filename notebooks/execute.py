"""Re-execute the notebooks in place, so their committed outputs are current: ``python notebooks/execute.py``.

Runs each ``NN-*.ipynb`` here with nbclient (kernel ``python3``, working directory ``notebooks/``) and writes the
outputs back without timing metadata, so a re-run changes the files only where results changed. Run it with the
reference corpus available: the committed outputs are the corpus ones. ``tests/test_notebooks.py`` executes the
same notebooks in a temporary copy and never rewrites these files.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(nb, kernel_name="python3", timeout=300, record_timing=False,
                   resources={"metadata": {"path": str(HERE)}}).execute()
    took = time.perf_counter() - started
    nbformat.write(nb, path)
    return took


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv] or sorted(HERE.glob("[0-9][0-9]-*.ipynb"))
    for path in paths:
        took = execute(path)
        print(f"{path.name}: {took:.1f} s, {path.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
