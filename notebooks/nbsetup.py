"""What every notebook here needs first: where the project and the reference corpus are, and small plots.

Kept beside the notebooks (they run with ``notebooks/`` as the working directory, so ``import nbsetup`` finds it)
so that each notebook's first cell stays short and all three agree on the rules:

- the project root is the folder above ``notebooks/``;
- the corpus is ``$STORMGUARD_CORPUS`` (relative paths are taken from the project root) or ``../shared/corpus``
  beside the project; when ``STORMGUARD_CORPUS`` is set but holds no corpus that is an error, as in the tests;
- without a corpus every notebook falls back to the project's own ``data/`` and says so.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["PROJECT_ROOT", "DATA", "corpus_root", "setup_plots", "fallback_user_agents", "CRAWLER_PATTERN"]


def _project_root() -> Path:
    here = Path.cwd().resolve()
    for candidate in (here.parent, here):
        if (candidate / "data" / "sample.pcap").exists():
            return candidate
    return here.parent


PROJECT_ROOT = _project_root()
DATA = PROJECT_ROOT / "data"

#: Crawler-looking User-Agents (a proxy label for unlabelled logs; the same pattern the corpus-log tests use).
CRAWLER_PATTERN = r"bot|crawl|spider|slurp"


def corpus_root() -> Path | None:
    """The reference corpus, or None when absent (``STORMGUARD_CORPUS`` set but missing raises)."""
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


def setup_plots() -> None:
    """Small PNGs at modest dpi, so committed outputs stay small."""
    import matplotlib

    try:  # inside IPython: PNG only (no duplicate SVG/PDF representations in the saved notebook)
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    except Exception:  # noqa: BLE001 - plain Python: whatever backend is configured
        pass
    matplotlib.rcParams.update({
        "figure.dpi": 72, "savefig.dpi": 72, "figure.figsize": (7.5, 3.2), "font.size": 9,
        "axes.spines.top": False, "axes.spines.right": False,
    })
    pd.set_option("display.max_colwidth", 70)
    pd.set_option("display.width", 160)


_BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.{b}.{p} "
    "Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{w}.{p} "
    "Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (Linux; Android {w}; Pixel {p}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.{b}.{p} "
    "Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS {w}_{p} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/{w}.{p} Mobile/15E148 Safari/604.1",
]
_BOTS = [
    "Mozilla/5.0 (compatible; {n}bot/{w}.{p}; +http://www.{n}.example/bot.html)",
    "{n}-crawler/{w}.{p} (+https://{n}.example/crawler)",
    "python-requests/2.{v}.{p}",
    "curl/7.{v}.{p}",
    "Wget/1.{w}.{p}",
    "Go-http-client/1.1",
    "Java/1.8.0_{v}",
    "{n}Spider/{w}.{p} (+http://{n}.example/spider.htm)",
]
_NAMES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]


def fallback_user_agents(n_per_template: int = 12, seed: int = 0) -> pd.DataFrame:
    """Labelled UAs made from templates (``user_agent``, ``label``), generated here when the corpus is absent.

    Only an illustration that the code runs: templates are far easier to separate than real lists, so numbers
    measured on them say nothing about the model. The real evaluation needs ``ua/ua_dev.csv`` from the corpus.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for label, templates in (("browser", _BROWSERS), ("bot", _BOTS)):
        for template in templates:
            for _ in range(n_per_template):
                rows.append((template.format(v=int(rng.integers(60, 130)), b=int(rng.integers(1000, 7000)),
                                             p=int(rng.integers(0, 9)), w=int(rng.integers(10, 18)),
                                             n=str(rng.choice(_NAMES))), label))
    return pd.DataFrame(rows, columns=["user_agent", "label"]).drop_duplicates("user_agent", ignore_index=True)
