"""The behaviour scorer on the corpus access logs (issue 5, "What must show" 2 and 3).

2. ``logs/iliou-phase1`` holds human sessions only (IP blanked, session id before the UA): after replay →
   features (key ``session``, whole input) → train → score, at most 2 % of the human sessions may fall in the
   ``low`` or ``blocked`` tiers. Checked in-sample (train and score on all sessions, as the issue describes), out of
   sample (train on the annotation ``train`` split, score the ``test`` split) and with the UA model as an input.
3. ``logs/elastic-examples-apache_logs.log`` (unlabelled, real IPs): clients whose most frequent UA names a crawler
   are scored below the median of the other clients; the share is printed (``pytest -s``).

Neither test tunes anything to its data: the model is trained with its defaults, and the tier boundaries come from
the default reputation config through the documented mapping (models/mapping.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stormguard.models.train import load_feature_table, read_labels, train_model

from stormguard.cli import main

pytestmark = [pytest.mark.corpus, pytest.mark.slow]

CRAWLER = re.compile(r"bot|crawl|spider|slurp", re.I)


@pytest.fixture(scope="module")
def ua_model(corpus: Path):
    from stormguard.models.ua import UAModel

    data = pd.read_csv(corpus / "ua" / "ua_dev.csv", dtype=str, keep_default_na=False)
    return UAModel(random_state=0).fit(data["user_agent"].tolist(), data["label"].tolist())


@pytest.fixture(scope="module")
def iliou(corpus: Path) -> pd.DataFrame:
    return load_feature_table([corpus / "logs" / "iliou-phase1" / "data"], key="session", window=None,
                              log_format="iliou")


def _low_share(scores: pd.DataFrame) -> float:
    return float(scores["tier"].isin(["low", "blocked"]).mean())


def test_iliou_humans_cli(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = corpus / "logs" / "iliou-phase1" / "data"
    model = tmp_path / "iliou.skops"
    assert main(["train", str(data), "--log-format", "iliou", "--key", "session", "--window", "0",
                 "-o", str(model)]) == 0
    out = tmp_path / "scores.csv"
    assert main(["score", str(model), str(data), "--log-format", "iliou", "-o", str(out)]) == 0
    scores = pd.read_csv(out, keep_default_na=False)
    assert len(scores) >= 80  # 86 sessions in the corpus copy
    labels = read_labels(corpus / "logs" / "iliou-phase1" / "annotations")
    humans = scores[scores["key"].map(labels).fillna(0.0) == 0.0]  # every session of these logs is human
    share = _low_share(humans)
    capsys.readouterr()
    print(f"iliou: {len(humans)} human sessions, {share:.1%} in low/blocked tiers; "
          f"tiers {scores['tier'].value_counts().to_dict()}")
    assert share <= 0.02


def test_iliou_humans_held_out(iliou: pd.DataFrame) -> None:
    """Out of sample: two folds of sessions (by a hash of the session id; the annotation test split names
    sessions this corpus copy does not hold), each scored by a model trained on the other."""
    import zlib

    fold = iliou["key"].map(lambda k: zlib.crc32(str(k).encode()) % 2).to_numpy()
    parts = []
    for f in (0, 1):
        train, test = iliou[fold != f], iliou[fold == f]
        assert len(train) >= 30 and len(test) >= 30
        parts.append(train_model(train).score_frame(test))
    scores = pd.concat(parts, ignore_index=True)
    assert len(scores) == len(iliou)
    assert _low_share(scores) <= 0.02


def test_iliou_humans_with_ua_model(iliou: pd.DataFrame, ua_model) -> None:
    model = train_model(iliou, ua_model=ua_model)
    scores = model.score_frame(iliou)
    assert "bot_probability" in scores.columns
    assert _low_share(scores) <= 0.02


def _crawler_share(scores: pd.DataFrame, features: pd.DataFrame) -> tuple[float, int]:
    crawler = features["ua_mode"].astype("object").fillna("").map(lambda ua: bool(CRAWLER.search(ua))).to_numpy()
    score = scores["score"].to_numpy()
    median_others = float(np.median(score[~crawler]))
    return float(np.mean(score[crawler] < median_others)), int(crawler.sum())


@pytest.fixture(scope="module")
def apache(corpus: Path) -> pd.DataFrame:
    return load_feature_table([corpus / "logs" / "elastic-examples-apache_logs.log"], key="src_ip", window=None)


def test_apache_crawlers_below_median_with_ua_model(apache: pd.DataFrame, ua_model,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    scores = train_model(apache, ua_model=ua_model).score_frame(apache)
    share, n = _crawler_share(scores, apache)
    print(f"apache log, with UA model: {share:.1%} of {n} crawler clients below the median of the others")
    assert n >= 100
    assert share >= 0.9


def test_apache_crawlers_behaviour_only(apache: pd.DataFrame, capsys: pytest.CaptureFixture[str]) -> None:
    """Without a UA model only behaviour and fingerprint rarity speak; most others score exactly 0 (no
    evidence), so "below the median" means "some evidence against"."""
    scores = train_model(apache).score_frame(apache)
    share, n = _crawler_share(scores, apache)
    print(f"apache log, behaviour only: {share:.1%} of {n} crawler clients below the median of the others")
    assert share >= 0.5
