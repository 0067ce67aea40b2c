"""Feature table → float matrix for the unsupervised behaviour model (scaled counts, shares, encodings)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from stormguard.models.behaviour.columns import (
    CATEGORICAL_COLUMNS,
    LOG_COLUMNS,
    SHARE_COLUMNS,
    UA_COLUMNS,
)
from stormguard.models.encoding import FrequencyEncoder, KnownListEncoder
from stormguard.models.frames import numeric_column


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
            cols.append(np.log1p(np.maximum(numeric_column(frame, c), 0.0)))
            names.append(c)
        n_conn = numeric_column(frame, "n_conn")
        with np.errstate(divide="ignore", invalid="ignore"):
            cols.append(np.where(n_conn > 0, numeric_column(frame, "reconnects_10s") / n_conn, np.nan))
            n_closed = numeric_column(frame, "n_closed")
            cols.append(np.where(n_closed > 0, numeric_column(frame, "short_lived_2s") / n_closed, np.nan))
        names += ["reconnect_share", "short_lived_share"]
        for c in SHARE_COLUMNS:
            cols.append(numeric_column(frame, c))
            names.append(c)
        for c in self.ua_columns_:
            cols.append(numeric_column(frame, c))
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

