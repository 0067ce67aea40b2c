"""A client's reputation and the arithmetic every store shares (decay, clamping, ordering).

Decay is exponential toward 0, ``score(t) = score0 · exp(−λ·(t − t0))``, applied lazily from the stored timestamp
whenever an entry is read or changed: no per-key timers, so a million idle keys cost nothing. The Redis store runs
the same formula in Lua; both use IEEE doubles and the C library's ``exp`` so the two stores agree exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCORE_MIN = -100.0
SCORE_MAX = 100.0
# A member's rank in the Redis sorted set is sign(s)·(ln|s| + λ·t0 + RANK_OFFSET): because every score decays by the
# same factor exp(−λt), that order equals the order of the *current* scores forever, without rewriting the set.
RANK_OFFSET = 30.0
RANK_EPS = 1e-12


def check_value(op: str, value: float) -> None:
    """Refuse a value no arithmetic can recover from (NaN poisons the score, the rank and every ``top``), before
    anything is written."""
    if not math.isfinite(value):
        raise ValueError(f"{op}: value must be a finite number, got {value!r}")


def clamp(score: float) -> float:
    """Scores live in [-100, 100]: an abuser cannot dig a hole so deep that decay never brings it back."""
    return SCORE_MAX if score > SCORE_MAX else SCORE_MIN if score < SCORE_MIN else score


def decayed(score: float, t0: float, now: float, lam: float) -> float:
    """The score stored at ``t0`` as seen at ``now`` (never decays backwards if clocks disagree)."""
    dt = now - t0
    if dt <= 0 or lam == 0 or score == 0:
        return score
    return score * math.exp(-lam * dt)


def rank(score: float, t0: float, lam: float) -> float:
    """Time-invariant sort key of an entry (see RANK_OFFSET); must match the Lua scripts bit for bit."""
    if -RANK_EPS < score < RANK_EPS:
        return 0.0
    inner = math.log(abs(score)) + lam * t0 + RANK_OFFSET
    return inner if score > 0 else -inner


def half_life_to_lambda(hours: float) -> float:
    return math.log(2) / (hours * 3600.0) if hours > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Reputation:
    """One client's reputation as of ``updated`` (the score is already decayed to that time).

    ``block_until`` is an absolute UNIX time (0 = not blocked); ``reasons`` are the most recent reasons, oldest
    first, kept short because they are for operators, not for decisions.
    """

    key: str
    score: float = 0.0
    updated: float = 0.0
    last_bad: float = 0.0
    block_until: float = 0.0
    reasons: tuple[str, ...] = ()

    def blocked(self, now: float) -> bool:
        return self.block_until > now

    def at(self, now: float, lam: float) -> Reputation:
        """This entry decayed to ``now``."""
        if now <= self.updated:
            return self
        return Reputation(self.key, decayed(self.score, self.updated, now, lam), float(now), self.last_bad,
                          self.block_until, self.reasons)

    def as_dict(self) -> dict[str, object]:
        return {"key": self.key, "score": round(self.score, 6), "updated": self.updated,
                "last_bad": self.last_bad, "block_until": self.block_until, "reasons": list(self.reasons)}


#: Scores meet the block threshold within this margin: −20 then −30 a few seconds apart must block at −50 although
#: decay has moved the sum to −49.9998 (at the default rate, 0.01 is about 20 s of decay at −50).
BLOCK_TOLERANCE = 0.01


def apply_op(state: Reputation, op: str, value: float, reason: str, now: float, lam: float,
             block_score: float | None, block_seconds: float, max_reasons: int) -> Reputation:
    """The one read-modify-write every store performs (Python twin of the Lua ``update`` script).

    ``op``: ``add`` (value = delta), ``set`` (value = score), ``block`` (value = until), ``unblock``. An ``add`` that
    takes the score to ``block_score`` or below blocks for ``block_seconds`` (extending, never shortening, a block).
    ``unblock`` ends the block now (``block_until = now``), which also marks a low score as already served (see
    ``ReputationEngine.classify``).
    """
    t = max(state.updated, float(now))
    s = decayed(state.score, state.updated, t, lam)
    last_bad, until = state.last_bad, state.block_until
    if op == "add":
        s = clamp(s + value)
        if value < 0:
            last_bad = t
        if value < 0 and block_score is not None and block_seconds > 0 and s <= block_score + BLOCK_TOLERANCE:
            until = max(until, t + block_seconds)
    elif op == "set":
        s = clamp(value)
    elif op == "block":
        until = value
    elif op == "unblock":
        until = min(until, t) if until > 0 else t  # "served up to now": the score alone does not re-block it
    else:
        raise ValueError(f"unknown reputation op {op!r}")
    reasons = state.reasons
    if reason and max_reasons > 0:
        reasons = (*reasons, reason)[-max_reasons:]
    return Reputation(state.key, s, t, last_bad, until, reasons)
