"""The User-Agent model: character n-gram vectors, clusters, and (with labels) a calibrated bot probability.

A User-Agent is attacker-controlled text, so everything starts with :func:`normalize_ua`, which turns anything
(``None``, bytes, megabyte-long strings, control characters, exploit payloads) into a bounded, printable string.
From there one fitted feature pipeline (:class:`UANormalizer` → hashed character n-grams with TF-IDF weights +
a few scaled :class:`UAHandFeatures`) feeds two heads:

- a clustering (TruncatedSVD → L2 normalisation → MiniBatchKMeans) that gives every UA a cluster id, the cosine
  distance to its centroid (how typical it is of its cluster) and the cluster's make-up (size, share of bots,
  top tokens), useful without any labels;
- a supervised classifier (logistic regression, sigmoid-calibrated by internal cross-validation) giving the
  probability that the UA belongs to a bot, when labels are given to :meth:`UAModel.fit`.

Hashing (rather than a learned vocabulary) keeps the bundle small, makes every n-gram of an unseen UA count, and
makes vectorisation independent of the training order.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.feature_selection import VarianceThreshold
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted
from stormguard.models.ua_fast import FAST_MAX, fast_transform

__all__ = [
    "FEATURE_SCHEMA_VERSION",
    "MAX_UA_CHARS",
    "UAHandFeatures",
    "UAModel",
    "UANormalizer",
    "as_bot_labels",
    "normalize_ua",
]

#: Version of the UA feature definition (normalisation, n-grams, hand features). Bump it whenever a change would
#: make a saved model see different vectors for the same UA; bundles with another version are refused.
FEATURE_SCHEMA_VERSION = "ua-features/1"

#: Real User-Agents are rarely above 300 characters; 512 keeps all of them whole and bounds the cost of hostile ones.
MAX_UA_CHARS = 512

# Control and format characters (C0/C1, DEL, zero-width and bidi controls) become spaces: they carry no meaning in a
# header value and would otherwise split or hide n-grams.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACES = re.compile(r"\s+")


def normalize_ua(value: Any, max_chars: int = MAX_UA_CHARS) -> str:
    """One User-Agent as a bounded, printable string; never raises.

    Why each step: the raw value is truncated *first* (to a few times ``max_chars``) so a megabyte-long header costs
    no more than a normal one; bytes are decoded leniently because logs hold invalid UTF-8; NFKC folds full-width
    and compatibility forms that evade n-grams; control characters become spaces; whitespace runs collapse. Exploit
    payloads (``${jndi:...}``, SQL, shell) are kept as text: they are evidence, and the n-grams and hand features
    see them.
    """
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from pandas
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value[: max_chars * 4]).decode("utf-8", errors="replace")
    elif not isinstance(value, str):
        value = str(value)
    text = value[: max_chars * 4]
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    return text[:max_chars].rstrip()


def _as_list(X: Any) -> list[Any]:
    """Accept a list, tuple, array, Series or one-column DataFrame of UAs (a lone string is one UA, not chars)."""
    if isinstance(X, str | bytes):
        return [X]
    if isinstance(X, pd.DataFrame):
        if "user_agent" in X.columns:
            return X["user_agent"].tolist()
        if X.shape[1] != 1:
            raise ValueError(f"expected one column of User-Agents (or a 'user_agent' column), got {X.shape[1]}")
        return X.iloc[:, 0].tolist()
    if isinstance(X, pd.Series):
        return X.tolist()
    if isinstance(X, np.ndarray):
        if X.ndim > 2 or (X.ndim == 2 and X.shape[1] != 1):
            raise ValueError(f"expected a 1-D sequence of User-Agents, got an array of shape {X.shape}")
        return X.ravel().tolist()
    return list(X)


def as_bot_labels(y: Iterable[Any]) -> np.ndarray:
    """Labels as 0 (browser/human) and 1 (bot): accepts bot/browser (and human/crawler) strings, bools or 0/1."""
    out = []
    for v in y:
        if v is None or (isinstance(v, float) and v != v):
            raise ValueError("missing label: every labelled UA needs bot or browser")
        if isinstance(v, str):
            s = v.strip().lower()
            if s in {"bot", "crawler", "1", "true", "yes"}:
                out.append(1)
            elif s in {"browser", "human", "0", "false", "no"}:
                out.append(0)
            else:
                raise ValueError(f"unknown label {v!r}: expected bot or browser")
        else:
            out.append(int(bool(v)))
    return np.asarray(out, dtype=np.int64)


class _TakesUAStrings:
    """scikit-learn tags of the UA estimators: the input is a list of strings, not a 2-D array; ``_stateless``
    steps need no fit."""

    _stateless = False

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()  # type: ignore[misc]
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        if self._stateless:
            tags.requires_fit = False
        return tags


class UANormalizer(_TakesUAStrings, TransformerMixin, BaseEstimator):
    """Pipeline step applying :func:`normalize_ua`; stateless, so ``fit`` only records the input count."""

    _stateless = True

    def __init__(self, max_chars: int = MAX_UA_CHARS) -> None:
        self.max_chars = max_chars

    def fit(self, X: Any, y: Any = None) -> UANormalizer:
        self.n_features_in_ = 1
        return self

    def transform(self, X: Any) -> list[str]:
        return [normalize_ua(v, self.max_chars) for v in _as_list(X)]



# Hand features: generic properties of how User-Agents are written (RFC 9110 product tokens, browser engine
# conventions, contact URLs that crawler operators add, HTTP libraries' default UAs). They are deliberately coarse
# so they transfer to UAs of sources the model never saw; the n-grams do the fine work.
_ENGINES = re.compile(r"applewebkit/|gecko/|\bgecko\)|trident/|presto/|khtml|blink|edgehtml", re.I)
_BROWSERS = re.compile(r"\b(chrome|firefox|safari|edg|edge|opr|opera|crios|fxios|version|msie|samsungbrowser)/", re.I)
_PLATFORM = re.compile(
    r"\((?:[^)]*)(windows nt|mac os x|macintosh|android|iphone|ipad|linux|x11|cros|windows phone)", re.I
)
_VERSION = re.compile(r"\d+(?:[._]\d+)+")
_PRODUCT = re.compile(r"[A-Za-z][\w.+-]*/[\w.+-]+")
_URL = re.compile(r"https?://|www\.|\.(?:com|org|net|io|html?)\b", re.I)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+|\(at\)|\[at\]", re.I)
_BOT_WORDS = re.compile(r"bot|crawl|spider|slurp|scrap|fetch|archiv|monitor|preview|scan|checker|index", re.I)
_LIBRARIES = re.compile(
    r"curl|wget|python|requests|urllib|aiohttp|httpx|scrapy|java/|okhttp|apache-httpclient|go-http|"
    r"node-fetch|axios|got \(|undici|libwww|lwp::|perl|ruby|php|guzzle|httpie|powershell|winhttp|"
    r"dart|reqwest|headless|phantomjs|selenium|puppeteer|playwright",
    re.I,
)
_EXPLOIT = re.compile(
    r"\$\{|jndi:|<script|javascript:|\.\./|\bunion\s+select\b|\bor\s+1=1|sleep\(|\(\)\s*\{|;\s*(?:wget|curl)\b|"
    r"%[0-9a-f]{2}|\\x[0-9a-f]{2}",
    re.I,
)

_DIGIT = re.compile(r"\d")
_UPPER = re.compile(r"[A-Z]")
_PUNCT = re.compile(r"[^\w\s]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")

HAND_FEATURE_NAMES: tuple[str, ...] = (
    "empty", "log_length", "n_tokens", "n_products", "n_parens", "n_versions", "starts_mozilla", "compatible",
    "engine", "browser_token", "platform", "url", "email", "bot_word", "library", "exploit", "share_digits",
    "share_upper", "share_punct", "share_non_ascii",
)


def _hand_row(ua: str) -> list[float]:
    n = len(ua)
    if n == 0:
        return [1.0] + [0.0] * (len(HAND_FEATURE_NAMES) - 1)
    digits = len(_DIGIT.findall(ua))
    upper = len(_UPPER.findall(ua))
    punct = len(_PUNCT.findall(ua))
    non_ascii = len(_NON_ASCII.findall(ua))
    return [
        0.0,
        float(np.log1p(n)),
        float(np.log1p(len(ua.split()))),
        float(np.log1p(len(_PRODUCT.findall(ua)))),
        float(min(ua.count("("), 5)),
        float(np.log1p(len(_VERSION.findall(ua)))),
        float(ua.startswith("Mozilla/")),
        float("compatible" in ua.lower()),
        float(bool(_ENGINES.search(ua))),
        float(bool(_BROWSERS.search(ua))),
        float(bool(_PLATFORM.search(ua))),
        float(bool(_URL.search(ua))),
        float(bool(_EMAIL.search(ua))),
        float(bool(_BOT_WORDS.search(ua))),
        float(bool(_LIBRARIES.search(ua))),
        float(bool(_EXPLOIT.search(ua))),
        digits / n,
        upper / n,
        punct / n,
        non_ascii / n,
    ]


class UAHandFeatures(_TakesUAStrings, TransformerMixin, BaseEstimator):
    """Twenty interpretable properties of a (normalised) UA; stateless, dense float64 output."""

    _stateless = True

    def fit(self, X: Any, y: Any = None) -> UAHandFeatures:
        self.n_features_in_ = 1
        return self

    def transform(self, X: Any) -> np.ndarray:
        rows = [_hand_row(normalize_ua(ua)) for ua in _as_list(X)]  # idempotent, so safe after UANormalizer
        return np.asarray(rows, dtype=np.float64).reshape(-1, len(HAND_FEATURE_NAMES))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(HAND_FEATURE_NAMES, dtype=object)



_TOKEN = re.compile(r"[a-z][a-z0-9_.-]{1,30}")
_NOT_INFORMATIVE = frozenset({"mozilla", "compatible", "like", "khtml", "gecko", "http", "https", "www", "com",
                              "en-us", "u"})


def _tokens(ua: str) -> list[str]:
    """Word tokens used only to *describe* clusters (top tokens), never as model input."""
    return [t.strip(".-_") for t in _TOKEN.findall(ua.lower()) if t.strip(".-_") not in _NOT_INFORMATIVE]


class UAModel(_TakesUAStrings, ClassifierMixin, TransformerMixin, BaseEstimator):
    """User-Agent clusters and bot probability (``classes_ == [0, 1]``, 1 = bot).

    ``fit(X)`` without labels fits the features and clusters only; ``fit(X, y)`` also fits the calibrated
    classifier and records each cluster's share of bots. ``transform`` gives ``[cluster, distance,
    bot_probability]`` per UA (NaN probability when fitted without labels), the columns the behaviour features use.

    Parameters are the few that matter: n-gram range and hash width of the vectoriser, the weight of the hand
    features against the unit-norm n-gram vector, the SVD size and cluster count, the classifier's inverse
    regularisation ``C``, and ``random_state`` for reproducible clusters and calibration folds.
    """

    def __init__(
        self,
        *,
        max_chars: int = MAX_UA_CHARS,
        ngram_range: tuple[int, int] = (1, 4),
        n_features: int = 2**17,
        hand_weight: float = 0.3,
        n_components: int = 48,
        n_clusters: int = 24,
        C: float = 10.0,
        calibration_cv: int = 3,
        n_top_tokens: int = 8,
        random_state: int | None = 0,
    ) -> None:
        self.max_chars = max_chars
        self.ngram_range = ngram_range
        self.n_features = n_features
        self.hand_weight = hand_weight
        self.n_components = n_components
        self.n_clusters = n_clusters
        self.C = C
        self.calibration_cv = calibration_cv
        self.n_top_tokens = n_top_tokens
        self.random_state = random_state

    # -- building blocks -------------------------------------------------------------------------------------------
    def _feature_pipeline(self) -> Pipeline:
        chars = Pipeline([
            ("hash", HashingVectorizer(analyzer="char_wb", ngram_range=tuple(self.ngram_range), lowercase=True,
                                       n_features=self.n_features, alternate_sign=False, norm=None,
                                       dtype=np.float64)),
            ("tfidf", TfidfTransformer(sublinear_tf=True)),
        ])
        hand = Pipeline([("hand", UAHandFeatures()), ("scale", StandardScaler())])
        union = FeatureUnion([("chars", chars), ("hand", hand)],
                             transformer_weights={"chars": 1.0, "hand": float(self.hand_weight)})
        return Pipeline([("normalize", UANormalizer(self.max_chars)), ("union", union)])

    # -- fitting ---------------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> UAModel:
        """Fit features and clusters on the UAs ``X``; with labels ``y`` (bot/browser or 0/1) the classifier too."""
        uas = _as_list(X)
        if not uas:
            raise ValueError("UAModel.fit needs at least one User-Agent")
        self.n_features_in_ = 1
        self.features_ = self._feature_pipeline()
        vectors = self.features_.fit_transform(uas)
        normalized = self.features_.named_steps["normalize"].transform(uas)

        if len(set(normalized)) < 2:
            raise ValueError("UAModel.fit needs at least two distinct User-Agents")
        n_active = int(VarianceThreshold(0.0).fit(self._char_part(vectors)).get_support().sum())
        n_components = max(1, min(self.n_components, vectors.shape[0] - 1, n_active - 1))
        n_clusters = max(1, min(self.n_clusters, len(set(normalized))))
        # Clusters are made of the n-grams only (hand features would dominate the few SVD directions), restricted
        # to the hash columns that occur in training (VarianceThreshold) so the SVD works on ~40k columns, not 2**17.
        self.clusterer_ = Pipeline([
            ("active", VarianceThreshold(0.0)),
            ("svd", TruncatedSVD(n_components=n_components, algorithm="arpack", random_state=self.random_state)),
            ("norm", Normalizer()),
            ("kmeans", MiniBatchKMeans(n_clusters=n_clusters, random_state=self.random_state, n_init=3,
                                       batch_size=1024)),
        ])
        self.clusterer_.fit(self._char_part(vectors))
        clusters, distances = self._clusters(vectors)
        self.cluster_sizes_ = np.bincount(clusters, minlength=n_clusters).astype(np.int64)
        self.cluster_mean_distance_ = np.array(
            [distances[clusters == k].mean() if self.cluster_sizes_[k] else np.nan for k in range(n_clusters)])
        self.cluster_top_tokens_ = self._top_tokens(normalized, clusters, n_clusters)

        if y is None:
            self.classifier_ = None
            self.classes_ = np.array([0, 1])
            self.cluster_bot_share_ = np.full(n_clusters, np.nan)
            return self
        labels = as_bot_labels(y)
        if len(labels) != len(uas):
            raise ValueError(f"{len(uas)} User-Agents but {len(labels)} labels")
        self.classes_ = np.array([0, 1])
        if len(np.unique(labels)) < 2:
            raise ValueError("labels need both classes (bot and browser) to fit the classifier")
        cv = min(self.calibration_cv, int(np.bincount(labels).min()))
        base = LogisticRegression(C=self.C, class_weight="balanced", max_iter=2000, solver="liblinear",
                                  dual=True, random_state=self.random_state)
        if cv >= 2:
            self.classifier_ = CalibratedClassifierCV(base, method="sigmoid", cv=cv)
        else:  # too few examples of a class to calibrate: the plain logistic output is the best we have
            self.classifier_ = base
        self.classifier_.fit(vectors, labels)
        self.cluster_bot_share_ = np.array(
            [labels[clusters == k].mean() if self.cluster_sizes_[k] else np.nan for k in range(n_clusters)])
        return self

    def _char_part(self, vectors: sparse.spmatrix) -> sparse.csr_matrix:
        """The n-gram columns of the feature union's output (they come first, the hand features last).

        float32 is plenty for clustering and halves the SVD components, the bulk of a saved bundle.
        """
        return sparse.csr_matrix(vectors)[:, : self.n_features].astype(np.float32)

    def _clusters(self, vectors: sparse.spmatrix) -> tuple[np.ndarray, np.ndarray]:
        reduced = self.clusterer_[:-1].transform(self._char_part(vectors))
        kmeans: MiniBatchKMeans = self.clusterer_.named_steps["kmeans"]
        centers = kmeans.cluster_centers_
        norms = np.linalg.norm(centers, axis=1)
        unit = centers / np.where(norms > 0, norms, 1.0)[:, None]
        similarity = reduced @ unit.T
        clusters = np.asarray(similarity.argmax(axis=1), dtype=np.int64)
        distances = 1.0 - similarity[np.arange(len(clusters)), clusters]
        return clusters, np.clip(distances.astype(np.float64), 0.0, 2.0)

    def _top_tokens(self, normalized: Sequence[str], clusters: np.ndarray, n_clusters: int) -> list[list[str]]:
        counters: list[Counter[str]] = [Counter() for _ in range(n_clusters)]
        for ua, k in zip(normalized, clusters, strict=True):
            counters[k].update(set(_tokens(ua)))
        # Ties broken by the token itself: set order depends on PYTHONHASHSEED, and a saved model must describe
        # its clusters the same way in every process.
        return [[t for t, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[: self.n_top_tokens]]
                for c in counters]

    # -- inference -------------------------------------------------------------------------------------------------
    def _vectors(self, X: Any) -> sparse.spmatrix:
        check_is_fitted(self, "features_")
        return self.features_.transform(_as_list(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Columns ``[P(browser), P(bot)]``; needs a model fitted with labels."""
        check_is_fitted(self, "features_")
        if self.classifier_ is None:
            raise ValueError("this UAModel was fitted without labels: it gives clusters, not bot probabilities")
        uas = _as_list(X)
        if not uas:  # scikit-learn refuses empty batches; an empty micro-batch is normal for a server
            return np.empty((0, 2))
        return self.classifier_.predict_proba(self._vectors(uas))

    def predict(self, X: Any) -> np.ndarray:
        """1 for bot, 0 for browser, at probability 0.5 (use :meth:`bot_probability` to pick your own threshold)."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.int64)

    def bot_probability(self, X: Any) -> np.ndarray:
        return self.predict_proba(X)[:, 1]

    def cluster(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """Cluster id and cosine distance to that cluster's centroid (0 = typical, toward 1 = atypical)."""
        out = self.transform(X)
        return out[:, 0].astype(np.int64), out[:, 1]

    def transform(self, X: Any) -> np.ndarray:
        """``[cluster, distance, bot_probability]`` per UA, float64 (probability NaN without a classifier)."""
        uas = _as_list(X)
        if not uas:
            check_is_fitted(self, "features_")
            return np.empty((0, 3))
        if len(uas) <= FAST_MAX:  # live micro-batches: the same arithmetic without the pipelines' overhead
            fast = fast_transform(self, uas, normalize_ua)
            if fast is not None:
                return fast
        vectors = self._vectors(uas)
        clusters, distances = self._clusters(vectors)
        if self.classifier_ is not None:
            proba = self.classifier_.predict_proba(vectors)[:, 1]
        else:
            proba = np.full(len(clusters), np.nan)
        return np.column_stack([clusters.astype(np.float64), distances, proba])

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(["ua_cluster", "ua_distance", "ua_bot_probability"], dtype=object)

    def describe(self, X: Any) -> pd.DataFrame:
        """A table per UA: ``bot_probability``, ``cluster``, ``distance`` (the columns ``stormguard ua score`` adds)."""
        out = self.transform(X)
        return pd.DataFrame({"bot_probability": out[:, 2], "cluster": out[:, 0].astype(np.int64),
                             "distance": out[:, 1]})

    def cluster_summary(self) -> pd.DataFrame:
        """The make-up of each cluster seen in training: size, share of bots, mean distance, top tokens."""
        check_is_fitted(self, "features_")
        return pd.DataFrame({
            "cluster": np.arange(len(self.cluster_sizes_)),
            "size": self.cluster_sizes_,
            "bot_share": self.cluster_bot_share_,
            "mean_distance": self.cluster_mean_distance_,
            "top_tokens": [" ".join(t) for t in self.cluster_top_tokens_],
        })

