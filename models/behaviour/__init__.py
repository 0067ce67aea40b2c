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
and known-list flags from :mod:`stormguard.models.encoding`, missing-value indicators); a :class:`BehaviourModel` scales them
(``StandardScaler`` in a ``Pipeline``), clusters them into profiles (``MiniBatchKMeans``; names from the centroid
traits, :func:`name_profiles`), scores rarity with an ``IsolationForest`` (turned into a conformal p-value against
the training clients), and, given labels, fits a calibrated classifier. :class:`ReputationModel` puts the kinds,
the UA model and the :class:`~stormguard.models.mapping.ReputationMapping` together and scores a table into
``key, score, tier, cluster, profile, anomaly, p_value, reasons``.

Modules, one concept each: :mod:`.columns` (which columns, how scaled), :mod:`.features` (table → matrix),
:mod:`.profiles` (cluster names), :mod:`.model` (:class:`BehaviourModel`), :mod:`.reasons` (reason strings),
:mod:`.reputation` (:class:`ReputationModel`), :mod:`.live` (:class:`LiveScorer`).
"""

from __future__ import annotations

from stormguard.models.behaviour.columns import BEHAVIOUR_SCHEMA_VERSION, PROFILES, source_family
from stormguard.models.behaviour.features import BehaviourFeatures
from stormguard.models.behaviour.live import LiveScorer
from stormguard.models.behaviour.model import BehaviourModel
from stormguard.models.behaviour.profiles import name_profiles
from stormguard.models.behaviour.reputation import ReputationModel
from stormguard.models.mapping import evidence_floor_share

__all__ = [
    "BEHAVIOUR_SCHEMA_VERSION",
    "BehaviourFeatures",
    "BehaviourModel",
    "evidence_floor_share",
    "LiveScorer",
    "PROFILES",
    "ReputationModel",
    "name_profiles",
    "source_family",
]
