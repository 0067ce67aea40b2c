"""Evaluation that measures transfer: leave-one-source-out (LOSO) over labelled sources, and tier knots from it.

Each labelled source (:mod:`.sources`) is held out in turn: a :class:`ReputationModel` is trained on every other
source and scores the held-out one, so every row's score comes from a model that never saw its source. The pooled
out-of-fold scores give ROC-AUC, PR-AUC, recall at 1 % FPR, Brier score (of the posterior), tier shares per class,
and per-signal importance (permutation of each content signal over the pooled held-out rows). The tier knots
(log-odds at which held-out humans become rarer than 1 % and 0.1 %) are chosen on these held-out scores, never on
rows the model was fitted on, and stored in the final model (:meth:`ReputationModel.set_tier_knots`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["choose_knots", "fit_all", "leave_one_source_out", "signal_importance", "transfer_metrics"]

#: Sources labelled by where they come from, not by a labelling function that reads model inputs (the leakage check).
ORIGIN_SOURCES = ("acunetix", "netsparker", "w3af", "fail2ban", "iliou-humans")

#: Share of held-out human windows allowed past the low / block knots.
HUMAN_LOW_SHARE = 0.005
HUMAN_BLOCK_SHARE = 0.001


def fit_all(train: pd.DataFrame, make_model: Callable[[], Any]) -> Any:
    """``make_model()`` fitted on labelled rows (``label``; ``source`` as groups): the default ``make_model``."""
    return make_model().fit(train, train["label"].to_numpy(dtype=float), groups=train["source"].to_numpy())


def leave_one_source_out(table: pd.DataFrame, make_model: Callable[[pd.DataFrame], Any],
                         progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Out-of-fold score rows (``source``, ``label``, ``log_odds``, ``score``, ``tier``, ``reasons``...).

    ``make_model(train_rows)`` returns a fitted model (see :func:`fit_all`)."""
    parts = []
    for source in sorted(table["source"].unique()):
        held = table["source"] == source
        model = make_model(table.loc[~held].reset_index(drop=True))
        scored = model.score_frame(table.loc[held].reset_index(drop=True))
        scored["source"] = source
        scored["label"] = table.loc[held, "label"].to_numpy()
        scored["ua_browser_share"] = table.loc[held, "ua_browser_share"].to_numpy()
        parts.append(scored)
        if progress:
            progress(f"held out {source}: {int(held.sum())} windows")
    return pd.concat(parts, ignore_index=True)


def choose_knots(oof: pd.DataFrame, floor: float) -> tuple[float, float]:
    """Log-odds quantiles of the held-out human windows, (1 − HUMAN_LOW_SHARE, 1 − HUMAN_BLOCK_SHARE), but never
    below ``floor`` (and the block knot at least 2 nats above the low one): a client without content evidence
    (a TLS-only capture, a live SSE stream) must not reach ``low`` through rarity alone."""
    human = oof.loc[oof["label"] == 0, "log_odds"].to_numpy()
    low = max(float(np.quantile(human, 1 - HUMAN_LOW_SHARE)), floor)
    block = max(float(np.quantile(human, 1 - HUMAN_BLOCK_SHARE)), low + 2.0)
    return low, block


def transfer_metrics(oof: pd.DataFrame, mapping: Any, knots: tuple[float, float] | None) -> dict[str, Any]:
    """Headline metrics of pooled held-out rows, after applying ``knots`` (as the final model will)."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

    y = oof["label"].to_numpy(dtype=int)
    lo = oof["log_odds"].to_numpy(dtype=float)
    if knots is not None:
        lo = mapping.remap(lo, *knots)
    score = mapping.score(lo)
    tier = mapping.tier(score)
    risk = -score
    out: dict[str, Any] = {"n_abusive": int(y.sum()), "n_human": int((y == 0).sum())}
    out["roc_auc"] = float(roc_auc_score(y, lo))
    out["pr_auc"] = float(average_precision_score(y, lo))
    fpr, tpr, _ = roc_curve(y, lo)
    out["recall_at_1pct_fpr"] = float(tpr[fpr <= 0.01].max()) if (fpr <= 0.01).any() else 0.0
    out["brier"] = float(brier_score_loss(y, 1 / (1 + np.exp(-lo))))
    bad = np.isin(tier, ["low", "blocked"])
    out["abusive_low_or_blocked"] = float(bad[y == 1].mean())
    out["human_low_or_blocked"] = float(bad[y == 0].mean())
    browser = (oof["ua_browser_share"].to_numpy(dtype=float) >= 0.5) & (y == 1)
    out["abusive_browser_ua_n"] = int(browser.sum())
    out["abusive_browser_ua_below_neutral"] = float((score[browser] < 0).mean()) if browser.any() else math.nan
    tiers = pd.crosstab(np.where(y == 1, "abusive", "human"), tier, normalize="index")
    out["tier_shares"] = {k: {t: float(v) for t, v in row.items()} for k, row in tiers.iterrows()}
    per = []
    for source, grp in oof.assign(_score=score, _bad=bad, _risk=risk).groupby("source"):
        per.append({"source": source, "label": int(grp["label"].iloc[0]), "n": len(grp),
                    "mean_score": float(grp["_score"].mean()), "low_or_blocked": float(grp["_bad"].mean())})
    out["per_source"] = per
    return out


def signal_importance(model: Any, table: pd.DataFrame, seed: int = 0) -> dict[str, float]:
    """Drop in ROC-AUC of the content probability when one signal's source column is shuffled (in-sample of the
    given table; pass held-out rows for an honest figure)."""
    from sklearn.metrics import roc_auc_score
    from stormguard.models.content import INPUTS, SIGNALS

    if getattr(model, "content_", None) is None:
        return {}
    y = table["label"].to_numpy(dtype=int)
    base = roc_auc_score(y, model.content_.predict_proba(table)[:, 1])
    rng = np.random.default_rng(seed)
    out = {}
    for name in INPUTS:
        col = SIGNALS[name][0]
        shuffled = table.assign(**{col: rng.permutation(table[col].to_numpy())})
        out[name] = float(base - roc_auc_score(y, model.content_.predict_proba(shuffled)[:, 1]))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def loso_for_model(model: Any, table: pd.DataFrame, progress: Callable[[str], None] | None = None
                   ) -> dict[str, Any]:
    """LOSO for a *fitted* bundle's recipe: per held-out source, a copy of ``model`` whose content model is refitted
    on the other sources (behaviour parts as saved), scored without knots; the metrics then apply the bundle's own
    tier knots (chosen when it was built) and, for comparison, knots re-chosen on these held-out scores."""
    import copy

    from stormguard.models.content import ContentClassifier

    template = model.content_ if getattr(model, "content_", None) is not None else ContentClassifier()
    rows = table[table["source"] != "apache-crawlers"].reset_index(drop=True)

    def make(train: pd.DataFrame) -> Any:
        m = copy.deepcopy(model)
        m.tier_knots_ = None
        return m.fit_content(template, train, train["label"].to_numpy(dtype=float), train["source"].to_numpy())

    oof = leave_one_source_out(rows, make, progress)
    saved = getattr(model, "tier_knots_", None)
    origin = oof["source"].isin(ORIGIN_SOURCES)
    return {"bundle_knots": saved, "oof": oof, "metrics": transfer_metrics(oof, model.mapping_, saved),
            "metrics_origin_only": transfer_metrics(oof.loc[origin].reset_index(drop=True), model.mapping_, saved),
            "importance_in_sample": signal_importance(make(rows), rows)}


def format_report(result: dict[str, Any], lf_table: pd.DataFrame | None = None) -> str:
    """The LOSO headline as text: metrics, tier shares per class, per source, LF table, signal importance."""
    m = result["metrics"]
    lines = [f"leave-one-source-out (pooled held-out windows: {m['n_abusive']} abusive, {m['n_human']} human)",
             f"  ROC-AUC {m['roc_auc']:.4f}   PR-AUC {m['pr_auc']:.4f}   recall at 1% FPR {m['recall_at_1pct_fpr']:.4f}"
             f"   Brier {m['brier']:.4f}",
             f"  abusive in low/blocked {m['abusive_low_or_blocked']:.1%}   humans in low/blocked "
             f"{m['human_low_or_blocked']:.2%}   abusive with browser UA below neutral "
             f"{m['abusive_browser_ua_below_neutral']:.1%} (of {m['abusive_browser_ua_n']})",
             "  tier shares per class:"]
    for cls, shares in m["tier_shares"].items():
        lines.append(f"    {cls:8s} " + "  ".join(f"{t} {v:.1%}" for t, v in sorted(shares.items())))
    o = result.get("metrics_origin_only")
    if o is not None:
        lines.append(f"  origin-labelled sources only (no LF that reads model inputs): ROC-AUC {o['roc_auc']:.4f}, "
                     f"PR-AUC {o['pr_auc']:.4f}, abusive low/blocked {o['abusive_low_or_blocked']:.1%}, humans "
                     f"{o['human_low_or_blocked']:.2%}")
    lines.append("  per held-out source:")
    for row in m["per_source"]:
        lines.append(f"    {row['source']:16s} label {row['label']}  n {row['n']:5d}  mean score {row['mean_score']:7.1f}"
                     f"  low/blocked {row['low_or_blocked']:.1%}")
    if lf_table is not None:
        lines.append("  labelling functions:")
        lines += ["    " + line for line in lf_table.to_string(index=False).splitlines()]
    lines.append("  content-signal importance (ROC-AUC drop when shuffled, model fitted on all sources):")
    lines += [f"    {k:20s} {v:+.4f}" for k, v in result["importance_in_sample"].items()]
    return "\n".join(lines)
