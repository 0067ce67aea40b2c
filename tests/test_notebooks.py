"""The notebooks in notebooks/ run, so they cannot rot: each is executed with nbclient, with and without the corpus.

Every notebook is run in a temporary copy of ``notebooks/`` (beside a copy of ``data/``, so a fresh checkout is what
they see), with the copy as working directory, kernel ``python3`` and 300 s per cell; the committed files are never
rewritten (``python notebooks/execute.py`` refreshes their saved outputs). A failure names the notebook and shows
the failing cell's source and error.

- ``corpus``: ``STORMGUARD_CORPUS`` points at the reference corpus (skipped when it is absent, as other corpus tests).
- ``no-corpus``: ``STORMGUARD_CORPUS`` unset and no ``../shared/corpus`` beside the copy: every notebook must fall
  back to ``data/``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, corpus_root

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the test extras (nbformat, nbclient, ...)")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need the test extras (nbclient)")
pytest.importorskip("ipykernel", reason="notebook tests need the test extras (ipykernel)")
pytest.importorskip("matplotlib", reason="notebook tests need the test extras (matplotlib)")

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]-*.ipynb"))
CELL_TIMEOUT = 300
MAX_BYTES = 300 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _failure_report(nb, path: Path, exc: BaseException) -> str:
    """The first cell with an error output (source + error + traceback), else the exception itself."""
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error":
                trace = _ANSI.sub("", "\n".join(out.get("traceback", [])))
                return (f"{path.name}: cell {index} failed: {out.get('ename')}: {out.get('evalue')}\n"
                        f"--- cell source ---\n{cell.source}\n--- traceback ---\n{trace[-4000:]}")
    return f"{path.name}: {type(exc).__name__}: {_ANSI.sub('', str(exc))[-4000:]}"


def _fresh_copy(tmp_path: Path) -> Path:
    """``<tmp>/project/{notebooks,data}``: what a fresh checkout has, and no corpus beside it."""
    root = tmp_path / "project"
    shutil.copytree(NOTEBOOKS_DIR, root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints",
                                                                                      "__pycache__"))
    shutil.copytree(PROJECT_ROOT / "data", root / "data")
    return root / "notebooks"


def test_notebooks_exist() -> None:
    assert len(NOTEBOOKS) >= 3, f"expected at least three notebooks in {NOTEBOOKS_DIR}"
    readme = (NOTEBOOKS_DIR / "README.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert path.name in readme, f"notebooks/README.md does not list {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_with_small_outputs(path: Path) -> None:
    """Committed executed (every code cell ran, none failed) and small (< 300 KB)."""
    size = path.stat().st_size
    assert size < MAX_BYTES, f"{path.name} is {size / 1024:.0f} KB; keep saved outputs small (< 300 KB)"
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), f"{path.name} has unexecuted cells: run notebooks/execute.py"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} was saved with an error output: {errors[0].get('ename')}"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["corpus", "no-corpus"])
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    if mode == "corpus":
        corpus = corpus_root()
        if corpus is None:
            pytest.skip("reference corpus not found: set STORMGUARD_CORPUS or place it at ../shared/corpus")
        monkeypatch.setenv("STORMGUARD_CORPUS", str(corpus))
    else:
        monkeypatch.delenv("STORMGUARD_CORPUS", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    workdir = _fresh_copy(tmp_path)
    nb = nbformat.read(workdir / path.name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(workdir)}})
    started = time.perf_counter()
    try:
        client.execute()
    except Exception as exc:  # CellExecutionError, timeouts, a dead kernel: report the cell when there is one
        pytest.fail(_failure_report(nb, path, exc), pytrace=False)
    took = time.perf_counter() - started
    with capsys.disabled():
        print(f"\n{path.name} [{mode}]: {took:.1f} s")
    if mode == "no-corpus":
        shown = json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"][:2])
        assert "No reference corpus found" in shown, f"{path.name} did not say it fell back to data/"
