"""The supervised content model: what a client asks for → calibrated probability that it is abusive.

Inputs are the request-content window features of :mod:`stormguard.features.clients.content` turned into
scale-free signals (shares of requests, means, rates), each named in :data:`SIGNALS` with the direction in which it
is suspicious and a reason string (what ``score --explain`` prints). The User-Agent is deliberately *not* an
input: a UA is free text the client chooses (two of the three scanners in the corpus send Chrome's), and one of the
labelling functions reads it (:mod:`.sources`); the UA model speaks separately, as capped evidence that can never
raise a client whose content looks abusive (:meth:`stormguard.models.mapping.ReputationMapping.combine`).

Estimator: scikit-learn ``HistGradientBoostingClassifier`` (shallow trees, monotone increasing in every payload
and probe signal, so an unseen scanner with *more* probes never looks *less* abusive), calibrated with a sigmoid
on predictions for held-out *sources* (``CalibratedClassifierCV`` over a ``GroupKFold`` by source).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import GroupKFold
from sklearn.utils.validation import check_is_fitted
from stormguard.models.frames import numeric_column

__all__ = ["SIGNALS", "ContentClassifier", "content_matrix", "explain_signals"]

#: name -> (numerator column, denominator column or None, monotone direction (+1 suspicious when high, 0 free),
#: explanation threshold, reason).
SIGNALS: dict[str, tuple[str, str | None, int, float, str]] = {
    "share_404": ("status_404", "n_status", 1, 0.3, "many 404s: probing paths that do not exist"),
    "share_401_403": ("status_401_403", "n_status", 1, 0.3, "many 401/403: forbidden or auth probing"),
    "share_4xx_other": ("status_4xx_other", "n_status", 1, 0.3, "many other 4xx: malformed requests"),
    "share_5xx": ("status_5xx", "n_status", 1, 0.2, "server errors triggered"),
    "share_3xx": ("status_3xx", "n_status", 0, 2.0, "redirects"),
    "share_2xx": ("status_2xx", "n_status", 0, 2.0, "successful requests"),
    "share_head": ("method_head", "n_method", 0, 0.5, "HEAD requests (existence checks)"),
    "share_options": ("method_options", "n_method", 1, 0.2, "OPTIONS requests"),
    "share_post": ("method_post", "n_method", 0, 0.5, "many POSTs (form fuzzing, login attempts)"),
    "share_other_method": ("method_other", "n_method", 1, 0.05, "unusual HTTP methods (CONNECT, PROPFIND, ...)"),
    "share_http10": ("http10", "n_version", 0, 0.5, "HTTP/1.0, rare from browsers"),
    "distinct_path_share": ("distinct_paths", "n_path_capped", 0, 0.95, "almost every request a new path"),
    "path_depth": ("path_depth_mean", None, 0, 99.0, "path depth"),
    "query_length": ("query_length_mean", None, 0, 120.0, "long query strings"),
    "query_entropy": ("query_entropy_mean", None, 0, 4.5, "high-entropy query strings (encoded payloads)"),
    "share_static": ("static_assets", "n_path", 0, 2.0, "static assets fetched (what browsers do)"),
    "share_script_ext": ("script_ext_paths", "n_path", 1, 0.5, "probes server-side scripts (.php, .asp, .cgi, ...)"),
    "share_backup_ext": ("backup_ext_paths", "n_path", 1, 0.05, "probes backups/config/data files (.bak, .sql, "
                                                                ".env, ...)"),
    "share_dotfile": ("dotfile_paths", "n_path", 1, 0.02, "probes dot-files (.git, .env, .htaccess)"),
    "share_admin": ("admin_paths", "n_path", 1, 0.05, "probes admin/CMS roots (wp-login, phpmyadmin, ...)"),
    "share_long_url": ("long_urls", "n_path", 1, 0.05, "very long URLs (overflow or payload)"),
    "share_attack": ("attack_markers", "n_conn", 1, 0.0, "payload markers (traversal, injection, shellshock, "
                                                          "remote include)"),
    "robots_txt": ("robots_txt", "n_path", 0, 2.0, "fetched robots.txt"),
    "share_no_referer": ("referer_absent", "n_conn", 0, 2.0, "no Referer"),
    "referers": ("distinct_referers", None, 0, 99.0, "distinct referers"),
    "interarrival_cv": ("interarrival_cv", None, 0, 99.0, "timing regularity"),
    "rate": ("conn_rate_per_min", None, 0, 30.0, "high request rate"),
    "requests": ("n_conn", None, 0, 99999.0, "requests in the window"),
    "header_family_mismatch": ("header_family_mismatch_share", None, 1, 0.5,
                               "header set/order contradicts the browser its UA claims"),
}

_LOG = {"referers", "rate", "requests", "query_length"}

#: Signals worded in explanations but not model inputs. How common they are is a property of the *site* or of the
#: window length (a PHP application answers POSTs to .php pages from every visitor; rates and referers depend on
#: the page design), and leave-one-source-out showed that learning them from a few sites does not transfer
#: (ROC-AUC of the classifier 0.62 with them, 0.89 without). What remains is monotone: more probing, more errors,
#: more payloads never make a client look less abusive. ``header_family_mismatch`` is a named rule instead
#: (:data:`RULES`): the labelled sources are access logs, which record no header names, so a classifier could not
#: learn it (always NaN in training).
EXPLAIN_ONLY = frozenset({"share_script_ext", "share_post", "path_depth", "share_2xx", "share_static", "share_3xx",
                          "share_head", "share_http10", "distinct_path_share", "query_length", "query_entropy",
                          "robots_txt", "share_no_referer", "referers", "interarrival_cv", "rate", "requests",
                          "header_family_mismatch"})
INPUTS = tuple(n for n in SIGNALS if n not in EXPLAIN_ONLY)


def _source_columns(X: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every feature column the signals read, as float arrays (absent columns: NaN), each converted once."""
    needed = list(dict.fromkeys([c for num, den, *_ in SIGNALS.values() for c in (num, den)
                                 if c is not None and c != "n_path_capped"] + ["n_path"]))
    present = [c for c in needed if c in X.columns]
    out: dict[str, np.ndarray] = {}
    if len(X) < 4096:  # live micro-batches: one float block costs half of ~30 per-column calls (measured)
        try:
            block = X[present].astype(np.float64).to_numpy()
            out = {c: block[:, i] for i, c in enumerate(present)}
        except (TypeError, ValueError):  # text in a numeric column (a hand-made CSV): coerce below
            out = {}
    if not out:  # large tables: per-column conversion is faster than one consolidated copy
        out = {c: numeric_column(X, c) for c in present}
    for c in needed:
        if c not in out:
            out[c] = np.full(len(X), np.nan)
    return out


def content_matrix(X: pd.DataFrame, names: tuple[str, ...] = tuple(SIGNALS)) -> np.ndarray:
    """The :data:`SIGNALS` of a feature table as a float matrix (NaN where a denominator is 0 or a column absent)."""
    from stormguard.features.clients.vector import PATH_DISTINCT_CAP

    src = _source_columns(X)
    cols = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for name in names:
            num, den = SIGNALS[name][0], SIGNALS[name][1]
            v = src[num]
            if den is not None:
                d = np.minimum(src["n_path"], PATH_DISTINCT_CAP) if den == "n_path_capped" else src[den]
                v = np.where(d > 0, v / np.where(d > 0, d, 1.0), np.nan)
            if name in _LOG:
                v = np.log1p(np.maximum(v, 0.0))
            cols.append(v)
    return np.column_stack(cols) if cols else np.empty((len(X), 0))


def explain_signals(X: pd.DataFrame, top: int = 3) -> np.ndarray:
    """Per row, up to ``top`` named suspicious signals past their threshold, strongest first, worded with their
    values (``"; "``-joined; empty when none). Only rows with a hit are worded one by one."""
    names = [n for n in SIGNALS if SIGNALS[n][2] > 0]
    M = content_matrix(X, tuple(names))
    th = np.array([SIGNALS[n][3] for n in names])
    with np.errstate(invalid="ignore"):
        strength = np.where(np.nan_to_num(M, nan=-np.inf) > th, M / np.maximum(th, 1e-3), -np.inf)
    out = np.full(len(X), "", dtype=object)
    for i in np.flatnonzero(np.isfinite(strength).any(axis=1)):
        order = [j for j in np.argsort(-strength[i])[:top] if np.isfinite(strength[i, j])]
        out[i] = "; ".join(f"{SIGNALS[names[j]][4]} ({names[j]} {M[i, j]:.2f})" for j in order)
    return out


class ContentClassifier(ClassifierMixin, BaseEstimator):
    """Calibrated gradient-boosted trees over :data:`SIGNALS` (see the module docstring).

    ``fit(X, y, groups)``: ``X`` a feature table, ``y`` 0 human / 1 abusive, ``groups`` the source of each row
    (calibration folds hold whole sources out; without groups, stratified folds).
    """

    def __init__(self, max_iter: int = 100, max_depth: int = 3, learning_rate: float = 0.1,
                 l2_regularization: float = 1.0, min_samples_leaf: int = 20, calibration_folds: int = 3,
                 calibration: str = "isotonic",
                 random_state: int | None = 0) -> None:
        self.max_iter = max_iter
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.l2_regularization = l2_regularization
        self.min_samples_leaf = min_samples_leaf
        self.calibration_folds = calibration_folds
        self.calibration = calibration
        self.random_state = random_state

    def _trees(self) -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(
            max_iter=self.max_iter, max_depth=self.max_depth, learning_rate=self.learning_rate,
            l2_regularization=self.l2_regularization, min_samples_leaf=self.min_samples_leaf,
            monotonic_cst=[SIGNALS[n][2] for n in INPUTS], class_weight="balanced",
            random_state=self.random_state)

    def fit(self, X: pd.DataFrame, y: Any, groups: Any = None) -> ContentClassifier:
        M = content_matrix(X, INPUTS)
        y = np.asarray(y, dtype=np.int64)
        self.classes_ = np.array([0, 1])
        self.feature_names_ = list(INPUTS)
        self.n_features_in_ = M.shape[1]
        if groups is not None and len(np.unique(groups)) >= 2:
            folds = min(self.calibration_folds, len(np.unique(groups)))
            cv: Any = list(GroupKFold(n_splits=folds).split(M, y, groups))
            if any(len(np.unique(y[a])) < 2 for a, _ in cv):  # a fold would train on one class
                cv = self.calibration_folds
        else:
            cv = self.calibration_folds
        self.model_ = CalibratedClassifierCV(self._trees(), method=self.calibration, cv=cv, ensemble=False).fit(M, y)
        self.base_rate_ = float(y.mean())
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.predict_proba_signals(content_matrix(X))

    def predict_proba_signals(self, signals: np.ndarray) -> np.ndarray:
        """:meth:`predict_proba` from a :func:`content_matrix` of every signal (so callers compute it once)."""
        check_is_fitted(self, "model_")
        M = signals[:, [list(SIGNALS).index(n) for n in INPUTS]]
        if len(M) < 1024:
            return self.model_.predict_proba(M)
        # windows repeat (one clean page view looks like every other): predict each distinct signal row once
        group = pd.DataFrame(M).groupby(list(range(M.shape[1])), dropna=False, sort=False).ngroup().to_numpy()
        first = np.zeros(int(group.max()) + 1, dtype=np.int64)
        first[group[::-1]] = np.arange(len(group))[::-1]
        return self.model_.predict_proba(M[first])[group]

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.int64)


#: Named rules (evidence as data, like fail2ban filters): name -> (conditions, nats toward abusive, reason), where
#: every condition ``(signal, op, threshold)`` must hold. A hit adds its nats to the client's log-odds; the rules
#: generalise the scanner vocabulary beyond the few labelled sources the classifier learns from (each was checked
#: to fire on at most 1 % of the human windows of the corpus: ``tests/test_content_transfer.py``).
#: Totals are capped at :data:`RULES_CAP` nats.
RULES: dict[str, tuple[tuple[tuple[str, str, float], ...], float, str]] = {
    "payload": ((("share_attack", ">", 0.0),), 3.0, "payload marker in a request"),
    "dotfile_probe": ((("share_dotfile", ">", 0.0),), 2.0, "dot-file probe"),
    "backup_probe": ((("share_backup_ext", ">", 0.0),), 1.5, "backup/config file probe"),
    "admin_probe": ((("share_admin", ">", 0.0),), 1.5, "admin/CMS root probing"),
    "some_404": ((("share_404", ">", 0.1),), 1.0, "over 10 % 404s"),
    "mostly_404": ((("share_404", ">", 0.3),), 1.0, "over 30 % 404s"),
    "auth_wall": ((("share_401_403", ">", 0.3),), 1.0, "over 30 % 401/403"),
    "server_errors": ((("share_5xx", ">", 0.05),), 1.0, "triggers server errors"),
    "head_probe": ((("share_head", ">", 0.05),), 1.5, "HEAD requests (existence checks)"),
    "options_probe": ((("share_options", ">", 0.0),), 1.0, "OPTIONS requests"),
    "odd_method": ((("share_other_method", ">", 0.0),), 1.0, "unusual HTTP method"),
    "long_url": ((("share_long_url", ">", 0.0),), 1.0, "very long URL"),
    "fast_no_assets": ((("rate", ">", float(np.log1p(60.0))), ("share_static", "<", 0.2)), 1.5,
                       "over 60 requests a minute without page assets"),
    # learned from real browser HARs, not from the labelled logs (features/http/families.py; evaluation in
    # models/header_families.py): most requests of the window carry headers no browser of the claimed family sends
    "header_family_lie": ((("header_family_mismatch", ">", 0.5),), 1.5,
                          "headers contradict the browser its UA claims"),
}
RULES_CAP = 6.0


def rule_hits(X: pd.DataFrame | np.ndarray) -> np.ndarray:
    """Boolean matrix: row × :data:`RULES` (in order), True where every condition of the rule holds. ``X`` is a
    feature table or its :func:`content_matrix` of every signal."""
    S = X if isinstance(X, np.ndarray) else content_matrix(X)
    n = len(S)
    M = {name: S[:, i] for i, name in enumerate(SIGNALS)}
    out = np.zeros((n, len(RULES)), dtype=bool)
    for j, (conds, _, _) in enumerate(RULES.values()):
        ok = np.ones(n, dtype=bool)
        for sig, op, th in conds:
            v = M[sig]
            if sig == "share_static":
                v = np.nan_to_num(v, nan=0.0)
            ok &= (v > th) if op == ">" else (v < th)  # NaN compares False: no evidence
        out[:, j] = ok
    return out


def rule_evidence(X: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the summed nats of the :data:`RULES` that fire (capped) and their reasons (``"; "``-joined)."""
    hit = rule_hits(X)
    nats = np.minimum(hit @ np.array([r[1] for r in RULES.values()]), RULES_CAP)
    words = [r[2] for r in RULES.values()]
    code = hit.astype(np.int64) @ (np.int64(1) << np.arange(len(RULES), dtype=np.int64))
    inverse, uniq = pd.factorize(code)  # few distinct combinations: word each once (hashing, no sort)
    texts = np.array(["; ".join(w for j, w in enumerate(words) if int(c) >> j & 1) for c in uniq], dtype=object)
    return nats, texts[inverse] if len(hit) else np.empty(0, dtype=object)
