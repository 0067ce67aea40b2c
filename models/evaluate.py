"""Evaluating a behaviour scorer against labels: ranking, thresholds, tiers, clusters (and an optional SVG plot).

Everything is computed on the *score* (lower = more suspicious) so what is measured is what the server enforces:
``risk = −score``. Thresholds are score boundaries: by default the ``low`` tier boundary, the block score and 0,
"flagged at t" meaning ``score < t`` (``score ≤ block_score`` for the block boundary, as the store does).
With labels of one class only (e.g. known humans) ranking metrics are undefined; the false-positive rates per
threshold and the tier table still say how many of them would be hurt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["evaluate_scores", "write_svg_plot"]


def evaluate_scores(scores: pd.DataFrame, y: np.ndarray, thresholds: Sequence[float],
                    block_score: float) -> dict[str, Any]:
    """Metrics for a score table (``score``, ``tier``, ``profile``, ``cluster``, ``anomaly`` columns) and labels
    ``y`` aligned with it (1 abusive, 0 normal, NaN unknown; unknown rows are left out)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=np.float64)
    known = ~np.isnan(y)
    s = scores.loc[known].reset_index(drop=True)
    yk = y[known].astype(np.int64)
    score = s["score"].to_numpy(dtype=np.float64)
    out: dict[str, Any] = {"n": int(len(yk)), "n_bad": int(yk.sum()), "n_good": int((yk == 0).sum()),
                           "n_unlabelled": int((~known).sum())}
    two = len(np.unique(yk)) == 2
    out["roc_auc"] = float(roc_auc_score(yk, -score)) if two else math.nan
    out["roc_auc_anomaly"] = float(roc_auc_score(yk, s["anomaly"])) if two else math.nan
    rows = []
    for t in thresholds:
        flagged = score <= t if t == block_score else score < t
        tp = int((flagged & (yk == 1)).sum())
        fp = int((flagged & (yk == 0)).sum())
        fn = int((~flagged & (yk == 1)).sum())
        rows.append({"threshold": float(t), "flagged": int(flagged.sum()),
                     "precision": tp / (tp + fp) if tp + fp else math.nan,
                     "recall": tp / (tp + fn) if tp + fn else math.nan,
                     "fpr": fp / int((yk == 0).sum()) if (yk == 0).any() else math.nan})
    out["thresholds"] = rows
    label_name = np.where(yk == 1, "abusive", "normal")
    out["confusion"] = pd.crosstab(s["tier"].to_numpy(), label_name, rownames=["tier"], colnames=["label"])
    per = pd.DataFrame({"cluster": s["cluster"], "profile": s["profile"], "source_kind": s.get("source_kind", "-"),
                        "bad": yk, "score": score})
    out["clusters"] = per.groupby(["source_kind", "cluster", "profile"]).agg(
        n=("bad", "size"), bad_share=("bad", "mean"), mean_score=("score", "mean"),
        min_score=("score", "min")).reset_index()
    out["low_or_blocked_share_of_normal"] = float(
        s["tier"].isin(["low", "blocked"]).to_numpy()[yk == 0].mean()) if (yk == 0).any() else math.nan
    return out


def write_svg_plot(path: str | Path, scores: pd.DataFrame, y: np.ndarray, bounds: Sequence[float]) -> Path:
    """A small dependency-free SVG: score histograms per label with the tier boundaries (and, with both classes,
    the ROC curve). Written by hand so that evaluation needs no plotting library."""
    y = np.asarray(y, dtype=np.float64)
    score = scores["score"].to_numpy(dtype=np.float64)
    W, H, pad = 640, 300, 40
    bins = np.linspace(-100, 100, 41)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * 2 if _two(y) else W}" height="{H}" '
             'font-family="sans-serif" font-size="11">']

    def x_of(v: float) -> float:
        return pad + (v + 100) / 200 * (W - 2 * pad)

    hists = {}
    for lab, colour in ((0.0, "#2b7bba"), (1.0, "#d7301f")):
        sel = score[y == lab]
        if len(sel):
            hists[lab] = (np.histogram(sel, bins)[0] / len(sel), colour)
    top = max((h.max() for h, _ in hists.values()), default=1.0) or 1.0
    for lab, (h, colour) in hists.items():
        pts = " ".join(f"{x_of(b):.1f},{H - pad - v / top * (H - 2 * pad):.1f}"
                       for b, v in zip((bins[:-1] + bins[1:]) / 2, h, strict=True))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>')
        parts.append(f'<text x="{W - pad - 80}" y="{pad + 14 * lab}" fill="{colour}">'
                     f'{"abusive" if lab else "normal"} (n={int((y == lab).sum())})</text>')
    for b in bounds:
        parts.append(f'<line x1="{x_of(b):.1f}" x2="{x_of(b):.1f}" y1="{pad}" y2="{H - pad}" stroke="#888" '
                     'stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{x_of(b) + 2:.1f}" y="{pad - 4}">{b:g}</text>')
    parts.append(f'<line x1="{pad}" x2="{W - pad}" y1="{H - pad}" y2="{H - pad}" stroke="#000"/>')
    parts.append(f'<text x="{W / 2 - 40}" y="{H - 10}">score (share of clients per bin)</text>')
    if _two(y):
        from sklearn.metrics import roc_curve

        known = ~np.isnan(y)
        fpr, tpr, _ = roc_curve(y[known].astype(int), -score[known])
        pts = " ".join(f"{W + pad + f * (W - 2 * pad):.1f},{H - pad - t * (H - 2 * pad):.1f}"
                       for f, t in zip(fpr, tpr, strict=True))
        parts.append(f'<polyline fill="none" stroke="#000" stroke-width="2" points="{pts}"/>')
        parts.append(f'<text x="{W + W / 2 - 30}" y="{H - 10}">ROC (FPR → TPR)</text>')
    parts.append("</svg>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _two(y: np.ndarray) -> bool:
    return len(np.unique(y[~np.isnan(y)])) == 2
