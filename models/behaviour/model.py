"""One population's unsupervised behaviour model: scaled features → profile clusters + isolation-forest anomaly
(+ a calibrated classifier when labels are given)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.cluster import MiniBatchKMeans
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from stormguard.models.behaviour.features import BehaviourFeatures
from stormguard.models.behaviour.profiles import cluster_traits, name_profiles

_THREADS = max(1, min(2, os.cpu_count() or 1))


def _avg_path_length(n: np.ndarray) -> np.ndarray:
    """c(n): the average path length of an unsuccessful search in a binary search tree of n points (Liu et al.
    2008), as in scikit-learn: 0 for n ≤ 1, 1 for n = 2, 2·H(n−1) − 2(n−1)/n above."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    two = n == 2
    big = n > 2
    out[two] = 1.0
    nb = n[big]
    out[big] = 2.0 * (np.log(nb - 1.0) + np.euler_gamma) - 2.0 * (nb - 1.0) / nb
    return out



class BehaviourModel(BaseEstimator):
    """One population's model: scaled features → clusters + isolation-forest anomaly (+ classifier with labels).

    ``anomaly_reference_`` keeps up to ``reference_size`` quantiles of the training clients' anomaly scores, from
    which :meth:`p_values` gives each client the share of training clients at least as anomalous (a conformal
    p-value; exact for training sets up to that size, a quantile approximation above).
    """

    def __init__(self, n_clusters: int = 6, n_estimators: int = 100, max_samples: int = 256,
                 bad_ja3_paths: Sequence[str] = (), known_ja3_paths: Sequence[str] = (), use_ua: bool = True,
                 classifier_C: float = 1.0, reference_size: int = 4096, random_state: int | None = 0) -> None:
        self.n_clusters = n_clusters
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.bad_ja3_paths = bad_ja3_paths
        self.known_ja3_paths = known_ja3_paths
        self.use_ua = use_ua
        self.classifier_C = classifier_C
        self.reference_size = reference_size
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, y: Any = None) -> BehaviourModel:
        """Fit on the feature table ``X``; ``y`` (0 normal / 1 abusive, NaN unlabelled) fits the classifier on the
        labelled rows when both classes occur."""
        if len(X) < 2:
            raise ValueError("BehaviourModel.fit needs at least two clients")
        self.features_ = Pipeline([
            ("features", BehaviourFeatures(self.bad_ja3_paths, self.known_ja3_paths, use_ua=self.use_ua)),
            ("scale", StandardScaler()),
        ])
        Z = self.features_.fit_transform(X)
        self.feature_names_ = list(self.features_.named_steps["features"].get_feature_names_out())
        n_distinct = len(np.unique(np.round(Z, 9), axis=0)) if len(Z) <= 20000 else len(Z)
        k = max(1, min(self.n_clusters, n_distinct))
        self.kmeans_ = MiniBatchKMeans(n_clusters=k, random_state=self.random_state, n_init=3,
                                       batch_size=4096).fit(Z)
        self.isoforest_ = IsolationForest(n_estimators=self.n_estimators, max_samples=min(self.max_samples, len(Z)),
                                          random_state=self.random_state).fit(Z)
        self._compile_forest()
        anomaly = self._anomaly(Z)
        self.n_train_ = int(len(Z))
        if len(anomaly) <= self.reference_size:
            self.anomaly_reference_ = np.sort(anomaly)
        else:
            self.anomaly_reference_ = np.quantile(anomaly, np.linspace(0, 1, self.reference_size))
        labels = self.kmeans_.labels_
        traits = cluster_traits(X)
        overall = traits.median(skipna=True).fillna(0.0)
        informative = {c: bool(traits[c].nunique(dropna=True) > 1) for c in traits.columns}
        per = traits.groupby(labels).median().reindex(range(k))
        keep_nan = ["ua_browser_share", "ua_bot_probability"]
        per = per.fillna({c: overall[c] for c in per.columns if c not in keep_nan})
        self.profiles_ = name_profiles(per, overall.to_dict(), informative)
        self.cluster_sizes_ = np.bincount(labels, minlength=k).astype(np.int64)
        self.cluster_traits_ = {c: per[c].to_numpy(dtype=np.float64) for c in per.columns}
        self.classifier_ = None
        self.classifier_base_ = float("nan")
        if y is not None:
            y = np.asarray(y, dtype=np.float64)
            known = ~np.isnan(y)
            yk = y[known].astype(np.int64)
            if known.sum() and len(np.unique(yk)) == 2:
                Zc = np.column_stack([Z[known], anomaly[known]])
                cv = int(min(3, np.bincount(yk).min()))
                base = LogisticRegression(C=self.classifier_C, max_iter=2000)
                self.classifier_ = CalibratedClassifierCV(base, method="sigmoid", cv=cv) if cv >= 2 else base
                self.classifier_.fit(Zc, yk)
                self.classifier_base_ = float(yk.mean())
        return self

    def _compile_forest(self) -> None:
        """Per tree, the isolation depth credited to each leaf (path length + c(leaf size) − 1), as scikit-learn's
        ``IsolationForest`` computes it, so scoring can call each tree's ``apply`` directly: same numbers, without
        the per-tree dispatch cost that dominates small (live) batches."""
        forest = self.isoforest_
        self.leaf_depth_ = []
        for tree in forest.estimators_:
            t = tree.tree_
            depth = np.asarray(t.compute_node_depths(), dtype=np.float64)  # root = 1
            self.leaf_depth_.append(depth + _avg_path_length(t.n_node_samples) - 1.0)
        self.forest_denominator_ = float(len(forest.estimators_) * _avg_path_length(
            np.array([float(forest.max_samples_)]))[0])

    def _anomaly(self, Z: np.ndarray) -> np.ndarray:
        """Isolation-forest anomaly score (= −``IsolationForest.score_samples``; higher = rarer)."""
        X32 = np.ascontiguousarray(Z, dtype=np.float32)
        trees = [e.tree_ for e in self.isoforest_.estimators_]
        n = len(X32)

        def depth_sum(lo: int, hi: int) -> np.ndarray:
            acc = np.zeros(n)
            for i in range(lo, hi):
                acc += self.leaf_depth_[i][trees[i].apply(X32)]
            return acc

        if n >= 20_000 and _THREADS > 1 and len(trees) > 1:  # tree.apply releases the GIL
            from concurrent.futures import ThreadPoolExecutor

            cuts = np.linspace(0, len(trees), _THREADS + 1).astype(int)
            with ThreadPoolExecutor(_THREADS) as pool:
                depths = sum(pool.map(lambda ab: depth_sum(*ab), zip(cuts[:-1], cuts[1:], strict=True)))
        else:
            depths = depth_sum(0, len(trees))
        if self.forest_denominator_ == 0:
            return np.ones(n)
        return 2.0 ** (-depths / self.forest_denominator_)

    # -- inference -------------------------------------------------------------------------------------------------
    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """The scaled feature matrix."""
        check_is_fitted(self, "features_")
        return self.features_.transform(X)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Cluster (profile) id per client."""
        return self.kmeans_.predict(self.transform(X))

    def score_samples(self, X: pd.DataFrame) -> np.ndarray:
        """Anomaly score (higher = rarer), the negated isolation-forest ``score_samples``."""
        return self._anomaly(self.transform(X))

    def p_values(self, anomaly: np.ndarray) -> np.ndarray:
        """Share of training clients at least as anomalous (``(1 + count) / (1 + n)``)."""
        ref = self.anomaly_reference_
        at_least = len(ref) - np.searchsorted(ref, anomaly, side="left")
        return (1.0 + at_least) / (1.0 + len(ref))

    def outputs(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        """Everything the mapping and the score table need, from one pass over the features."""
        Z = self.transform(X)
        d = self.kmeans_.transform(Z)
        cluster = d.argmin(axis=1)
        anomaly = self._anomaly(Z)
        out = {"Z": Z, "cluster": cluster, "cluster_distance": d[np.arange(len(Z)), cluster], "anomaly": anomaly,
               "p_value": self.p_values(anomaly)}
        if self.classifier_ is not None and len(Z):
            out["classifier_p"] = self.classifier_.predict_proba(np.column_stack([Z, anomaly]))[:, 1]
        return out

    def cluster_summary(self) -> pd.DataFrame:
        check_is_fitted(self, "profiles_")
        frame = pd.DataFrame({"cluster": np.arange(len(self.profiles_)), "profile": self.profiles_,
                              "size": self.cluster_sizes_})
        for c, v in self.cluster_traits_.items():
            frame[c] = v
        return frame

