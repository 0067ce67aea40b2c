"""The folder layout maps onto one package: features/ installs as stormguard.features, never as `features`."""

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import PROJECT_ROOT


def test_wheel_installs_only_the_stormguard_package(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(PROJECT_ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("stormguard-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert top == {"stormguard"}, top
    for sub in ("features", "models", "scoring", "server"):
        assert f"stormguard/{sub}/__init__.py" in names
    assert "stormguard/features/replay.py" in names
    # every module of every package folder ships (a sub-package missing from pyproject's list would not)
    folders = {"stormguard": "stormguard", "features": "stormguard/features", "models": "stormguard/models",
               "scoring": "stormguard/scoring", "server": "stormguard/server"}
    missing = sorted(f"{dest}/{path.relative_to(PROJECT_ROOT / folder).as_posix()}"
                     for folder, dest in folders.items() for path in (PROJECT_ROOT / folder).rglob("*.py")
                     if "__pycache__" not in path.parts
                     and f"{dest}/{path.relative_to(PROJECT_ROOT / folder).as_posix()}" not in names)
    assert not missing, f"not in the wheel (add the sub-package to pyproject's packages): {missing}"


def test_import_paths() -> None:
    import stormguard.features.sniff as sniff

    assert Path(sniff.__file__).resolve().parent == PROJECT_ROOT / "features"
    proc = subprocess.run([sys.executable, "-c", "import features"], capture_output=True, text=True,
                          cwd="/", timeout=60)
    assert proc.returncode != 0, "a top-level module 'features' is importable: the package-dir mapping leaks"
