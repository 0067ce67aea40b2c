"""How well the User-Agent model separates bots from browsers, measured so that memorising cannot pass.

Three views:

- :func:`evaluate_ua`: stratified k-fold cross-validation, the headline numbers (ROC-AUC and the recall of bots at
  a 1% false-positive rate on browsers, the threshold being the 99th percentile of the out-of-fold browser scores).
- :func:`evaluate_ua_grouped`: the same, but UAs that differ only in digits (versions, builds) share a fold, so
  a model cannot score well by recognising a sibling of a training UA.
- :func:`evaluate_ua_by_source`: leave-one-source-out. Each list in ``ua_dev.csv`` has its own style (the same
  crawler family, the same browser generator), so random folds can flatter a model that learns a list's style. Here
  every row is scored by a model trained on no row of its (first-listed) source, and no row sharing that source.
  In this corpus each source holds one class only, so the numbers are pooled over all held-out scores.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from stormguard.models.ua import UAModel, as_bot_labels, normalize_ua

__all__ = ["evaluate_ua", "evaluate_ua_by_source", "evaluate_ua_grouped", "recall_at_fpr", "ua_skeleton"]

TARGET_FPR = 0.01


def recall_at_fpr(y: np.ndarray, score: np.ndarray, fpr: float = TARGET_FPR) -> tuple[float, float, float]:
    """(recall of bots, realised browser FPR, threshold) with the threshold at the browsers' (1 − fpr) quantile.

    A bot counts as caught when its score is strictly above the threshold, so ties with browsers never help.
    """
    y = np.asarray(y)
    score = np.asarray(score, dtype=np.float64)
    browsers, bots = score[y == 0], score[y == 1]
    threshold = float(np.quantile(browsers, 1.0 - fpr)) if len(browsers) else 0.5
    recall = float((bots > threshold).mean()) if len(bots) else float("nan")
    realised = float((browsers > threshold).mean()) if len(browsers) else float("nan")
    return recall, realised, threshold


def _summary(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    recall, realised, threshold = recall_at_fpr(y, score)
    return {"roc_auc": float(roc_auc_score(y, score)), "recall_at_1pct_fpr": recall,
            "fpr_at_threshold": realised, "threshold": threshold}


def _frame(df: pd.DataFrame) -> tuple[list[Any], np.ndarray]:
    missing = {"user_agent", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"labelled UAs need columns user_agent and label; missing {sorted(missing)}")
    return df["user_agent"].tolist(), as_bot_labels(df["label"])


def _cross_validate(df: pd.DataFrame, folds: Any, groups: np.ndarray | None, seed: int,
                    model_params: dict[str, Any]) -> dict[str, Any]:
    uas, y = _frame(df)
    started = time.perf_counter()
    oof = np.full(len(y), np.nan)
    fold_auc: list[float] = []
    for train, test in folds.split(np.zeros(len(y)), y, groups):
        model = UAModel(random_state=seed, **model_params).fit([uas[i] for i in train], y[train])
        oof[test] = model.bot_probability([uas[i] for i in test])
        fold_auc.append(float(roc_auc_score(y[test], oof[test])))
    result: dict[str, Any] = _summary(y, oof)
    result.update({
        "n": int(len(y)), "n_bots": int(y.sum()), "n_browsers": int((y == 0).sum()),
        "n_splits": folds.get_n_splits(), "seed": seed, "fold_roc_auc": fold_auc,
        "seconds": time.perf_counter() - started, "oof": oof,
    })
    return result


def evaluate_ua(df: pd.DataFrame, n_splits: int = 5, seed: int = 0, **model_params: Any) -> dict[str, Any]:
    """Stratified ``n_splits``-fold CV of :class:`UAModel` on ``df`` (columns user_agent, label bot/browser).

    Returns ROC-AUC and recall at 1% FPR over the pooled out-of-fold scores, the per-fold AUCs, counts, the
    out-of-fold scores themselves (``oof``, for plots), and the wall time.
    """
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return _cross_validate(df, folds, None, seed, model_params)


_DIGITS = re.compile(r"[0-9]+")
_NON_LETTERS = re.compile(r"[^a-z]+")


def ua_skeleton(ua: Any) -> str:
    """A UA with case, digits and punctuation removed: UAs that differ only in version numbers share it."""
    return _NON_LETTERS.sub(" ", _DIGITS.sub("", normalize_ua(ua).lower())).strip()


def evaluate_ua_grouped(df: pd.DataFrame, n_splits: int = 5, seed: int = 0, **model_params: Any) -> dict[str, Any]:
    """Like :func:`evaluate_ua`, but UAs sharing a :func:`ua_skeleton` stay in one fold (StratifiedGroupKFold).

    Lists hold many near-duplicates (one Android build string with 100 Chrome versions, a crawler in 20
    releases); random folds put siblings on both sides, which rewards memorising. Grouping by skeleton does not.
    """
    groups = np.array([ua_skeleton(v) for v in df["user_agent"]], dtype=object)
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    result = _cross_validate(df, folds, groups, seed, model_params)
    result["n_groups"] = int(len(set(groups)))
    return result


def _sources(value: Any) -> list[str]:
    return [s.strip() for s in str(value).split(";") if s.strip()] or ["?"]


def evaluate_ua_by_source(df: pd.DataFrame, seed: int = 0, source_column: str = "sources",
                          **model_params: Any) -> dict[str, Any]:
    """Leave-one-source-out: pooled ROC-AUC / recall at 1% FPR and a per-source table (``per_source``).

    A row belongs to the fold of its first-listed source (each row is scored exactly once); the model for that fold
    is trained without any row that lists the source anywhere, so near-duplicates shared by two lists cannot leak.
    """
    uas, y = _frame(df)
    started = time.perf_counter()
    row_sources = [_sources(v) for v in df[source_column]]
    primary = np.array([s[0] for s in row_sources], dtype=object)
    score = np.full(len(y), np.nan)
    rows = []
    for source in sorted(set(primary)):
        test = np.flatnonzero(primary == source)
        train = np.array([i for i, s in enumerate(row_sources) if source not in s])
        if len(np.unique(y[train])) < 2:
            continue
        model = UAModel(random_state=seed, **model_params).fit([uas[i] for i in train], y[train])
        score[test] = model.bot_probability([uas[i] for i in test])
        rows.append({"source": source, "n_test": len(test), "n_train": len(train),
                     "label": "bot" if y[test].mean() > 0.5 else "browser",
                     "mean_bot_probability": float(score[test].mean())})
    scored = ~np.isnan(score)
    result: dict[str, Any] = _summary(y[scored], score[scored])
    threshold = result["threshold"]
    for row in rows:
        sel = primary == row["source"]
        row["flagged_as_bot"] = float((score[sel] > threshold).mean())
    result.update({"n": int(scored.sum()), "per_source": pd.DataFrame(rows), "seconds": time.perf_counter() - started,
                   "scores": score})
    return result
