"""Evaluation that measures transfer: leave-one-source-out (LOSO) over labelled sources, and tier knots from it.

Each labelled source (:mod:`.sources`) is held out in turn: a :class:`ReputationModel` is trained on every other
source and scores the held-out one, so every row's score comes from a model that never saw its source. The pooled
out-of-fold scores give ROC-AUC, PR-AUC, recall at 1 % FPR, Brier score (of the posterior), tier shares per class,
and per-signal importance (permutation of each content signal over the pooled held-out rows, each scored by the
model that never saw its source: :func:`heldout_importance`). The tier knots
(log-odds at which held-out humans become rarer than 1 % and 0.1 %) are chosen on these held-out scores, never on
rows the model was fitted on, and stored in the final model (:meth:`ReputationModel.set_tier_knots`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["choose_knots", "fit_all", "heldout_importance", "leave_one_source_out", "nested_loso",
           "signal_importance", "transfer_metrics"]

#: Sources labelled by where they come from, not by a labelling function that reads model inputs (the leakage check).
ORIGIN_SOURCES = ("acunetix", "netsparker", "w3af", "fail2ban", "iliou-humans")

#: Share of held-out human windows allowed past the low / block knots.
HUMAN_LOW_SHARE = 0.005
HUMAN_BLOCK_SHARE = 0.001
#: The low knot sits at least this far above the prior: anomaly, behaviour classifier and content classifier
#: (<= 1 nat each) alone, without a named rule or a bad UA, never put a client in the low tier.
KNOT_FLOOR_NATS = 3.5


def fit_all(train: pd.DataFrame, make_model: Callable[[], Any]) -> Any:
    """``make_model()`` fitted on labelled rows (``label``; ``source`` as groups): the default ``make_model``."""
    return make_model().fit(train, train["label"].to_numpy(dtype=float), groups=train["source"].to_numpy())


def leave_one_source_out(table: pd.DataFrame, make_model: Callable[[pd.DataFrame], Any],
                         progress: Callable[[str], None] | None = None,
                         models: dict[str, Any] | None = None) -> pd.DataFrame:
    """Out-of-fold score rows (``source``, ``label``, ``log_odds``, ``score``, ``tier``, ``reasons``...).

    ``make_model(train_rows)`` returns a fitted model (see :func:`fit_all`); ``models``, when given, receives the
    model of each held-out source (for :func:`heldout_importance`)."""
    parts = []
    for source in sorted(table["source"].unique()):
        held = table["source"] == source
        model = make_model(table.loc[~held].reset_index(drop=True))
        if models is not None:
            models[source] = model
        scored = model.score_frame(table.loc[held].reset_index(drop=True))
        scored["source"] = source
        scored["label"] = table.loc[held, "label"].to_numpy()
        scored["ua_browser_share"] = table.loc[held, "ua_browser_share"].to_numpy()
        parts.append(scored)
        if progress:
            progress(f"held out {source}: {int(held.sum())} windows")
    return pd.concat(parts, ignore_index=True)


def nested_loso(table: pd.DataFrame, make_model: Callable[[pd.DataFrame], Any], floor: float, mapping: Any,
                progress: Callable[[str], None] | None = None, models: dict[str, Any] | None = None
                ) -> pd.DataFrame:
    """Leave-one-source-out with the tier knots chosen *inside* each training fold (nested), so that the reported
    tier shares never use the held-out source to place the knots.

    For each held-out source ``S`` the scores come from ``make_model(all but S)`` (as in
    :func:`leave_one_source_out`); the knots applied to them come from an inner leave-one-source-out over the other
    sources: each ``T != S`` scored by ``make_model(all but S and T)``, :func:`choose_knots` on those inner held-out
    humans (a pair whose removal leaves one class gives no inner fold; a source left without any inner held-out
    human gets the ``floor``). One model per pair of sources serves two inner folds (``S`` held out scoring ``T`` and the reverse), so
    ``k`` sources cost ``k + k(k-1)/2`` fits. Returns the out-of-fold rows of :func:`leave_one_source_out` with
    ``log_odds_raw`` (before knots), ``knot_low``/``knot_block`` (the fold's knots) and ``log_odds`` remapped by
    them; pass it to :func:`transfer_metrics` with ``knots=None``."""
    sources = sorted(table["source"].unique())
    inner: dict[tuple[str, str], pd.DataFrame] = {}  # (outer S, inner T) -> T scored without S and T
    for i, s in enumerate(sources):
        for t in sources[i + 1:]:
            pair = table["source"].isin([s, t])
            if table.loc[~pair, "label"].nunique() < 2:  # no class left to learn from: no inner fold here
                continue
            model = make_model(table.loc[~pair].reset_index(drop=True))
            for held in (s, t):
                rows = table.loc[table["source"] == held].reset_index(drop=True)
                inner[(t if held == s else s, held)] = pd.DataFrame(
                    {"label": rows["label"].to_numpy(), "log_odds": model.score_frame(rows)["log_odds"].to_numpy()})
        if progress:
            progress(f"nested: inner folds without {s} done")
    oof = leave_one_source_out(table, make_model, progress, models)
    oof["log_odds_raw"] = oof["log_odds"].to_numpy(dtype=float)
    low = np.empty(len(oof))
    block = np.empty(len(oof))
    for s in sources:
        parts = [inner[(s, t)] for t in sources if (s, t) in inner]
        knots = choose_knots(pd.concat(parts, ignore_index=True), floor) if parts else (floor, floor + 2.0)
        rows = (oof["source"] == s).to_numpy()
        low[rows], block[rows] = knots
    oof["knot_low"], oof["knot_block"] = low, block
    lo = oof["log_odds_raw"].to_numpy(dtype=float)
    out = np.empty(len(oof))
    for kl, kb in set(zip(low.tolist(), block.tolist(), strict=True)):
        rows = (low == kl) & (block == kb)
        out[rows] = mapping.remap(lo[rows], kl, kb)
    oof["log_odds"] = out
    return oof


def choose_knots(oof: pd.DataFrame, floor: float) -> tuple[float, float]:
    """Log-odds quantiles of the held-out human windows, (1 − HUMAN_LOW_SHARE, 1 − HUMAN_BLOCK_SHARE), but never
    below ``floor`` (and the block knot at least 2 nats above the low one): a client without content evidence
    (a TLS-only capture, a live SSE stream) must not reach ``low`` through rarity alone."""
    human = oof.loc[oof["label"] == 0, "log_odds"].to_numpy()
    if not len(human):  # no human held out (e.g. an inner fold of abusive sources only): the floor alone
        return floor, floor + 2.0
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
        classes = grp["label"].unique()
        row = {"source": source, "label": int(classes[0]) if len(classes) == 1 else "mixed", "n": len(grp),
               "mean_score": float(grp["_score"].mean()), "low_or_blocked": float(grp["_bad"].mean())}
        if len(classes) > 1:  # a source with both classes (the user's own labelled data): each class's share
            row.update({"n_abusive": int((grp["label"] == 1).sum()),
                        "abusive_low_or_blocked": float(grp.loc[grp["label"] == 1, "_bad"].mean()),
                        "human_low_or_blocked": float(grp.loc[grp["label"] == 0, "_bad"].mean())})
        per.append(row)
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


def heldout_importance(models: dict[str, Any], table: pd.DataFrame, seed: int = 0) -> dict[str, float]:
    """Drop in the pooled held-out ROC-AUC of the content probability when one input signal's source column is
    shuffled across all rows: every source's rows are scored by the model that did not see that source (the
    ``models`` of :func:`leave_one_source_out`), so the importance is measured on unseen sources."""
    from sklearn.metrics import roc_auc_score
    from stormguard.models.content import INPUTS, SIGNALS

    if not models or any(getattr(m, "content_", None) is None for m in models.values()):
        return {}
    y = table["label"].to_numpy(dtype=int)
    masks = {s: (table["source"] == s).to_numpy() for s in models}

    def pooled(frame: pd.DataFrame) -> float:
        p = np.empty(len(frame))
        for s, rows in masks.items():
            p[rows] = models[s].content_.predict_proba(frame.loc[rows].reset_index(drop=True))[:, 1]
        return float(roc_auc_score(y, p))

    base = pooled(table)
    rng = np.random.default_rng(seed)
    out = {}
    for name in INPUTS:
        col = SIGNALS[name][0]
        if col not in table.columns:
            continue
        out[name] = base - pooled(table.assign(**{col: rng.permutation(table[col].to_numpy())}))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def loso_for_model(model: Any, table: pd.DataFrame, progress: Callable[[str], None] | None = None
                   ) -> dict[str, Any]:
    """LOSO for a *fitted* bundle's recipe: per held-out source, a copy of ``model`` whose content model is refitted
    on the other sources (behaviour parts as saved), scored without knots. The headline (``metrics``) places the
    tier knots by :func:`nested_loso` (chosen inside each training fold: honest); ``metrics_bundle_knots`` applies
    the bundle's own knots, which were chosen on these same held-out scores when it was built (optimistic, for
    comparison)."""
    import copy

    from stormguard.models.content import ContentClassifier

    template = model.content_ if getattr(model, "content_", None) is not None else ContentClassifier()
    rows = table[table["source"] != "apache-crawlers"].reset_index(drop=True)

    def make(train: pd.DataFrame) -> Any:
        m = copy.deepcopy(model)
        m.tier_knots_ = None
        return m.fit_content(template, train, train["label"].to_numpy(dtype=float), train["source"].to_numpy())

    mapping = model.mapping_
    models: dict[str, Any] = {}
    oof = nested_loso(rows, make, mapping.prior_logit_ + KNOT_FLOOR_NATS, mapping, progress, models)
    result = loso_result(oof, mapping, getattr(model, "tier_knots_", None), signal_importance(make(rows), rows))
    result["importance_held_out"] = heldout_importance(models, rows)
    return result


def loso_result(oof: pd.DataFrame, mapping: Any, bundle_knots: tuple[float, float] | None,
                importance: dict[str, float]) -> dict[str, Any]:
    """Metrics of :func:`nested_loso` rows: nested knots (headline), origin-labelled sources only, and the given
    ``bundle_knots`` applied to the same held-out scores (optimistic comparison)."""
    origin = oof["source"].isin(ORIGIN_SOURCES).to_numpy()
    raw = oof.assign(log_odds=oof["log_odds_raw"])
    folds = {s: [float(g["knot_low"].iloc[0]), float(g["knot_block"].iloc[0])] for s, g in oof.groupby("source")}
    out: dict[str, Any] = {"bundle_knots": None if bundle_knots is None else list(bundle_knots), "oof": oof,
                           "fold_knots": folds, "metrics": transfer_metrics(oof, mapping, None),
                           "metrics_origin_only": None, "importance_in_sample": importance}
    if oof.loc[origin, "label"].nunique() == 2:
        out["metrics_origin_only"] = transfer_metrics(oof.loc[origin].reset_index(drop=True), mapping, None)
    if bundle_knots is not None:
        out["metrics_bundle_knots"] = transfer_metrics(raw, mapping, bundle_knots)
    return out


def source_line(row: dict[str, Any]) -> str:
    """One held-out source of :func:`transfer_metrics`' ``per_source`` as a line."""
    line = (f"{row['source']:16s} label {row['label']!s:5s}  n {row['n']:5d}  mean score {row['mean_score']:7.1f}  "
            f"low/blocked {row['low_or_blocked']:.1%}")
    if "n_abusive" in row:
        line += (f" (abusive {row['abusive_low_or_blocked']:.1%} of {row['n_abusive']}, human "
                 f"{row['human_low_or_blocked']:.1%} of {row['n'] - row['n_abusive']})")
    return line


def format_report(result: dict[str, Any], lf_table: pd.DataFrame | None = None) -> str:
    """The LOSO headline as text: metrics, tier shares per class, per source, LF table, signal importance."""
    m = result["metrics"]
    lines = [f"leave-one-source-out (pooled held-out windows: {m['n_abusive']} abusive, {m['n_human']} human; "
             "tier knots chosen inside each training fold)",
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
    b = result.get("metrics_bundle_knots")
    if b is not None:
        kl, kb = result["bundle_knots"]
        lines.append(f"  with the bundle's own knots ({kl:.2f}, {kb:.2f}; chosen on these same held-out scores, "
                     f"optimistic): abusive low/blocked {b['abusive_low_or_blocked']:.1%}, humans "
                     f"{b['human_low_or_blocked']:.2%}, browser-UA abusive below neutral "
                     f"{b['abusive_browser_ua_below_neutral']:.1%}")
    knots = result.get("fold_knots", {})
    lines.append("  per held-out source (knots low/block of its fold, log-odds):")
    for row in m["per_source"]:
        k = knots.get(row["source"])
        kk = f"  knots {k[0]:5.2f}/{k[1]:5.2f}" if k else ""
        lines.append(f"    {source_line(row)}{kk}")
    if lf_table is not None:
        lines.append("  labelling functions:")
        lines += ["    " + line for line in lf_table.to_string(index=False).splitlines()]
    held = result.get("importance_held_out")
    if held:
        lines.append("  content-signal importance (drop in the held-out ROC-AUC of the content classifier when the signal "
                     "is shuffled; each source scored by the model that never saw it):")
        lines += [f"    {k:20s} {v:+.4f}" for k, v in held.items()]
    else:
        lines.append("  content-signal importance (ROC-AUC drop when shuffled, model fitted on all sources):")
        lines += [f"    {k:20s} {v:+.4f}" for k, v in result["importance_in_sample"].items()]
    return "\n".join(lines)
