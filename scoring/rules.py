"""Reputation rules as data: each is ``feature op value → delta``, loaded from the ``[reputation]`` config.

Why data and not code: operators tune deductions and add evidence (a new fingerprint list, a new feature from the
models) without a release, and one evaluator keeps the order and accounting of deductions in one place.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stormguard.config import ReputationConfig, RuleConfig

OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq, "!=": operator.ne,
    "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
}


@dataclass(frozen=True, slots=True)
class Rule:
    """When ``evidence[feature] op value`` holds, add ``delta`` to the score and record ``name`` as the reason."""

    name: str
    feature: str
    op: str
    value: Any
    delta: float

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"rule {self.name!r}: unknown operator {self.op!r} (use one of {', '.join(OPS)})")

    @classmethod
    def from_config(cls, rc: RuleConfig) -> Rule:
        value = tuple(rc.value) if isinstance(rc.value, list) else rc.value
        return cls(rc.name, rc.feature, rc.op, value, float(rc.delta))

    def matches(self, evidence: Mapping[str, Any]) -> bool:
        """Absent or incomparable evidence never matches: a missing feature is not an accusation."""
        got = evidence.get(self.feature)
        if got is None:
            return False
        try:
            return bool(OPS[self.op](got, self.value))
        except TypeError:
            return False


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the rules found in one piece of evidence: the total delta and the names of the matching rules."""

    delta: float
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "+".join(self.reasons)


def rules_from_config(cfg: ReputationConfig) -> list[Rule]:
    return [Rule.from_config(rc) for rc in cfg.rules]


def evaluate(rules: Iterable[Rule], evidence: Mapping[str, Any]) -> Verdict:
    """Sum the deltas of every matching rule (one store update per observation, not one per rule)."""
    matched: Sequence[Rule] = [r for r in rules if r.matches(evidence)]
    return Verdict(sum(r.delta for r in matched), tuple(r.name for r in matched))
