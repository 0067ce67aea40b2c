"""The reputation model: per-source-kind behaviour models + UA model + score mapping → score table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from stormguard.models.behaviour.model import BehaviourModel
from stormguard.models.behaviour.reasons import reason_strings
from stormguard.models.frames import numeric_column
from stormguard.models.mapping import ReputationMapping


class ReputationModel(BaseEstimator):
    """Per-source-kind behaviour models + optional UA model + the calibrated score mapping.

    ``fit(X, y=None)``: ``X`` a feature table (with ``source_kind`` when it mixes kinds), ``y`` optional labels
    aligned with ``X`` (1 abusive, 0 normal, NaN unknown). Kinds with fewer than ``min_kind_clients`` clients are
    scored by a pooled model fitted on every row (also the model for kinds never seen in training).
    ``ua_model`` is a *fitted* :class:`~stormguard.models.ua.UAModel` (it is used, not refitted).
    """

    def __init__(self, behaviour: BehaviourModel | None = None, mapping: ReputationMapping | None = None,
                 ua_model: Any = None, min_kind_clients: int = 30, content: Any = None,
                 rules: bool = False) -> None:
        self.behaviour = behaviour
        self.mapping = mapping
        self.ua_model = ua_model
        self.min_kind_clients = min_kind_clients
        self.content = content
        self.rules = rules

    # -- UA columns ------------------------------------------------------------------------------------------------
    def add_ua_columns(self, X: pd.DataFrame, cache: Any = None) -> pd.DataFrame:
        """``X`` with ``ua_bot_probability`` and ``ua_distance`` for its ``ua_mode`` (each distinct UA scored once;
        ``cache`` a mutable mapping UA → (probability, distance) reused across calls). No UA model: ``X``."""
        ua = self.ua_model if not hasattr(self, "ua_model_") else self.ua_model_
        if ua is None or "ua_mode" not in X.columns:
            return X
        codes, uniques = pd.factorize(X["ua_mode"].to_numpy(dtype=object, na_value=None), use_na_sentinel=True)
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
        ok = codes >= 0
        col_p = np.full(len(X), np.nan)
        col_d = np.full(len(X), np.nan)
        col_p[ok] = prob[codes[ok]]
        col_d[ok] = dist[codes[ok]]
        # two new columns beside the others (no copy of the whole frame: live micro-batches pay per call)
        X = X.drop(columns=[c for c in ("ua_bot_probability", "ua_distance") if c in X.columns])
        return pd.concat([X, pd.DataFrame({"ua_bot_probability": col_p, "ua_distance": col_d}, index=X.index)],
                         axis=1)

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

    def fit(self, X: pd.DataFrame, y: Any = None, progress: Any = None, groups: Any = None) -> ReputationModel:
        """``groups``: the labelled source of each row (the content model's calibration holds sources out)."""
        self.ua_model_ = self.ua_model
        self.tier_knots_: tuple[float, float] | None = None
        self.content_ = None
        if self.content is not None and y is not None:
            self.fit_content(self.content, X, y, groups, progress)
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

    def fit_content(self, estimator: Any, X: pd.DataFrame, y: Any, groups: Any = None,
                    progress: Any = None) -> ReputationModel:
        """Fit (a clone of) the content ``estimator`` on labelled windows ``X``/``y`` (NaN = unlabelled), which need
        not be the behaviour models' training data: the bundled default learns behaviour from the project's own
        sample and content from the labelled corpus sources."""
        from sklearn.base import clone

        yy = np.asarray(y, dtype=np.float64)
        known = ~np.isnan(yy)
        if len(np.unique(yy[known])) < 2:
            raise ValueError("the content model needs labelled windows of both classes")
        if progress:
            progress(f"fitting the content model on {int(known.sum()):,} labelled windows")
        with _one_thread():
            self.content_ = clone(estimator).fit(X.loc[known].reset_index(drop=True), yy[known].astype(np.int64),
                                                 None if groups is None else np.asarray(groups)[known])
        return self

    def set_tier_knots(self, x_low: float, x_block: float) -> ReputationModel:
        """Log-odds (before the remap) at which held-out humans start being rare: see ``mapping.remap``."""
        self.tier_knots_ = (float(x_low), float(x_block))
        return self

    def content_evidence(self, X: pd.DataFrame) -> dict[str, Any]:
        """The content model's probability and the named rules' nats and words for a feature table."""
        from stormguard.models.content import content_matrix, rule_evidence

        out: dict[str, Any] = {}
        signals = content_matrix(X)
        if getattr(self, "content_", None) is not None:
            with _one_thread():
                p = self.content_.predict_proba_signals(signals)[:, 1]
            # no request target known (TLS-only captures, bare connections): the content model has nothing to say
            has = numeric_column(X, "n_path") > 0
            out["content_p"] = np.where(has, p, self.content_.base_rate_)
            out["content_base"] = self.content_.base_rate_
        if getattr(self, "rules", False):
            out["rules"], out["fired"] = rule_evidence(signals)
        return out

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
        ua_p = numeric_column(X, "ua_bot_probability") if self.ua_base_ is not None else None
        content = self.content_evidence(X) if n else {}
        log_odds = np.zeros(n)
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
                                       listed_bad=listed,
                                       content_p=content["content_p"][rows] if "content_p" in content else None,
                                       content_base=content.get("content_base"),
                                       rules=content["rules"][rows] if "rules" in content else None,
                                       tier_knots=getattr(self, "tier_knots_", None))
            score[rows] = ev["score"]
            log_odds[rows] = ev["log_odds"]
            cluster[rows] = out["cluster"]
            anomaly[rows] = out["anomaly"]
            pval[rows] = out["p_value"]
            names = list(dict.fromkeys(model.profiles_))
            codes = np.array([names.index(p) for p in model.profiles_], dtype=np.int64)[out["cluster"]]
            profile_parts.append((rows, pd.Categorical.from_codes(codes, categories=names)))
            reason_parts.append((rows, reason_strings(out["Z"], model.feature_names_, ev)))
        result: dict[str, Any] = {"key": X["key"].array if "key" in X.columns else np.arange(n).astype(str)}
        if "window_start" in X.columns and X["window_start"].notna().any():
            result["window_start"] = numeric_column(X, "window_start")
        tier_codes, tier_labels = self.mapping_.tier_index(score)
        result.update({"source_kind": kinds, "score": np.round(score, 3),
                       "tier": pd.Categorical.from_codes(tier_codes, categories=list(tier_labels)),
                       "cluster": cluster, "profile": _assemble(profile_parts, n), "anomaly": anomaly,
                       "p_value": pval})
        if ua_p is not None:
            result["bot_probability"] = ua_p
        if "content_p" in content:
            result["content_probability"] = content["content_p"]
        if content:
            result["log_odds"] = log_odds
        reasons = _assemble(reason_parts, n)
        if "fired" in content and n:
            reasons = _join_reasons(content["fired"], reasons)
        result["reasons"] = reasons
        return pd.DataFrame(result)


def _join_reasons(first: Any, second: Any) -> np.ndarray:
    """Row-wise ``first; second`` (either may be empty), each distinct pair joined once."""
    a_codes, a_vals = pd.factorize(np.asarray(first, dtype=object))
    if isinstance(second, pd.Categorical):  # the usual case: codes already there
        b_codes, b_vals = second.codes.astype(np.int64), np.asarray(second.categories, dtype=object)
    else:
        b_codes, b_vals = pd.factorize(np.asarray(second, dtype=object))
    pair = a_codes.astype(np.int64) * (len(b_vals) + 1) + b_codes
    inverse, uniq = pd.factorize(pair)
    texts = np.array(["; ".join(s for s in (str(a_vals[p // (len(b_vals) + 1)]), str(b_vals[p % (len(b_vals) + 1)]))
                                if s) for p in uniq.tolist()], dtype=object)
    return texts[inverse]


_CONTROLLER: Any = None


def _one_thread() -> Any:
    """OpenMP in gradient boosting spins on every core; on a shared machine one thread is several times faster for
    these matrices (two threads measured slower than one under load), and the live scorer must not steal the event
    loop's core."""
    global _CONTROLLER
    if _CONTROLLER is None:  # scanning the loaded libraries costs milliseconds: once per process
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="openmp")


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
