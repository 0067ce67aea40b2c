"""``stormguard train --content`` (issue 12): the combined recipe (behaviour + content classifier + named rules +
tier knots from leave-one-source-out), on the user's own labelled log and with the corpus' labelled sources.

The corpus test trains with the documented command line and checks that the result is the model
``data/make_model.py --corpus`` builds (same scores on a log neither saw): one recipe, two callers.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stormguard.cli import main

ROOT = Path(__file__).resolve().parent.parent
_PAGES = ["/", "/about", "/blog/post-1", "/blog/post-2", "/shop/item/7", "/contact", "/search?q=shoes"]
_ASSETS = ["/css/site.css", "/js/app.js", "/img/logo.png", "/fonts/a.woff2"]
_PROBES = ["/.env", "/.git/config", "/wp-login.php", "/phpmyadmin/index.php", "/backup.sql", "/admin/", "/config.bak",
           "/cgi-bin/test.cgi", "/index.php?id=1%27%20union%20select%201", "/../../etc/passwd", "/server-status",
           "/old/", "/test.php", "/login.asp"]
_CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"


def _line(ip: str, t: int, path: str, status: int, ua: str, referer: str = "-", method: str = "GET") -> str:
    mm, ss = divmod(t, 60)
    hh, mm = divmod(mm, 60)
    return (f'{ip} - - [17/May/2015:{10 + hh:02d}:{mm:02d}:{ss:02d} +0000] "{method} {path} HTTP/1.1" {status} 512 '
            f'"{referer}" "{ua}"')


def synthetic_site(n_humans: int = 60, n_scanners: int = 40, seed: int = 7) -> tuple[list[str], dict[str, str]]:
    """A small access log of browsing humans (pages with their assets and referers, a few 404s) and scanners (Chrome
    UA, probes mixed with ordinary pages, some of them slow): lines and a ``key -> label`` map."""
    rng = random.Random(seed)
    lines: list[tuple[int, str]] = []
    labels: dict[str, str] = {}
    for i in range(n_humans):
        ip, t = f"10.0.{i // 200}.{i % 200 + 1}", rng.randrange(0, 1800)
        labels[ip] = "human"
        for _ in range(rng.randint(1, 6)):
            page = rng.choice(_PAGES)
            lines.append((t, _line(ip, t, page, 200, _CHROME, "https://example.org/")))
            for asset in rng.sample(_ASSETS, rng.randint(0, 4)):
                lines.append((t + 1, _line(ip, t + 1, asset, 200, _CHROME, f"https://example.org{page}")))
            if rng.random() < 0.1:
                lines.append((t + 2, _line(ip, t + 2, "/favicon.ico", 404, _CHROME)))
            t += rng.randint(5, 120)
    for i in range(n_scanners):
        ip, t = f"172.16.{i // 200}.{i % 200 + 1}", rng.randrange(0, 1800)
        labels[ip] = "abusive"
        for _ in range(rng.randint(3, 25)):
            if rng.random() < 0.6:
                path = rng.choice(_PROBES)
                status = 404 if rng.random() < 0.8 else 403
            else:
                path, status = rng.choice(_PAGES), 200
            method = "HEAD" if rng.random() < 0.1 else "GET"
            lines.append((t, _line(ip, t, path, status, _CHROME, method=method)))
            t += rng.randint(1, 30)
    lines.sort(key=lambda x: x[0])
    return [text for _, text in lines], labels


def test_train_content_on_own_labelled_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without a corpus: the data's labelled clients, in key-grouped folds, are the content model's sources."""
    from stormguard.models.train import load_model

    lines, labels = synthetic_site()
    log = tmp_path / "access.log"
    log.write_text("\n".join(lines + ["this is not a log line"]) + "\n")
    lab = tmp_path / "labels.csv"
    lab.write_text("key,label\n" + "\n".join(f"{k},{v}" for k, v in labels.items()) + "\n")
    out = tmp_path / "m.skops"
    assert main(["train", str(log), "--labels", str(lab), "--content", "--clusters", "3", "-o", str(out),
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "leave-one-source-out over 5 sources" in text and "tier knots (log-odds) saved" in text
    # the malformed last line is counted and located, and training went on
    assert "skipped 1: log line unparseable" in captured.err and f"access.log:{len(lines) + 1}" in captured.err
    model, bundle = load_model(out)
    assert model.content_ is not None and model.rules and model.tier_knots_ is not None
    loso = bundle.metrics["leave_one_source_out"]
    assert loso["sources"] == [f"data-{k}" for k in range(1, 6)]
    assert loso["roc_auc"] >= 0.9 and loso["human_low_or_blocked"] <= 0.05
    assert loso["knot_choice"].startswith("nested")

    # unseen clients of the same kinds: the probing client ranks below the browsing one and is flagged
    fresh, fresh_labels = synthetic_site(n_humans=15, n_scanners=15, seed=99)
    new = tmp_path / "new.log"
    new.write_text("\n".join(fresh) + "\n")
    scores_csv = tmp_path / "s.csv"
    assert main(["score", str(out), str(new), "-o", str(scores_csv)]) == 0
    scores = pd.read_csv(scores_csv, keep_default_na=False)
    y = scores["key"].map(fresh_labels).eq("abusive").to_numpy()
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, -scores["score"].to_numpy()) >= 0.9
    assert scores.loc[~y, "tier"].isin(["low", "blocked"]).mean() <= 0.1


def test_train_content_needs_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines, _ = synthetic_site(n_humans=5, n_scanners=5)
    log = tmp_path / "access.log"
    log.write_text("\n".join(lines) + "\n")
    assert main(["train", str(log), "--content", "-o", str(tmp_path / "m.skops"), "--no-progress"]) == 2
    assert "--labels" in capsys.readouterr().err
    only_humans = tmp_path / "h.csv"
    only_humans.write_text("key,label\n" + "\n".join(f"10.0.0.{i},human" for i in range(1, 6)) + "\n")
    assert main(["train", str(log), "--content", "--labels", str(only_humans), "-o", str(tmp_path / "m.skops"),
                 "--no-progress"]) == 2
    assert "both classes" in capsys.readouterr().err
    assert not (tmp_path / "m.skops").exists()


@pytest.mark.corpus
@pytest.mark.slow
def test_train_corpus_is_the_default_recipe(corpus: Path, tmp_path: Path) -> None:
    """``stormguard ua train ua_dev.csv --features 1024 --components 8 --clusters 8 -o UA`` then ``stormguard train
    <sample> --window 300 --clusters 4 --trees 50 --labels CAST --corpus CORPUS --ua-model UA`` builds the model
    ``data/make_model.py --corpus CORPUS`` builds: same scores, knots and held-out figures."""
    import importlib.util

    from stormguard.models.train import load_feature_table, load_model

    spec = importlib.util.spec_from_file_location("make_model", ROOT / "data" / "make_model.py")
    assert spec is not None and spec.loader is not None
    make_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_model)
    cast = tmp_path / "cast.csv"
    cast.write_text("key,label\n" + "\n".join(f"{k},{'abusive' if v else 'human'}" for k, v in make_model.CAST.items())
                    + "\n")
    by_cli = tmp_path / "cli.skops"
    ua = tmp_path / "ua.skops"
    from stormguard.models.combined import DEFAULT_UA_PARAMS as p

    assert main(["ua", "train", str(corpus / "ua" / "ua_dev.csv"), "--features", str(p["n_features"]),
                 "--components", str(p["n_components"]), "--clusters", str(p["n_clusters"]), "-o", str(ua)]) == 0
    sample = [str(ROOT / "data" / name) for name in make_model.INPUTS]
    assert main(["train", *sample, "--window", "300", "--clusters", "4", "--trees", "50", "--labels", str(cast),
                 "--corpus", str(corpus), "--ua-model", str(ua), "-o", str(by_cli), "--no-progress"]) == 0
    by_script = make_model.build(tmp_path / "script.skops", corpus=corpus)

    a, bundle_a = load_model(by_cli)
    b, bundle_b = load_model(by_script)
    assert a.tier_knots_ == b.tier_knots_
    la, lb = bundle_a.metrics["leave_one_source_out"], bundle_b.metrics["leave_one_source_out"]
    assert la["roc_auc"] == lb["roc_auc"] and la["fold_knots"] == lb["fold_knots"]
    assert {"acunetix", "netsparker", "w3af", "fail2ban", "iliou-humans", "apache-browsers", "data"} <= set(
        la["sources"])
    log = corpus / "logs" / "elastic-examples-apache_logs.log"
    feats = load_feature_table([log], window=300.0, show_progress=False)
    assert a.ua_model_ is not None and b.ua_model_ is not None
    sa, sb = a.score_frame(feats), b.score_frame(feats)
    np.testing.assert_array_equal(sa["score"].to_numpy(), sb["score"].to_numpy())
    assert (sa["tier"].astype(str) == sb["tier"].astype(str)).all()
    # the figures stored in the bundle are the held-out ones with nested knots, and they meet the bar
    assert la["human_low_or_blocked"] <= 0.01 and la["abusive_low_or_blocked"] >= 0.5


def test_ua_evidence_only_where_content_agrees() -> None:
    """With content evidence, a browser UA never raises a client whose requests look abusive, and a bot/script UA
    never lowers one whose requests show nothing against it; where the two agree, the UA speaks."""
    from stormguard.models.mapping import ReputationMapping

    m = ReputationMapping().fit()
    p = np.full(4, 0.5)
    ua_p = np.array([0.01, 0.99, 0.01, 0.99])      # browser-like, bot-like, browser-like, bot-like
    rules = np.array([3.0, 0.0, 0.0, 3.0])         # abusive content, clean, clean, abusive
    ev = m.combine(anomaly_p=p, content_p=np.full(4, 0.1), content_base=0.1, rules=rules, ua_p=ua_p, ua_base=0.5)
    assert ev["ua"][0] == 0.0 and ev["ua"][1] == 0.0  # contradicted by the content: silent
    assert ev["ua"][2] < 0 and ev["ua"][3] > 0        # agrees with it: counted (browser bonus capped)
    assert ev["ua"][2] >= -m.ua_good_cap
    assert ev["score"][3] < ev["score"][0]
