"""Shared test fixtures: where the reference corpus is, and whether its absence is a skip or a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from redis_server import redis_cluster_fixture  # noqa: F401 - one Redis Cluster per session (issue 18)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def corpus_root() -> Path | None:
    """The reference corpus: $STORMGUARD_CORPUS, else ../shared/corpus beside the project; None when absent.

    When STORMGUARD_CORPUS is set (CI sets it) a missing corpus is an error, not a skip.
    """
    env = os.environ.get("STORMGUARD_CORPUS")
    if env:
        path = Path(env)
        if not path.is_absolute():
            path = (PROJECT_ROOT / path).resolve()
        if not (path / "README.md").exists():
            raise RuntimeError(f"STORMGUARD_CORPUS={env} is set but {path} holds no corpus (no README.md)")
        return path
    default = PROJECT_ROOT.parent / "shared" / "corpus"
    return default if (default / "README.md").exists() else None


@pytest.fixture(scope="session")
def corpus() -> Path:
    root = corpus_root()
    if root is None:
        pytest.skip("reference corpus not found: set STORMGUARD_CORPUS or place it at ../shared/corpus")
    return root
