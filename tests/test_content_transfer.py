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
def test_leave_one_source_out(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stormguard.models.behaviour import BehaviourModel, ReputationModel
    from stormguard.models.content import ContentClassifier
    from stormguard.models.mapping import ReputationMapping
    from stormguard.models.sources import corpus_sources
    from stormguard.models.transfer import choose_knots, fit_all, leave_one_source_out, transfer_metrics

    table = corpus_sources(corpus, windows=(300.0,))
    assert {"acunetix", "netsparker", "w3af", "fail2ban", "iliou-humans", "apache-browsers"} <= set(
        table.features["source"])
    assert set(table.lf_table["lf"]) >= {"crawler_ua", "asset_browser", "payload", "scanner_log"}
    rows = table.features[table.features["source"] != "apache-crawlers"].reset_index(drop=True)

    def make() -> ReputationModel:
        return ReputationModel(behaviour=BehaviourModel(n_clusters=3, n_estimators=30), content=ContentClassifier(),
                               rules=True)

    oof = leave_one_source_out(rows, lambda train: fit_all(train, make))
    assert len(oof) == len(rows)
    mapping = ReputationMapping().fit()
    raw = transfer_metrics(oof, mapping, None)
    tuned = transfer_metrics(oof, mapping, choose_knots(oof, floor=mapping.prior_logit_ + 3.5))
    with capsys.disabled():
        print(f"\nLOSO (300 s windows): ROC-AUC {raw['roc_auc']:.3f}, PR-AUC {raw['pr_auc']:.3f}; with knots: "
              f"abusive low/blocked {tuned['abusive_low_or_blocked']:.1%}, humans {tuned['human_low_or_blocked']:.1%}"
              f", abusive browser-UA below neutral {tuned['abusive_browser_ua_below_neutral']:.1%}")
    assert raw["roc_auc"] > 0.6
    assert tuned["human_low_or_blocked"] <= 0.02
