"""The reputation store interface: what the server, the batch scorer and the CLI may ask of any backend.

Stores hold state and perform the single atomic read-modify-write :func:`stormguard.scoring.reputation.apply_op`;
they know nothing of rules, tiers or thresholds (those are algorithms, kept apart as in the ``limits`` library).
All methods are coroutines because the server calls them from its event loop; ``now`` is injectable so tests and
replays can run on their own clock.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable
from dataclasses import dataclass

from stormguard.scoring.reputation import Reputation


@dataclass(frozen=True)
class StoreOptions:
    """Behaviour shared by every store (from the ``[reputation]`` and ``[store]`` config sections)."""

    lam: float = 1e-5
    max_reasons: int = 4
    initial_score: float = 0.0
    idle_ttl: float = 86_400.0


class ReputationStore(abc.ABC):
    """Async reputation storage. Every mutating call is atomic with respect to concurrent callers."""

    scheme: str = ""

    def __init__(self, options: StoreOptions | None = None) -> None:
        self.options = options or StoreOptions()

    @staticmethod
    def now() -> float:
        return time.time()

    @abc.abstractmethod
    async def get(self, key: str, now: float | None = None) -> Reputation:
        """The entry decayed to ``now``; a neutral entry for unknown keys (nothing is stored on read)."""

    @abc.abstractmethod
    async def update(self, key: str, op: str, value: float = 0.0, reason: str = "", now: float | None = None,
                     block_score: float | None = None, block_seconds: float = 0.0) -> Reputation:
        """Atomically apply one :func:`apply_op` and return the new entry."""

    async def add(self, key: str, delta: float, reason: str = "", now: float | None = None,
                  block_score: float | None = None, block_seconds: float = 0.0) -> Reputation:
        """Add ``delta`` (negative = penalty) after decay; block when the result reaches ``block_score``."""
        return await self.update(key, "add", delta, reason, now, block_score, block_seconds)

    async def set(self, key: str, score: float, reason: str = "", now: float | None = None) -> Reputation:
        return await self.update(key, "set", score, reason, now)

    async def block(self, key: str, until: float, reason: str = "blocked", now: float | None = None) -> Reputation:
        return await self.update(key, "block", until, reason, now)

    async def unblock(self, key: str, reason: str = "", now: float | None = None) -> Reputation:
        return await self.update(key, "unblock", 0.0, reason, now)

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Forget a key; True when it existed."""

    @abc.abstractmethod
    async def top(self, n: int = 10, worst: bool = True, now: float | None = None) -> list[Reputation]:
        """The ``n`` lowest (``worst``) or highest current scores."""

    @abc.abstractmethod
    async def load_scores(self, scores: Iterable[tuple[str, float]], now: float | None = None,
                          reason: str = "model") -> int:
        """Bulk-replace scores (a trained model's output); returns how many were written."""

    @abc.abstractmethod
    async def blocks(self, now: float | None = None, limit: int = 1_000_000) -> list[Reputation]:
        """Entries whose block runs past ``now`` (``block_until > now``), soonest-ending first, at most ``limit``.

        Backed by an index of blocks kept with every write, so exporters (nftables, blocklists, CrowdSec) list
        the blocked clients without scanning every key."""

    @abc.abstractmethod
    async def count(self) -> int:
        """How many keys are stored (Redis: may include keys whose TTL has just run out)."""

    async def clear(self) -> None:
        """Remove every entry of this store (tests, CLI); not for production paths."""
        raise NotImplementedError

    async def close(self) -> None:
        return None

    def metrics(self) -> dict[str, float]:
        """Counters for the server's metrics endpoint."""
        return {}

    async def __aenter__(self) -> ReputationStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
