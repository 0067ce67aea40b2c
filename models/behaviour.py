"""The behaviour model: client feature vectors → profile clusters, anomaly, (optional) bot classifier → reputation.

Input is the per-client feature table of :mod:`stormguard.features.clients.windows` (columns
:data:`stormguard.features.clients.vector.FEATURE_COLUMNS`), optionally with

- ``source_kind`` — which kind of source the rows were computed from (``log``, ``capture``, ``har``, ``live``; see
  :func:`source_family`). A log line is a *request*, a capture row a *connection*: the same number (20 "connections"
  a minute) is ordinary for a browser loading pages and a storm for an SSE client. So one :class:`BehaviourModel`
  is fitted **per source kind** (kinds with too few clients share a pooled model), and each row is scored by the
  model of its kind.
- ``ua_bot_probability`` / ``ua_distance`` — the UA model's outputs for the client's most frequent UA, added by
  :meth:`ReputationModel.add_ua_columns` when a fitted :class:`~stormguard.models.ua.UAModel` is given.

:class:`BehaviourFeatures` turns the table into numbers (log-scaled counts and rates, shares, fingerprint rarity
and known-list flags from :mod:`.encoding`, missing-value indicators); a :class:`BehaviourModel` scales them
(``StandardScaler`` in a ``Pipeline``), clusters them into profiles (``MiniBatchKMeans``; names from the centroid
traits, :func:`name_profiles`), scores rarity with an ``IsolationForest`` (turned into a conformal p-value against
the training clients), and, given labels, fits a calibrated classifier. :class:`ReputationModel` puts the kinds,
the UA model and the :class:`~stormguard.models.mapping.ReputationMapping` together and scores a table into
``key, score, tier, cluster, profile, anomaly, p_value, reasons``.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.cluster import MiniBatchKMeans
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from .encoding import FrequencyEncoder, KnownListEncoder
from .mapping import ReputationMapping

__all__ = [
    "BEHAVIOUR_SCHEMA_VERSION",
    "BehaviourFeatures",
    "BehaviourModel",
    "LiveScorer",
    "PROFILES",
    "ReputationModel",
    "name_profiles",
    "source_family",
]

#: Version of the behaviour feature definition; bundles record it together with the client-feature schema version
#: (:data:`stormguard.features.clients.vector.FEATURE_SCHEMA_VERSION`) and are refused when either changed.
BEHAVIOUR_SCHEMA_VERSION = "behaviour-features/1"

PROFILES = ("steady subscriber", "flapping reconnector", "scraper", "burst")

#: Counts, rates and durations: heavy-tailed, so ``log1p`` before scaling.
LOG_COLUMNS = ("n_conn", "conn_rate_per_min", "reconnects_10s", "short_lived_2s", "mean_interarrival",
               "min_interarrival", "distinct_header_orders", "distinct_uas", "distinct_ja3", "distinct_ja4")
SHARE_COLUMNS = ("ua_missing_share", "ua_browser_share", "tls_library_share", "ua_tls_mismatch_share", "error_share",
                 "header_entropy_mean")
UA_COLUMNS = ("ua_bot_probability", "ua_distance")
CATEGORICAL_COLUMNS = ("ja3_mode", "ja4_mode", "header_order_mode", "ua_mode")
#: Direction in which a feature is suspicious (+1: high is suspicious, -1: low is); used only to word reasons.
_LOW_IS_BAD = {"mean_interarrival", "min_interarrival", "ua_browser_share", "header_entropy_mean"}


def source_family(kind: Any) -> str:
    """Record ``source_kind`` → the population a model is fitted for: ``log`` (any access log, JSON lines),
    ``capture`` (pcap/pcapng), ``har``, ``live``; anything else is ``other``."""
    if kind is None or (isinstance(kind, float) and kind != kind):
        return "other"
    k = str(kind).lower()
    if k.startswith("log") or k == "jsonl":
        return "log"
    if k in ("pcap", "pcapng", "capture"):
        return "capture"
    if k in ("har", "live"):
        return k
    return "other"


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


def _num(frame: pd.DataFrame, col: str) -> np.ndarray:
    if col not in frame.columns:
        return np.full(len(frame), np.nan)
    s = frame[col]
    if s.dtype == np.float64:
        return s.to_numpy(copy=False)
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return s.to_numpy(dtype=np.float64, na_value=np.nan)  # Int64 & co: no per-value parsing
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


class BehaviourFeatures(TransformerMixin, BaseEstimator):
    """Feature table → float matrix (see the module docstring); NaNs become the training median plus a 0/1
    "was missing" column for every feature that had missing values in training."""

    def __init__(self, bad_ja3_paths: Sequence[str] = (), known_ja3_paths: Sequence[str] = (),
                 categorical: Sequence[str] = CATEGORICAL_COLUMNS, use_ua: bool = True) -> None:
        self.bad_ja3_paths = bad_ja3_paths
        self.known_ja3_paths = known_ja3_paths
        self.categorical = categorical
        self.use_ua = use_ua

    def _raw(self, frame: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        cols: list[np.ndarray] = []
        names: list[str] = []
        for c in LOG_COLUMNS:
            cols.append(np.log1p(np.maximum(_num(frame, c), 0.0)))
            names.append(c)
        n_conn = _num(frame, "n_conn")
        with np.errstate(divide="ignore", invalid="ignore"):
            cols.append(np.where(n_conn > 0, _num(frame, "reconnects_10s") / n_conn, np.nan))
            n_closed = _num(frame, "n_closed")
            cols.append(np.where(n_closed > 0, _num(frame, "short_lived_2s") / n_closed, np.nan))
        names += ["reconnect_share", "short_lived_share"]
        for c in SHARE_COLUMNS:
            cols.append(_num(frame, c))
            names.append(c)
        for c in self.ua_columns_:
            cols.append(_num(frame, c))
            names.append(c)
        raw = np.column_stack(cols)
        enc = np.hstack([self.frequency_.transform(frame), self.known_.transform(frame)])
        return np.hstack([raw, enc]), names + list(self.frequency_.get_feature_names_out()) + list(
            self.known_.get_feature_names_out())

    def fit(self, X: pd.DataFrame, y: Any = None) -> BehaviourFeatures:
        self.ua_columns_ = [c for c in UA_COLUMNS if self.use_ua and c in X.columns and X[c].notna().any()]
        self.frequency_ = FrequencyEncoder(columns=tuple(self.categorical)).fit(X)
        self.known_ = KnownListEncoder(bad_paths=tuple(self.bad_ja3_paths),
                                       known_paths=tuple(self.known_ja3_paths)).fit(X)
        raw, names = self._raw(X)
        missing = np.isnan(raw)
        self.missing_columns_ = np.flatnonzero(missing.any(axis=0)).astype(np.int64)
        with np.errstate(all="ignore"):
            med = np.nanmedian(np.where(missing.all(axis=0), 0.0, raw), axis=0) if len(raw) else np.zeros(raw.shape[1])
        self.fill_ = np.nan_to_num(med, nan=0.0)
        self.feature_names_ = names + [f"{names[i]}_missing" for i in self.missing_columns_]
        self.n_features_in_ = len(X.columns)
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        check_is_fitted(self, "fill_")
        raw, _ = self._raw(X)
        miss = np.isnan(raw)
        if miss.any():
            raw = np.where(miss, self.fill_, raw)
        return np.hstack([raw, miss[:, self.missing_columns_].astype(np.float64)])

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "feature_names_")
        return np.asarray(self.feature_names_, dtype=object)


def name_profiles(traits: pd.DataFrame, overall: Mapping[str, float], informative: Mapping[str, bool]) -> list[str]:
    """Name each cluster from its median traits (one row per cluster), by this rule, first match wins:

    1. **scraper** — automated-looking (median ``ua_browser_share`` < 0.5, or median UA bot probability ≥ 0.5;
       a cluster without UAs, e.g. TLS-only captures, is not) and at least as many connections as the median
       client;
    2. **flapping reconnector** — when connection durations are informative in this population (they vary;
       in access logs every request "ends" when it starts, so they do not): median short-lived share ≥ 0.5 and
       reconnect share ≥ 0.5;
    3. **burst** — connection rate ≥ 4 × the median client's and reconnect share ≥ 0.5;
    4. **steady subscriber** — everything else.
    """
    names = []
    for _, t in traits.iterrows():
        bot = t.get("ua_bot_probability", np.nan)
        browser = t["ua_browser_share"]  # NaN when the cluster's clients sent no UA (TLS only): not evidence
        automated = (not np.isnan(browser) and browser < 0.5) or (not np.isnan(bot) and bot >= 0.5)
        if automated and t["n_conn"] >= overall["n_conn"]:
            names.append("scraper")
        elif informative.get("short_lived_share", False) and t["short_lived_share"] >= 0.5 \
                and t["reconnect_share"] >= 0.5:
            names.append("flapping reconnector")
        elif t["conn_rate_per_min"] >= 4 * overall["conn_rate_per_min"] and t["reconnect_share"] >= 0.5:
            names.append("burst")
        else:
            names.append("steady subscriber")
    return names


def _traits(X: pd.DataFrame) -> pd.DataFrame:
    n_conn = _num(X, "n_conn")
    n_closed = _num(X, "n_closed")
    with np.errstate(divide="ignore", invalid="ignore"):
        out = pd.DataFrame({
            "n_conn": n_conn,
            "conn_rate_per_min": _num(X, "conn_rate_per_min"),
            "reconnect_share": np.where(n_conn > 0, _num(X, "reconnects_10s") / n_conn, np.nan),
            "short_lived_share": np.where(n_closed > 0, _num(X, "short_lived_2s") / n_closed, np.nan),
            "ua_browser_share": _num(X, "ua_browser_share"),
            "ua_bot_probability": _num(X, "ua_bot_probability"),
            "error_share": _num(X, "error_share"),
        })
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
        traits = _traits(X)
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


_TAGS = (("anomaly", 1.0, "rare behaviour"), ("ua", 1.0, "bot-like UA"), ("ja3_list", 0.5, "JA3 on a bad list"),
         ("classifier", 1.0, "classifier: abusive"))


def _reasons(Z: np.ndarray, names: Sequence[str], ev: Mapping[str, np.ndarray], threshold: float = 2.0) -> np.ndarray:
    """Per row: the evidence that moved the score (rare behaviour, bot-like UA, listed JA3, classifier), then up
    to two features most deviating in their suspicious direction (scaled value ≥ ``threshold``). Vectorised: rows
    are coded as (evidence bits, feature 1, feature 2) and each distinct code is worded once."""
    n, f = Z.shape
    if n == 0:
        return np.empty(0, dtype=object)
    sign = np.array([-1.0 if nm in _LOW_IS_BAD else 1.0 for nm in names])
    word = [f"{nm} {'low' if s < 0 else 'high'}" for nm, s in zip(names, sign, strict=True)]
    signed = Z * sign
    rows = np.arange(n)
    i1 = signed.argmax(axis=1)
    v1 = signed[rows, i1]
    signed[rows, i1] = -np.inf
    i2 = signed.argmax(axis=1) if f > 1 else i1
    v2 = signed[rows, i2] if f > 1 else np.full(n, -np.inf)
    a = np.where(v1 >= threshold, i1, -1) + 1
    b = np.where(v2 >= threshold, i2, -1) + 1
    bits = np.zeros(n, dtype=np.int64)
    for j, (key, th, _) in enumerate(_TAGS):
        if key in ev:
            bits |= (np.asarray(ev[key]) >= th).astype(np.int64) << j
    code = (bits * (f + 1) + a) * (f + 1) + b
    present = np.zeros(int(code.max()) + 1, dtype=bool)  # a dense "unique": codes are small, no sort needed
    present[code] = True
    uniq = np.flatnonzero(present)
    lookup = np.zeros(len(present), dtype=np.int64)
    lookup[uniq] = np.arange(len(uniq))
    inverse = lookup[code]
    texts = []
    for c in uniq.tolist():
        rest, bb = divmod(c, f + 1)
        bits_c, aa = divmod(rest, f + 1)
        parts = [text for j, (_, _, text) in enumerate(_TAGS) if bits_c >> j & 1]
        parts += [word[x - 1] for x in (aa, bb) if x]
        texts.append("; ".join(parts))
    return pd.Categorical.from_codes(inverse, categories=texts)  # texts are distinct: (bits, a, b) with a != b


class ReputationModel(BaseEstimator):
    """Per-source-kind behaviour models + optional UA model + the calibrated score mapping.

    ``fit(X, y=None)``: ``X`` a feature table (with ``source_kind`` when it mixes kinds), ``y`` optional labels
    aligned with ``X`` (1 abusive, 0 normal, NaN unknown). Kinds with fewer than ``min_kind_clients`` clients are
    scored by a pooled model fitted on every row (also the model for kinds never seen in training).
    ``ua_model`` is a *fitted* :class:`~stormguard.models.ua.UAModel` (it is used, not refitted).
    """

    def __init__(self, behaviour: BehaviourModel | None = None, mapping: ReputationMapping | None = None,
                 ua_model: Any = None, min_kind_clients: int = 30) -> None:
        self.behaviour = behaviour
        self.mapping = mapping
        self.ua_model = ua_model
        self.min_kind_clients = min_kind_clients

    # -- UA columns ------------------------------------------------------------------------------------------------
    def add_ua_columns(self, X: pd.DataFrame, cache: Any = None) -> pd.DataFrame:
        """``X`` with ``ua_bot_probability`` and ``ua_distance`` for its ``ua_mode`` (each distinct UA scored once;
        ``cache`` a mutable mapping UA → (probability, distance) reused across calls). No UA model: ``X``."""
        ua = self.ua_model if not hasattr(self, "ua_model_") else self.ua_model_
        if ua is None or "ua_mode" not in X.columns:
            return X
        values = X["ua_mode"].astype("object").where(X["ua_mode"].notna(), None)
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        prob = np.full(len(uniques), np.nan)
        dist = np.full(len(uniques), np.nan)
        todo = []
        for i, u in enumerate(uniques):
            hit = cache.get(u) if cache is not None else None
            if hit is None:
                todo.append(i)
            else:
                prob[i], dist[i] = hit
        if todo:
            out = ua.transform([uniques[i] for i in todo])
            prob[todo] = out[:, 2]
            dist[todo] = out[:, 1]
            if cache is not None:
                for i in todo:
                    cache[uniques[i]] = (prob[i], dist[i])
        X = X.copy()
        ok = codes >= 0
        col_p = np.full(len(X), np.nan)
        col_d = np.full(len(X), np.nan)
        col_p[ok] = prob[codes[ok]]
        col_d[ok] = dist[codes[ok]]
        X["ua_bot_probability"] = col_p
        X["ua_distance"] = col_d
        return X

    def _ua_base(self) -> float | None:
        ua = self.ua_model_
        if ua is None or getattr(ua, "classifier_", None) is None:
            return None
        sizes = np.asarray(ua.cluster_sizes_, dtype=np.float64)
        share = np.asarray(ua.cluster_bot_share_, dtype=np.float64)
        ok = np.isfinite(share)
        return float((share[ok] * sizes[ok]).sum() / sizes[ok].sum()) if ok.any() else None

    # -- fitting ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _kinds(X: pd.DataFrame) -> np.ndarray:
        if "source_kind" not in X.columns:
            return np.full(len(X), "other", dtype=object)
        return X["source_kind"].astype("object").fillna("other").astype(str).to_numpy(dtype=object)

    def fit(self, X: pd.DataFrame, y: Any = None, progress: Any = None) -> ReputationModel:
        self.ua_model_ = self.ua_model
        self.ua_base_ = self._ua_base()
        self.mapping_ = (self.mapping if self.mapping is not None else ReputationMapping()).fit()
        template = self.behaviour if self.behaviour is not None else BehaviourModel()
        X = self.add_ua_columns(X.reset_index(drop=True))
        yy = None if y is None else np.asarray(y, dtype=np.float64)
        kinds = self._kinds(X)
        names, counts = np.unique(kinds, return_counts=True)
        self.models_: dict[str, BehaviourModel] = {}
        self.kind_counts_ = {str(n): int(c) for n, c in zip(names, counts, strict=True)}
        big = [str(n) for n, c in zip(names, counts, strict=True) if c >= self.min_kind_clients]
        for kind in big:
            rows = kinds == kind
            if progress:
                progress(f"fitting {kind} model on {int(rows.sum()):,} clients")
            self.models_[kind] = _clone(template).fit(X.loc[rows].reset_index(drop=True),
                                                      None if yy is None else yy[rows])
        if len(big) == 1 and len(names) == 1:
            self.fallback_ = big[0]
        else:
            if progress:
                progress(f"fitting pooled model on {len(X):,} clients")
            self.models_["*"] = _clone(template).fit(X, yy)
            self.fallback_ = "*"
        return self

    # -- scoring ---------------------------------------------------------------------------------------------------
    def model_for(self, kind: str) -> BehaviourModel:
        return self.models_.get(kind) or self.models_[self.fallback_]

    def score_frame(self, X: pd.DataFrame, ua_cache: Any = None) -> pd.DataFrame:
        """One row per input row: ``key, source_kind, score, tier, cluster, profile, anomaly, p_value,
        bot_probability, reasons`` (plus ``window_start`` when the input has windows)."""
        check_is_fitted(self, "models_")
        X = self.add_ua_columns(X.reset_index(drop=True), ua_cache)
        n = len(X)
        if "source_kind" in X.columns:
            kind_codes, kind_names = pd.factorize(X["source_kind"], use_na_sentinel=False)
            kind_names = ["other" if (k is None or k != k) else str(k) for k in kind_names]
        else:
            kind_codes, kind_names = np.zeros(n, dtype=np.int64), ["other"]
        kinds = pd.Categorical.from_codes(np.asarray(kind_codes), categories=pd.Index(kind_names).unique()) \
            if len(set(kind_names)) == len(kind_names) else pd.Categorical(np.asarray(kind_names, dtype=object)[
                kind_codes])
        score = np.zeros(n)
        cluster = np.zeros(n, dtype=np.int64)
        anomaly = np.zeros(n)
        pval = np.ones(n)
        target = [k if k in self.models_ else self.fallback_ for k in kind_names]
        if len(set(target)) <= 1:
            groups: list[tuple[str, Any]] = [(target[0] if target else self.fallback_, slice(None))]
        else:
            routed = np.asarray(target, dtype=object)[np.asarray(kind_codes)]
            groups = [(str(k), routed == k) for k in sorted(set(target))]
        ua_p = _num(X, "ua_bot_probability") if self.ua_base_ is not None else None
        profile_parts: list[tuple[Any, Any]] = []
        reason_parts: list[tuple[Any, Any]] = []
        for kind, rows in groups if n else []:
            model = self.model_for(str(kind))
            part = X if isinstance(rows, slice) else X.loc[rows]
            out = model.outputs(part)
            known = model.features_.named_steps["features"].known_
            listed = known.transform(part)[:, 0] if known.bad_ else None
            ev = self.mapping_.combine(anomaly_p=out["p_value"], classifier_p=out.get("classifier_p"),
                                       classifier_base=model.classifier_base_ if model.classifier_ is not None
                                       else None,
                                       ua_p=None if ua_p is None else ua_p[rows], ua_base=self.ua_base_,
                                       listed_bad=listed)
            score[rows] = ev["score"]
            cluster[rows] = out["cluster"]
            anomaly[rows] = out["anomaly"]
            pval[rows] = out["p_value"]
            names = list(dict.fromkeys(model.profiles_))
            codes = np.array([names.index(p) for p in model.profiles_], dtype=np.int64)[out["cluster"]]
            profile_parts.append((rows, pd.Categorical.from_codes(codes, categories=names)))
            reason_parts.append((rows, _reasons(out["Z"], model.feature_names_, ev)))
        result: dict[str, Any] = {"key": X["key"].array if "key" in X.columns else np.arange(n).astype(str)}
        if "window_start" in X.columns and X["window_start"].notna().any():
            result["window_start"] = _num(X, "window_start")
        tier_codes, tier_labels = self.mapping_.tier_index(score)
        result.update({"source_kind": kinds, "score": np.round(score, 3),
                       "tier": pd.Categorical.from_codes(tier_codes, categories=list(tier_labels)),
                       "cluster": cluster, "profile": _assemble(profile_parts, n), "anomaly": anomaly,
                       "p_value": pval})
        if ua_p is not None:
            result["bot_probability"] = ua_p
        result["reasons"] = _assemble(reason_parts, n)
        return pd.DataFrame(result)


def _assemble(parts: list[tuple[Any, Any]], n: int) -> Any:
    """One column from per-group categoricals: the group's own when it covers every row, else an object array."""
    if len(parts) == 1 and isinstance(parts[0][0], slice):
        return parts[0][1]
    out = np.full(n, "", dtype=object)
    for rows, values in parts:
        out[rows] = np.asarray(values, dtype=object)
    return out


def _clone(est: BehaviourModel) -> BehaviourModel:
    from sklearn.base import clone

    return clone(est)


class LiveScorer:
    """Micro-batch scoring for a running server: a fitted :class:`ReputationModel` plus an LRU of UA outputs
    (live clients repeat a few UAs, and the UA model is the costly step). Not saved; build one per process."""

    def __init__(self, model: ReputationModel, ua_cache_size: int = 65536) -> None:
        self.model = model
        self.cache: _LRU = _LRU(ua_cache_size)

    def score(self, vectors: pd.DataFrame | Sequence[Mapping[str, Any]], source_kind: str = "live") -> pd.DataFrame:
        frame = vectors if isinstance(vectors, pd.DataFrame) else pd.DataFrame(list(vectors))
        if "source_kind" not in frame.columns:
            frame = frame.assign(source_kind=source_kind)
        return self.model.score_frame(frame, ua_cache=self.cache)


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        if len(self) > self.size:
            self.popitem(last=False)


def evidence_floor_share(prior_bad: float = 0.02) -> float:
    """The p-value below which the anomaly alone puts a client past ``q_low = 0.5`` (for docs and tests)."""
    target = prior_bad / (1 - prior_bad)
    lo, hi = 1e-12, 1 / math.e
    for _ in range(200):
        mid = (lo + hi) / 2
        if -math.e * mid * math.log(mid) < target:
            lo = mid
        else:
            hi = mid
    return lo
