"""Labelled sources from the reference corpus (weak supervision): every training row keeps the name of its source.

Labels come from *where* a row was seen (its origin) or from a documented labelling function (LF) over the
Apache log's clients; every LF is listed in :data:`LABELLING_FUNCTIONS` with what it reads, so an evaluation can
say which labels share a signal with the model's inputs (label leakage) and report results without them.

=====================  =====  ==========================================================================  =========
source                 label  how                                                                         LF reads
=====================  =====  ==========================================================================  =========
acunetix, netsparker,  1      origin: the main client of ``abuse/seyyar-apache-http-logs/<scanner>.log``  (origin)
w3af                          (a vulnerability-scanner run; the few other hosts are left unlabelled)
fail2ban               1      origin: access-log lines that a fail2ban web filter must flag               (origin)
                              (``# failJSON: {... "match": true}``); error-log lines are counted, skipped
iliou-humans           0      origin: sessions of ``logs/iliou-phase1`` annotated ``human``               (origin)
apache-crawlers        1      LF ``crawler_ua``: the client's UA matches a ``ua/crawler-user-agents.json``  UA only
                              pattern (self-declared crawler; the content model never reads the UA)
apache-browsers        0      LF ``asset_browser``: browser UA, fetches static assets, sends a referer,   content!
                              no payload marker, fewer than half 4xx
apache-payload         1      LF ``payload``: a payload marker in a request                               content!
=====================  =====  ==========================================================================  =========

Apache clients that two LFs label differently are dropped and counted as conflicts. The two ``content!`` LFs
read model inputs: :func:`stormguard.models.transfer.leave_one_source_out` therefore also reports the metrics over
the origin-labelled sources only.

Long single-client logs (a scanner run is one address) are cut into tumbling windows, so one source yields many
rows; every row keeps its ``source`` so that splits keep a source's windows together.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["LABELLING_FUNCTIONS", "SCANNERS", "TRAINING_WINDOWS", "LabelledTable", "corpus_sources",
           "crawler_patterns"]

SCANNERS = ("acunetix", "netsparker", "w3af")
#: Window lengths (s) the training rows are computed at: the live window and a shorter one (more rows per scan).
TRAINING_WINDOWS: tuple[float, ...] = (60.0, 300.0)

#: LF name -> (label, what it reads, whether that overlaps the content model's inputs).
LABELLING_FUNCTIONS: dict[str, tuple[float, str, bool]] = {
    "scanner_log": (1.0, "origin: a scanner's access log, its main client", False),
    "fail2ban_match": (1.0, "origin: a fail2ban web-filter fixture line marked match:true", False),
    "iliou_human": (0.0, "origin: an Iliou session annotated human", False),
    "crawler_ua": (1.0, "UA matches a crawler-user-agents.json pattern", False),
    "asset_browser": (0.0, "browser UA + static assets + a referer + no payload + < 50 % 4xx", True),
    "payload": (1.0, "a payload marker (traversal, injection, ...) in a request", True),
}

Progress = Callable[[str], None]


@dataclass
class LabelledTable:
    """Feature rows with ``source``, ``label`` (0 human / 1 abusive) and ``lf`` columns, plus the LF table."""

    features: pd.DataFrame
    lf_table: pd.DataFrame
    skipped: dict[str, int]


def _replay_lines(lines: Sequence[str], name: str, key: str, window: float | None, log_format: str,
                  skipped: dict[str, int]) -> pd.DataFrame:
    from stormguard.features.replay import replay
    from stormguard.models.train import features_from_records

    from stormguard.report import ReplayStats

    with tempfile.TemporaryDirectory(prefix="stormguard-src-") as tmp:
        path = Path(tmp) / f"{name}.log"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        stats = ReplayStats()
        records = replay([path], stats, log_format=log_format, show_progress=False)
    for reason, n in stats.skipped.items():
        skipped[f"{name}: {reason}"] = skipped.get(f"{name}: {reason}", 0) + int(n)
    return features_from_records(records, key=key, window=window)


def _scanner_lines(path: Path) -> list[str]:
    """The upload wraps each line in an extra pair of double quotes: take them off."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line.startswith('"') and line.endswith('""'):
            line = line[1:-1]
        out.append(line)
    return out


#: An access-log line (host ident user [time] "request" ...); fail2ban's error-log fixtures are not requests.
_ACCESS_LINE = re.compile(r'^\S+ \S+ \S+ \[[^\]]+\] "')


def _fail2ban_lines(folder: Path) -> tuple[list[str], int]:
    """Access-log lines marked ``match: true`` (the filter must flag them) and the count of the other labelled
    lines (``match: false``, or not an access-log line: error logs, syslog)."""
    lines: list[str] = []
    negatives = 0
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(text[:-1]):
            if not line.startswith("# failJSON:"):
                continue
            try:
                meta = json.loads(line.split(":", 1)[1])
            except json.JSONDecodeError:
                continue
            if meta.get("match") is True and _ACCESS_LINE.match(text[i + 1]):
                lines.append(text[i + 1])
            else:
                negatives += 1
    return lines, negatives


def crawler_patterns(corpus: Path) -> re.Pattern[str]:
    """One regex of every ``ua/crawler-user-agents.json`` pattern (the ``crawler_ua`` labelling function)."""
    entries = json.loads((corpus / "ua" / "crawler-user-agents.json").read_text(encoding="utf-8"))
    return re.compile("|".join(f"(?:{e['pattern']})" for e in entries))


def _apache_labels(feats: pd.DataFrame, crawler: re.Pattern[str]) -> pd.DataFrame:
    """Apply the Apache LFs; returns the rows that got exactly one label, with ``source``/``label``/``lf``."""
    from stormguard.features.clients.vector import ua_claims_browser

    ua = feats["ua_mode"].astype("object").where(feats["ua_mode"].notna(), "")
    is_crawler = ua.map(lambda u: bool(u) and crawler.search(u) is not None).to_numpy()
    browser = ua.map(lambda u: bool(u) and ua_claims_browser(u)).to_numpy()
    n = feats["n_conn"].to_numpy(dtype=float)
    four = (feats["status_404"] + feats["status_401_403"] + feats["status_4xx_other"]).to_numpy(dtype=float)
    payload = feats["attack_markers"].to_numpy() > 0
    asset = (browser & ~is_crawler & (feats["static_assets"].to_numpy() > 0)
             & (feats["referer_absent"].to_numpy() < n) & ~payload & (four < 0.5 * n))
    votes = {"crawler_ua": is_crawler, "asset_browser": asset, "payload": payload}
    lab = np.full(len(feats), np.nan)
    lf = np.full(len(feats), "", dtype=object)
    conflict = np.zeros(len(feats), dtype=bool)
    for name, hit in votes.items():
        value = LABELLING_FUNCTIONS[name][0]
        clash = hit & ~np.isnan(lab) & (lab != value)
        conflict |= clash
        fresh = hit & np.isnan(lab)
        lab[fresh] = value
        lf[fresh] = name
    lab[conflict] = np.nan
    source = np.where(lf == "crawler_ua", "apache-crawlers", np.where(lf == "payload", "apache-payload",
                                                                      "apache-browsers"))
    out = feats.assign(source=source, label=lab, lf=lf, lf_conflict=conflict)
    for name, hit in votes.items():
        out[f"lf_{name}"] = hit
    return out


def corpus_sources(corpus: str | Path, windows: Sequence[float] = TRAINING_WINDOWS,
                   progress: Progress | None = None) -> LabelledTable:
    """Every labelled source of the corpus as feature rows (one block per window length in ``windows``)."""
    corpus = Path(corpus)
    say = progress or (lambda _m: None)
    skipped: dict[str, int] = {}
    parts: list[pd.DataFrame] = []
    coverage: list[dict[str, object]] = []
    crawler = crawler_patterns(corpus)
    scanner_lines = {s: _scanner_lines(corpus / "abuse" / "seyyar-apache-http-logs" / f"{s}.log") for s in SCANNERS}
    f2b_lines, f2b_negatives = _fail2ban_lines(corpus / "abuse" / "fail2ban-web")
    from stormguard.models.train import load_feature_table

    for window in windows:
        for scanner, lines in scanner_lines.items():
            feats = _replay_lines(lines, scanner, "src_ip", window, "combined", skipped)
            main = feats.groupby("key")["n_conn"].sum().idxmax()
            rows = feats[feats["key"] == main]
            parts.append(rows.assign(source=scanner, label=1.0, lf="scanner_log"))
        feats = _replay_lines(f2b_lines, "fail2ban", "src_ip", window, "auto", skipped)
        parts.append(feats.assign(source="fail2ban", label=1.0, lf="fail2ban_match"))
        iliou = load_feature_table([corpus / "logs" / "iliou-phase1" / "data"], key="session", window=window,
                                   log_format="iliou", show_progress=False)
        parts.append(iliou.assign(source="iliou-humans", label=0.0, lf="iliou_human"))
        apache = load_feature_table([corpus / "logs" / "elastic-examples-apache_logs.log"], key="src_ip",
                                    window=window, show_progress=False)
        labelled = _apache_labels(apache, crawler)
        if window == windows[-1]:
            for name in ("crawler_ua", "asset_browser", "payload"):
                hit = labelled[f"lf_{name}"].to_numpy()
                coverage.append({"lf": name, "label": LABELLING_FUNCTIONS[name][0], "rows": int(hit.sum()),
                                 "coverage": float(hit.mean()),
                                 "conflicts": int((hit & labelled["lf_conflict"].to_numpy()).sum()),
                                 "reads_model_inputs": LABELLING_FUNCTIONS[name][2]})
        kept = labelled[labelled["label"].notna()].drop(columns=[c for c in labelled.columns if c.startswith("lf_")])
        parts.append(kept)
        say(f"window {window:g} s: sources built")
    table = pd.concat(parts, ignore_index=True)
    for name in ("scanner_log", "fail2ban_match", "iliou_human"):
        rows = int((table["lf"] == name).sum())
        coverage.insert(0, {"lf": name, "label": LABELLING_FUNCTIONS[name][0], "rows": rows,
                            "coverage": float(rows / len(table)), "conflicts": 0, "reads_model_inputs": False})
    skipped["fail2ban: match:false lines (not used)"] = f2b_negatives
    return LabelledTable(table.reset_index(drop=True), pd.DataFrame(coverage), skipped)
