"""The combined model recipe of issue 12: behaviour models + content classifier + named rules + held-out tier knots.

One recipe, two callers, so that a user's retrained model is built exactly as the bundled default:

- ``stormguard train DATA --content [--labels L] [--corpus CORPUS]`` (:mod:`stormguard.models.cli`);
- ``python data/make_model.py --corpus CORPUS`` (the committed ``data/default-model.skops``).

:func:`fit_combined` fits the behaviour models (profiles, anomaly, the behaviour classifier when labels are given)
on the client windows of the data, and the content classifier and the named rules
(:mod:`stormguard.models.content`) on labelled windows that each carry the name of their ``source``: the data's own
labelled windows, the corpus' labelled sources (:mod:`stormguard.models.sources`), or both. Then:

- **leave-one-source-out**: every source held out in turn, the models refitted on the others. When the held-out
  source also labelled behaviour rows (the user's own data), the behaviour classifier is refitted without those
  labels too (its unsupervised parts still see the rows, unlabelled), so no held-out label reaches any part;
- **tier knots** of the saved model: :func:`stormguard.models.transfer.choose_knots` over all held-out scores;
- **the UA model** (when given) is evidence only, gated by the content evidence in
  :meth:`~stormguard.models.mapping.ReputationMapping.combine`; callers build the behaviour models with
  ``ua_inputs=False`` (:func:`stormguard.models.train.reputation_template`), so a UA never reaches a client's score
  through the behaviour classifier as well (it would count twice, and ungated: an honest curl subscriber without
  any content evidence against it was pulled below neutral that way);
- **reported figures**: :func:`stormguard.models.transfer.nested_loso`, where each held-out source's knots come
  from an inner leave-one-source-out of its training sources only (the knots never see the source they are
  evaluated on).

:func:`data_sources` names the data's own windows for this: one source ``data`` beside the corpus, or, when the
data is the only source, ``data-1`` … ``data-k`` folds that keep each client key's windows together.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from .behaviour import ReputationModel

__all__ = ["DATA_FOLDS", "DEFAULT_UA_PARAMS", "EXCLUDED_SOURCES", "content_windows", "data_sources", "fit_combined"]

#: Folds of the data's client keys when the data is the only labelled source.
DATA_FOLDS = 5

#: The UA model of the bundled default (``UAModel`` parameters): the smallest of the sizes tried (hash width 1,024,
#: 8 SVD components, 8 clusters) keeps the bundle under 0.4 MB; the library default (2**17 hashed n-grams, 48
#: components) alone would weigh 8 MB. ``stormguard ua train ua_dev.csv --features 1024 --components 8 --clusters 8``.
DEFAULT_UA_PARAMS: dict[str, int] = {"n_features": 2**10, "n_components": 8, "n_clusters": 8}

#: Labelled corpus sources left out of the content model's windows: the Apache crawlers are labelled by their UA
#: only (self-declared bots, not abuse), and the abusive-vs-human evaluation is about abuse.
EXCLUDED_SOURCES = ("apache-crawlers",)

Progress = Callable[[str], None]


def data_sources(features: pd.DataFrame, alone: bool, folds: int = DATA_FOLDS) -> np.ndarray:
    """Source name of each row of the data: ``data`` (``alone`` False: other labelled sources exist), else
    ``data-<fold>`` by a stable hash of the row's ``key`` (all windows of one client in one fold)."""
    if not alone:
        return np.full(len(features), "data", dtype=object)
    keys = features["key"].astype("object").astype(str).to_numpy()
    codes, uniq = pd.factorize(keys)
    fold = np.array([zlib.crc32(k.encode("utf-8")) % folds + 1 for k in uniq], dtype=np.int64)
    return np.array([f"data-{f}" for f in fold], dtype=object)[codes] if len(keys) else np.empty(0, dtype=object)


def content_windows(features: pd.DataFrame, y: np.ndarray | None, sources: np.ndarray,
                    corpus_rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """The content model's labelled windows: the data's labelled windows that asked for something (``n_path`` > 0;
    a TLS-only capture row or a bare connection has no request content to learn from), named by ``sources``
    (:func:`data_sources`), plus ``corpus_rows`` (:func:`stormguard.models.sources.corpus_sources`' features;
    :data:`EXCLUDED_SOURCES` left out)."""
    from .frames import numeric_column

    parts = []
    if y is not None:
        yy = np.asarray(y, dtype=np.float64)
        use = ~np.isnan(yy) & (numeric_column(features, "n_path") > 0)
        parts.append(features.loc[use].assign(source=np.asarray(sources, dtype=object)[use], label=yy[use],
                                              lf="labels"))
    if corpus_rows is not None:
        parts.append(corpus_rows[~corpus_rows["source"].isin(EXCLUDED_SOURCES)])
    if not parts:
        raise ValueError("the content model needs labelled windows: labels for the data and/or the corpus")
    return pd.concat(parts, ignore_index=True)


def fit_combined(features: pd.DataFrame, y: np.ndarray | None, content_rows: pd.DataFrame,
                 make_reputation: Callable[[], ReputationModel], content: Any, *,
                 feature_sources: np.ndarray | None = None, progress: Progress | None = None
                 ) -> tuple[ReputationModel, dict[str, Any]]:
    """The fitted combined model (tier knots set) and its transfer metrics (see the module docstring).

    ``features``/``y``: the behaviour training windows and their labels (NaN unlabelled; None: unsupervised).
    ``content_rows``: labelled windows with ``source`` and ``label`` columns (both classes, at least two sources).
    ``make_reputation()``: an unfitted :class:`ReputationModel` (behaviour template, mapping, UA model, rules).
    ``content``: the content estimator template (:class:`~stormguard.models.content.ContentClassifier`).
    ``feature_sources``: the ``source`` of each behaviour row that is also a content row (None: no overlap).
    """
    from .transfer import (
        KNOT_FLOOR_NATS,
        choose_knots,
        heldout_importance,
        loso_result,
        nested_loso,
        signal_importance,
    )

    say = progress or (lambda _m: None)
    sources = set(content_rows["source"].astype(str))
    if len(sources) < 2 or content_rows["label"].nunique() < 2:
        raise ValueError(f"the content model needs labelled windows of both classes from at least two sources "
                         f"(got {content_rows['label'].nunique()} class(es) from {len(sources)} source(s))")
    labelled_sources = set()
    if y is not None and feature_sources is not None:
        known = ~np.isnan(np.asarray(y, dtype=np.float64))
        labelled_sources = set(np.asarray(feature_sources, dtype=object)[known].astype(str)) & sources
    behaviour: dict[frozenset[str], ReputationModel] = {}

    def behaviour_without(held: frozenset[str]) -> ReputationModel:
        key = held & frozenset(labelled_sources)
        if key not in behaviour:
            yy = None if y is None else np.asarray(y, dtype=np.float64).copy()
            if yy is not None and key:
                yy[np.isin(np.asarray(feature_sources, dtype=object).astype(str), list(key))] = np.nan
            behaviour[key] = make_reputation().fit(features, yy)
        return behaviour[key]

    def make(train: pd.DataFrame) -> ReputationModel:
        held = frozenset(sources - set(train["source"].astype(str)))
        model = copy.deepcopy(behaviour_without(held))
        return model.fit_content(content, train, train["label"].to_numpy(dtype=float), train["source"].to_numpy())

    say(f"content windows: {len(content_rows):,} from {len(sources)} sources; leave-one-source-out, nested knots")
    base = behaviour_without(frozenset())
    mapping = base.mapping_
    floor = mapping.prior_logit_ + KNOT_FLOOR_NATS
    models: dict[str, ReputationModel] = {}
    oof = nested_loso(content_rows, make, floor, mapping, say, models)
    knots = choose_knots(oof.assign(log_odds=oof["log_odds_raw"]), floor)
    say("fitting the final model on every source")
    model = make(content_rows)
    model.set_tier_knots(*knots)
    result = loso_result(oof, mapping, knots, signal_importance(model, content_rows))
    metrics = dict(result["metrics"])
    metrics.update({"knots": list(knots), "fold_knots": result["fold_knots"],
                    "knot_choice": "nested: each held-out source's knots from an inner LOSO of its training sources",
                    "origin_only": result["metrics_origin_only"],
                    "with_final_knots_optimistic": result["metrics_bundle_knots"],
                    "signal_importance_in_sample": result["importance_in_sample"],
                    "signal_importance_held_out": heldout_importance(models, content_rows),
                    "sources": sorted(sources)})
    return model, metrics
