"""The UA model's arithmetic for a few User-Agents at a time, without scikit-learn's per-call overhead.

A live micro-batch meets a handful of User-Agents its cache has not seen; through the fitted pipelines (feature
union, SVD, calibrated classifier) one UA costs about 6 ms, almost all of it input validation and dispatch. The
same arithmetic on the fitted attributes costs a fraction of that. :func:`fast_transform` does exactly what
:meth:`stormguard.models.ua.UAModel.transform` does (``tests/test_ua_fast.py`` checks the two agree on real lists)
and returns None for any fitted structure it does not know (another scikit-learn layout, an uncalibrated
classifier), so the caller falls back to the pipelines.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import sparse
from scipy.special import expit

__all__ = ["FAST_MAX", "fast_transform"]

#: Batches up to this many UAs take the fast path (larger ones amortise the pipelines' overhead anyway).
FAST_MAX = 64

#: model -> (the fitted objects the parts were read from, the parts): kept beside the model, never saved with it.
_CACHE: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], dict[str, Any] | None]] = weakref.WeakKeyDictionary()


def _l2_rows(X: sparse.csr_matrix) -> sparse.csr_matrix:
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    norms[norms == 0.0] = 1.0
    return sparse.csr_matrix(sparse.diags(1.0 / norms) @ X)


def _parts(model: Any) -> dict[str, Any] | None:
    """The fitted pieces the fast path reads, or None when the model is not laid out as expected."""
    try:
        steps = model.features_.named_steps
        union = steps["union"]
        chars, hand = dict(union.transformer_list)["chars"], dict(union.transformer_list)["hand"]
        weights = union.transformer_weights or {}
        clf = model.classifier_
        out = {
            "max_chars": steps["normalize"].max_chars, "hash": chars.named_steps["hash"],
            "tfidf": chars.named_steps["tfidf"], "hand": hand.named_steps["hand"], "scale": hand.named_steps["scale"],
            "w_chars": float(weights.get("chars", 1.0)), "w_hand": float(weights.get("hand", 1.0)),
            "support": model.clusterer_.named_steps["active"].get_support(indices=True),
            "components": model.clusterer_.named_steps["svd"].components_,
            "centers": model.clusterer_.named_steps["kmeans"].cluster_centers_,
        }
        tfidf = out["tfidf"]
        if tfidf.norm != "l2" or not tfidf.use_idf or not getattr(model.clusterer_.named_steps["norm"], "norm",
                                                                    "l2") == "l2":
            return None
        if clf is None:
            out["calibrated"] = None
        elif getattr(clf, "method", None) == "sigmoid" and hasattr(clf, "calibrated_classifiers_"):
            pairs = []
            for cc in clf.calibrated_classifiers_:
                cal = cc.calibrators[0]
                pairs.append((np.asarray(cc.estimator.coef_, dtype=np.float64).ravel(),
                              float(np.asarray(cc.estimator.intercept_).ravel()[0]), float(cal.a_), float(cal.b_)))
            out["calibrated"] = pairs
        else:
            return None
        return out
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return None


def fast_transform(model: Any, uas: list[Any], normalize: Callable[[Any, int], str]) -> np.ndarray | None:
    """``[cluster, distance, bot_probability]`` per UA as :meth:`UAModel.transform` computes it, or None.
    ``normalize`` is :func:`stormguard.models.ua.normalize_ua` (passed in: this module does not import ``ua``)."""
    fitted = (getattr(model, "features_", None), getattr(model, "classifier_", None),
              getattr(model, "clusterer_", None))
    entry = _CACHE.get(model)
    if entry is None or any(a is not b for a, b in zip(entry[0], fitted, strict=True)):  # new, or refitted since
        entry = (fitted, _parts(model))
        _CACHE[model] = entry
    parts = entry[1]
    if parts is None:
        return None
    docs = [normalize(v, parts["max_chars"]) for v in uas]
    # n-grams: hashed counts -> sublinear tf -> idf -> l2 rows (TfidfTransformer)
    counts = sparse.csr_matrix(parts["hash"].transform(docs), dtype=np.float64)
    counts.data = np.log(counts.data) + 1.0 if parts["tfidf"].sublinear_tf else counts.data
    counts.data = counts.data * parts["tfidf"].idf_[counts.indices]
    chars = _l2_rows(counts)
    hand = (parts["hand"].transform(docs) - parts["scale"].mean_) / parts["scale"].scale_
    vectors = sparse.hstack([chars * parts["w_chars"], sparse.csr_matrix(hand * parts["w_hand"])], format="csr")
    # clusters: the n-gram columns as float32, the active ones, SVD, l2 rows, cosine to the unit centroids
    part = vectors[:, : model.n_features].astype(np.float32)[:, parts["support"]]
    reduced = np.asarray(part @ parts["components"].T)
    norms = np.sqrt(np.einsum("ij,ij->i", reduced, reduced))  # as sklearn's Normalizer (row_norms), bit for bit
    reduced = reduced / np.where(norms > 0, norms, 1.0)[:, None]
    centers = parts["centers"]
    cnorm = np.linalg.norm(centers, axis=1)
    similarity = reduced @ (centers / np.where(cnorm > 0, cnorm, 1.0)[:, None]).T
    clusters = np.asarray(similarity.argmax(axis=1), dtype=np.int64)
    distances = np.clip((1.0 - similarity[np.arange(len(clusters)), clusters]).astype(np.float64), 0.0, 2.0)
    if parts["calibrated"] is None:
        proba = np.full(len(clusters), np.nan)
    else:
        proba = np.zeros(len(clusters))
        for coef, intercept, a, b in parts["calibrated"]:
            proba += expit(-(a * (vectors @ coef + intercept) + b))
        proba /= len(parts["calibrated"])
    return np.column_stack([clusters.astype(np.float64), distances, proba])
