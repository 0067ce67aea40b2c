"""Request-content evidence (features/clients/content.py) and the labelled-source transfer evaluation (issue 12).

The vocabulary test checks that the generalised scanner-path kinds cover a large share of SecLists' probe list while
hitting few requests of the ordinary Apache log (they were derived from counts, not copied). The LOSO test runs the
leave-one-source-out evaluation over the corpus sources (without the Apache crawlers) and checks the ranking is
better than chance and that held-out humans rarely fall into low/blocked; the measured figures are printed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from stormguard.features.clients.content import PATH_VALUES, method_class, path_evidence, status_class


def test_path_evidence_kinds() -> None:
    v = dict(zip(PATH_VALUES, path_evidence("/cgi-bin/a.cgi?f=..%2f..%2fetc%2fpasswd"), strict=True))
    assert v["attack_marker"] == 1 and v["admin_root"] == 1 and v["script_ext"] == 1 and v["path_depth"] == 2
    assert dict(zip(PATH_VALUES, path_evidence("/.git/config"), strict=True))["dotfile"] == 1
    assert dict(zip(PATH_VALUES, path_evidence("/.well-known/acme"), strict=True))["dotfile"] == 0
    assert dict(zip(PATH_VALUES, path_evidence("/db.sql.gz"), strict=True))["backup_ext"] == 1
    assert dict(zip(PATH_VALUES, path_evidence("/index.php~"), strict=True))["backup_ext"] == 1
    plain = dict(zip(PATH_VALUES, path_evidence("/css/site.css?v=2"), strict=True))
    assert plain["static_asset"] == 1 and plain["attack_marker"] == 0 and plain["query_length"] == 3
    assert method_class("PROPFIND") == "other" and method_class("GET") is None and method_class("head") == "head"
    assert [status_class(s) for s in (200, 302, 403, 404, 418, 503, 101)] == [0, 1, 2, 3, 4, 5, None]


@pytest.mark.corpus
def test_scanner_vocabulary_generalises(corpus: Path) -> None:
    probes = [p.strip() for p in (corpus / "abuse" / "seclists" / "quickhits.txt").read_text(
        encoding="utf-8", errors="replace").splitlines() if p.strip()]
    probe_kinds = ("script_ext", "backup_ext", "dotfile", "admin_root", "attack_marker")
    idx = [PATH_VALUES.index(k) for k in probe_kinds]

    def hit(path: str) -> bool:
        v = path_evidence(path if path.startswith("/") else "/" + path)
        return any(v[i] > 0 for i in idx)

    probe_share = np.mean([hit(p) for p in probes])
    import re

    log = (corpus / "logs" / "elastic-examples-apache_logs.log").read_text(encoding="utf-8", errors="replace")
    paths = re.findall(r'"[A-Z]+ (\S+) HTTP', log)
    ordinary_share = np.mean([hit(p) for p in paths])
    print(f"probe kinds: {probe_share:.1%} of quickhits.txt, {ordinary_share:.1%} of the Apache log's requests")
    assert probe_share >= 0.55
    assert ordinary_share <= 0.05


@pytest.mark.corpus
@pytest.mark.slow
def test_evaluate_loso_headline(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``stormguard evaluate data/default-model.skops --loso CORPUS``: every source held out in turn."""
    import json

    from stormguard.cli import main

    out = tmp_path / "loso.json"
    bundle = Path(__file__).resolve().parent.parent / "data" / "default-model.skops"
    assert main(["evaluate", str(bundle), "--loso", str(corpus), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "leave-one-source-out" in text and "labelling functions" in text and "per held-out source" in text
    doc = json.loads(out.read_text())
    m = doc["metrics"]
    held = doc["importance_held_out"]  # measured on unseen sources: the probe signals carry the ranking
    assert set(held) and max(held.values()) > 0.02 and max(held, key=held.get) in {"share_404", "share_attack"}
    assert doc["fold_knots"] and doc["metrics_bundle_knots"] is not None
    sources = {row["source"] for row in m["per_source"]}
    assert {"acunetix", "netsparker", "w3af", "fail2ban", "iliou-humans", "apache-browsers"} <= sources
    with capsys.disabled():
        print(f"\nLOSO: ROC-AUC {m['roc_auc']:.3f}, PR-AUC {m['pr_auc']:.3f}, abusive low/blocked "
              f"{m['abusive_low_or_blocked']:.1%}, humans {m['human_low_or_blocked']:.2%}, abusive browser-UA below "
              f"neutral {m['abusive_browser_ua_below_neutral']:.1%}; origin-only ROC-AUC "
              f"{doc['metrics_origin_only']['roc_auc']:.3f}")
    # the issue-12 targets this model meets on held-out sources (ROC-AUC >= 0.95 is not met: see the README)
    assert m["roc_auc"] >= 0.9 and doc["metrics_origin_only"]["roc_auc"] >= 0.8
    assert m["abusive_low_or_blocked"] >= 0.5
    assert m["human_low_or_blocked"] <= 0.01
    assert m["abusive_browser_ua_below_neutral"] >= 0.8


def test_score_explain(tmp_path: Path) -> None:
    """``score --explain`` adds each client's top content signals; a probing client names its probes."""
    import pandas as pd

    from stormguard.cli import main

    log = tmp_path / "a.log"
    lines = [f'10.0.0.9 - - [17/May/2015:10:05:{i:02d} +0000] "GET /{p} HTTP/1.1" 404 0 "-" "Mozilla/5.0"'
             for i, p in enumerate([".git/config", ".env", "wp-login.php", "backup.sql", "admin/", "x?id=1%27%20or"
                                    "%201=1"])]
    lines.append('10.0.0.1 - - [17/May/2015:10:05:00 +0000] "GET /index.html HTTP/1.1" 200 10 "-" "Mozilla/5.0"')
    log.write_text("\n".join(lines) + "\n")
    out = tmp_path / "s.csv"
    bundle = Path(__file__).resolve().parent.parent / "data" / "default-model.skops"
    assert main(["score", str(bundle), str(log), "--explain", "-o", str(out)]) == 0
    scores = pd.read_csv(out, keep_default_na=False).set_index("key")
    assert "dot-files" in scores.loc["10.0.0.9", "explain"] and scores.loc["10.0.0.1", "explain"] == ""
    assert "payload marker" in scores.loc["10.0.0.9", "reasons"]
    assert scores.loc["10.0.0.9", "score"] < scores.loc["10.0.0.1", "score"]
    assert scores.loc["10.0.0.9", "tier"] in ("low", "blocked")


@pytest.mark.corpus
def test_rules_rarely_fire_on_humans(corpus: Path) -> None:
    """Every named rule fires on at most 1 % of the human windows of the corpus (Iliou sessions, Apache browsers)
    and some rule fires on most scanner windows: the rules are evidence, not noise."""
    from stormguard.models.content import RULES, rule_hits
    from stormguard.models.sources import corpus_sources

    rows = corpus_sources(corpus, windows=(300.0,)).features
    hits = rule_hits(rows)
    human = (rows["label"] == 0).to_numpy()
    scanner = rows["source"].isin(["acunetix", "netsparker", "w3af"]).to_numpy()
    for j, name in enumerate(RULES):
        assert hits[human, j].mean() <= 0.01, name
    assert hits[scanner].any(axis=1).mean() >= 0.7
