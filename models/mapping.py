"""From model outputs to a reputation score in [-100, 100]: the one documented, calibrated mapping.

The store's rules add and subtract points (−20 for a reconnect storm, −30 for short disconnects) and decay every
score toward 0; so on the store's scale **0 means "no evidence either way"**, negative means evidence of abuse,
positive evidence of good behaviour. The model speaks the same scale by turning its outputs into *evidence* (a
log-likelihood ratio, in nats, for "abusive" against "normal"), adding the evidence of independent sources to the
prior log-odds, and mapping the resulting posterior log-odds ``L`` onto scores through anchors taken from the
reputation config:

====================================  ====================================================================
posterior P(abusive)                  score
====================================  ====================================================================
the prior ``prior_bad`` (no evidence)  0 (neutral; where decay brings every score back)
``q_low`` (default 0.5: as likely      ``low_score`` = the lowest non-bottom tier's ``min_score`` (−20 by
abusive as not)                       default): anything worse is in the ``low`` tier
``q_block`` (default 0.9)             ``block_score`` (−50 by default): at or below it, connections are refused
prior odds ÷ ``trust_ratio`` (20)     ``trusted_score`` = the top tier's ``min_score`` (60 by default)
====================================  ====================================================================

Between anchors the score is linear in ``L``; beyond the outer anchors the outer segments are extended and the
result is clipped to [−100, 100]. The mapping is monotone, so every ranking metric of the model (ROC-AUC) holds for
the score too.

Evidence sources (each a log-likelihood ratio; positive = toward abusive):

- **anomaly** — the isolation-forest score is turned into a conformal p-value ``p`` (share of training clients at
  least as anomalous). A p-value is not evidence by itself; the Sellke–Bayarri–Berger calibration gives the
  *largest* Bayes factor in favour of "normal" that a p-value can support, ``B(p) = −e·p·ln p`` for ``p < 1/e``
  (else 1), so the evidence is ``−ln B(p) ≥ 0``. Being typical never counts *for* a client, only rarity against
  it. Consequence, by construction and not by tuning: a normal client (whose ``p`` is uniform) reaches ``q_low``
  only when ``B(p) ≤ prior_bad/(1−prior_bad)``, i.e. ``p < 0.11 %`` with the defaults — the expected share of normal
  clients the anomaly alone sends to the ``low`` tier.
- **classifier** (labels given) — ``logit(q) − logit(base rate)`` of the calibrated classifier, clipped to
  ±``max_evidence``.
- **UA** (a UA bundle given) — ``logit(bot probability) − logit(UA training base rate)``; the UA is controlled by
  the client, so evidence *for* it is capped at ``ua_good_cap`` nats (a browser-looking UA buys little), evidence
  against it is not capped below ``max_evidence``. Used only when no classifier is fitted (the classifier already
  sees the UA outputs among its inputs).
- **known bad JA3** — a hit on a configured bad list adds ``ln(bad_list_ratio)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

__all__ = ["ReputationMapping", "sbb_evidence", "tier_index", "tier_names"]


def _logit(q: float) -> float:
    return math.log(q / (1.0 - q))


def sbb_evidence(p: np.ndarray) -> np.ndarray:
    """``−ln B(p)`` with ``B(p) = −e·p·ln p`` for ``p < 1/e`` and 1 otherwise (evidence in nats, ≥ 0)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-300, 1.0)
    out = np.zeros_like(p)
    small = p < 1.0 / math.e
    ps = p[small]
    out[small] = -np.log(-math.e * ps * np.log(ps))
    return out


def tier_names(scores: np.ndarray, tiers: Sequence[tuple[str, float]], block_score: float) -> np.ndarray:
    """Tier name per score: ``blocked`` at or below ``block_score``, else the tier with the highest ``min_score``
    not above the score (the bottom tier for anything lower), as :class:`stormguard.scoring.tiers.TierTable` does."""
    idx, names = tier_index(scores, tiers, block_score)
    return names[idx]


def tier_index(scores: np.ndarray, tiers: Sequence[tuple[str, float]], block_score: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Codes into the returned names (tiers by ascending ``min_score``, then ``blocked``): see :func:`tier_names`."""
    scores = np.asarray(scores, dtype=np.float64)
    ordered = sorted(tiers, key=lambda t: t[1])
    names = np.array([n for n, _ in ordered] + ["blocked"], dtype=object)
    mins = np.array([m for _, m in ordered], dtype=np.float64)
    idx = np.searchsorted(mins, scores, side="right") - 1
    idx = np.clip(idx, 0, len(ordered) - 1)
    idx[scores <= block_score] = len(ordered)
    return idx, names


class ReputationMapping(BaseEstimator):
    """Posterior log-odds of "abusive" → score in [−100, 100] (see the module docstring for the anchors).

    ``fit`` takes no data: it fixes the anchors from the parameters (normally filled from the reputation config by
    :meth:`from_config`), so the fitted mapping is a pure function saved with the model.
    """

    def __init__(self, prior_bad: float = 0.02, q_low: float = 0.5, q_block: float = 0.9, trust_ratio: float = 20.0,
                 low_score: float = -20.0, block_score: float = -50.0, trusted_score: float = 60.0,
                 tiers: Sequence[tuple[str, float]] = (("trusted", 60.0), ("neutral", -20.0), ("low", -100.0)),
                 ua_good_cap: float = math.log(3.0), max_evidence: float = math.log(1000.0),
                 bad_list_ratio: float = 50.0) -> None:
        self.prior_bad = prior_bad
        self.q_low = q_low
        self.q_block = q_block
        self.trust_ratio = trust_ratio
        self.low_score = low_score
        self.block_score = block_score
        self.trusted_score = trusted_score
        self.tiers = tiers
        self.ua_good_cap = ua_good_cap
        self.max_evidence = max_evidence
        self.bad_list_ratio = bad_list_ratio

    @classmethod
    def from_config(cls, config: Any = None, **overrides: Any) -> ReputationMapping:
        """Anchors from ``config.reputation``: tiers (top tier = trusted, second-lowest = the low boundary) and
        ``block_score``."""
        if config is None:
            from stormguard.config import Config

            config = Config()
        rep = config.reputation
        tiers = sorted(((t.name, float(t.min_score)) for t in rep.tiers), key=lambda t: t[1])
        low = tiers[1][1] if len(tiers) > 1 else float(rep.block_score) + 1.0
        params = {"tiers": tuple(tiers), "low_score": low, "block_score": float(rep.block_score),
                  "trusted_score": tiers[-1][1] if len(tiers) > 1 and tiers[-1][1] > 0 else 60.0}
        params.update(overrides)
        return cls(**params)

    def fit(self, X: Any = None, y: Any = None) -> ReputationMapping:
        if not (0 < self.prior_bad < self.q_low < self.q_block < 1):
            raise ValueError("need 0 < prior_bad < q_low < q_block < 1")
        if not (self.block_score < self.low_score < 0 < self.trusted_score):
            raise ValueError("need block_score < low_score < 0 < trusted_score")
        l0 = _logit(self.prior_bad)
        self.knots_x_ = np.array([l0 - math.log(self.trust_ratio), l0, _logit(self.q_low), _logit(self.q_block)])
        self.knots_y_ = np.array([self.trusted_score, 0.0, self.low_score, self.block_score], dtype=np.float64)
        self.prior_logit_ = l0
        return self

    def score(self, log_odds: np.ndarray) -> np.ndarray:
        """Posterior log-odds of abusive → score, clipped to [−100, 100]."""
        x = np.asarray(log_odds, dtype=np.float64)
        kx, ky = self.knots_x_, self.knots_y_
        out = np.interp(x, kx, ky)
        left = x < kx[0]
        out[left] = ky[0] + (x[left] - kx[0]) * (ky[1] - ky[0]) / (kx[1] - kx[0])
        right = x > kx[-1]
        out[right] = ky[-1] + (x[right] - kx[-1]) * (ky[-1] - ky[-2]) / (kx[-1] - kx[-2])
        return np.clip(out, -100.0, 100.0)

    def log_odds(self, score: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`score` inside (−100, 100): the posterior log-odds a score stands for."""
        y = np.asarray(score, dtype=np.float64)
        kx, ky = self.knots_x_[::-1], self.knots_y_[::-1]  # ky ascending
        out = np.interp(y, ky, kx)
        low = y < ky[0]
        out[low] = kx[0] + (y[low] - ky[0]) * (kx[1] - kx[0]) / (ky[1] - ky[0])
        high = y > ky[-1]
        out[high] = kx[-1] + (y[high] - ky[-1]) * (kx[-1] - kx[-2]) / (ky[-1] - ky[-2])
        return out

    def combine(self, *, anomaly_p: np.ndarray, classifier_p: np.ndarray | None = None,
                classifier_base: float | None = None, ua_p: np.ndarray | None = None,
                ua_base: float | None = None, listed_bad: np.ndarray | None = None,
                content_p: np.ndarray | None = None, content_base: float | None = None,
                rules: np.ndarray | None = None, tier_knots: tuple[float, float] | None = None,
                anomaly_cap_with_content: float = 1.0, content_cap: float = 1.0) -> dict[str, np.ndarray]:
        """Evidence per source (nats) and the resulting ``log_odds`` and ``score`` (dict of arrays).

        With the content model (``content_p``, its training base rate ``content_base``) and the named content
        ``rules`` (nats), rarity alone counts for at most ``anomaly_cap_with_content`` nats, the classifier for at most
        ``content_cap`` nats against a client (the named rules carry the strong evidence: leave-one-source-out showed
        the classifier adds little once they speak, and it is the part most exposed to unseen sites), and the UA's evidence
        is dropped whenever content evidence points the other way: a browser UA never raises a client whose requests
        look abusive, and a bot or script UA never lowers a client without content evidence against it (>= ``content_cap``
        nats: a named rule, or the content classifier at its cap; a steady
        curl subscriber is a legitimate SSE client; the UA model's "bot" is not "abusive"). ``tier_knots`` ``(x_low, x_block)`` (chosen on held-out sources, see
        :meth:`stormguard.models.behaviour.reputation.ReputationModel.set_tier_knots`) remap the log-odds so that
        ``x_low`` lands on ``q_low`` and ``x_block`` on ``q_block``."""
        cap = self.max_evidence
        ev: dict[str, np.ndarray] = {"anomaly": np.minimum(sbb_evidence(anomaly_p), cap)}
        n = len(ev["anomaly"])
        content_ev = np.zeros(n)
        if content_p is not None and content_base is not None:
            q = np.clip(np.asarray(content_p, dtype=np.float64), 1e-6, 1 - 1e-6)
            ev["content"] = np.clip(np.log(q / (1 - q)) - _logit(content_base), -self.ua_good_cap, content_cap)
            ev["anomaly"] = np.minimum(ev["anomaly"], anomaly_cap_with_content)
            content_ev = content_ev + ev["content"]
        if rules is not None:
            ev["rules"] = np.asarray(rules, dtype=np.float64)
            content_ev = content_ev + ev["rules"]
        if classifier_p is not None and classifier_base is not None:
            q = np.clip(np.asarray(classifier_p, dtype=np.float64), 1e-6, 1 - 1e-6)
            ev["classifier"] = np.clip(np.log(q / (1 - q)) - _logit(classifier_base), -cap, cap)
            if content_p is not None:  # behaviour (rates, reconnects) beside content: capped both ways, so that it
                # neither condemns nor clears a client whose requests speak (it learns from far fewer clients)
                ev["classifier"] = np.clip(ev["classifier"], -self.ua_good_cap, anomaly_cap_with_content)
        if content_p is not None or rules is not None:
            if ua_p is not None and ua_base is not None and 0 < ua_base < 1:
                q = np.clip(np.nan_to_num(np.asarray(ua_p, dtype=np.float64), nan=ua_base), 1e-6, 1 - 1e-6)
                ua = np.clip(np.log(q / (1 - q)) - _logit(ua_base), -self.ua_good_cap, cap)
                # the UA only speaks where the requests do not contradict it: a browser UA never raises a client
                # whose content evidence is abusive, and a bot/script UA (curl, a crawler: honest about itself)
                # never lowers a client whose requests show nothing against it; it amplifies content evidence
                # (at least ``content_cap`` nats: a named rule, or the content classifier at its cap)
                ev["ua"] = np.where(((content_ev > 0) & (ua < 0)) | ((content_ev < content_cap) & (ua > 0)), 0.0, ua)
        elif "classifier" not in ev and ua_p is not None and ua_base is not None and 0 < ua_base < 1:
            q = np.clip(np.nan_to_num(np.asarray(ua_p, dtype=np.float64), nan=ua_base), 1e-6, 1 - 1e-6)
            ev["ua"] = np.clip(np.log(q / (1 - q)) - _logit(ua_base), -self.ua_good_cap, cap)
        if listed_bad is not None:
            ev["ja3_list"] = np.asarray(listed_bad, dtype=np.float64) * math.log(self.bad_list_ratio)
        total = np.full(n, self.prior_logit_)
        for v in ev.values():
            total = total + v
        if tier_knots is not None:
            total = self.remap(total, *tier_knots)
        ev["log_odds"] = total
        ev["score"] = self.score(total)
        return ev

    def remap(self, log_odds: np.ndarray, x_low: float, x_block: float) -> np.ndarray:
        """Monotone, continuous remap of posterior log-odds: identity up to the prior (the neutral point and the
        trusted side do not move), then linear so that ``x_low`` lands on logit(``q_low``) and ``x_block`` on
        logit(``q_block``), shifted beyond. ``x_low`` is kept above the prior and ``x_block`` 0.5 nats above it."""
        x0 = self.prior_logit_
        y_low, y_block = _logit(self.q_low), _logit(self.q_block)
        x_low = max(x_low, x0 + 0.5)
        x_block = max(x_block, x_low + 0.5)
        return np.interp(np.asarray(log_odds, dtype=np.float64), [x0 - 1e6, x0, x_low, x_block, x_block + 1e6],
                         [x0 - 1e6, x0, y_low, y_block, y_block + 1e6])

    def tier(self, scores: np.ndarray) -> np.ndarray:
        return tier_names(scores, self.tiers, self.block_score)

    def tier_index(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tier_index(scores, self.tiers, self.block_score)


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
