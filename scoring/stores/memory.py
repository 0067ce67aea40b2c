"""``memory://`` — the embedded, bounded, least-recently-used reputation store.

Why it is shaped like this: the server may see millions of distinct client keys in a storm, so per-key state is
one immutable ``bytes`` of packed doubles (score, t0, last bad, block until) plus one byte per recent reason
(an index into a small shared reason table) — ~70 bytes that the garbage collector never has to traverse — kept in
an ``OrderedDict`` for O(1) LRU moves and evictions. Measured ~210 bytes per key including the key string at
1,000,000 keys (``bench/store.py``). Every operation is synchronous inside its coroutine, so it is atomic with
respect to other asyncio tasks without a lock. There is no TTL here: the LRU bound is what keeps memory finite, and
an evicted key simply comes back neutral (decay would have brought it toward 0 anyway).
"""

from __future__ import annotations

import heapq
import math
import struct
from collections import OrderedDict
from collections.abc import Iterable

from stormguard.scoring.reputation import Reputation, apply_op, check_value, clamp, decayed
from stormguard.scoring.stores.base import ReputationStore, StoreOptions

MAX_REASON_CODES = 255  # code 0 = empty slot, 1 = "other": what the 256th distinct reason and later ones become


class _ReasonTable:
    """Reason strings <-> one-byte codes, shared by all keys (reasons come from a small vocabulary of rules)."""

    def __init__(self) -> None:
        self.names: list[str] = ["", "other"]
        self.codes: dict[str, int] = {"": 0, "other": 1}

    def code(self, reason: str) -> int:
        code = self.codes.get(reason)
        if code is None:
            if len(self.names) >= MAX_REASON_CODES:
                return 1
            code = len(self.names)
            self.names.append(reason)
            self.codes[reason] = code
        return code


class MemoryStore(ReputationStore):
    """Bounded LRU store; ``max_keys`` is never exceeded (the least recently used key is evicted first)."""

    scheme = "memory"

    def __init__(self, options: StoreOptions | None = None, max_keys: int = 1_000_000) -> None:
        super().__init__(options)
        if max_keys < 1:
            raise ValueError("memory store: max_keys must be at least 1")
        self.max_keys = max_keys
        self.max_reasons = min(max(self.options.max_reasons, 0), 16)
        self._packer = struct.Struct(f"<4d{self.max_reasons}B")
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._reasons = _ReasonTable()
        self._blocked: dict[str, float] = {}     # key -> block_until, for keys whose last write set a block
        self.evictions = 0

    # -- packing ---------------------------------------------------------------------------------------------
    def _pack(self, rep: Reputation) -> bytes:
        codes = [self._reasons.code(r) for r in rep.reasons[-self.max_reasons:]] if self.max_reasons else []
        codes += [0] * (self.max_reasons - len(codes))
        return self._packer.pack(rep.score, rep.updated, rep.last_bad, rep.block_until, *codes)

    def _unpack(self, key: str, raw: bytes) -> Reputation:
        s, t, b, u, *codes = self._packer.unpack(raw)
        names = self._reasons.names
        return Reputation(key, s, t, b, u, tuple(names[c] for c in codes if c))

    def _neutral(self, key: str, now: float) -> Reputation:
        return Reputation(key, clamp(self.options.initial_score), now)

    def _store(self, rep: Reputation) -> None:
        data = self._data
        data[rep.key] = self._pack(rep)
        data.move_to_end(rep.key)
        if rep.block_until > rep.updated:
            self._blocked[rep.key] = rep.block_until
        elif self._blocked:
            self._blocked.pop(rep.key, None)
        while len(data) > self.max_keys:
            gone, _ = data.popitem(last=False)
            self._blocked.pop(gone, None)
            self.evictions += 1

    # -- API ---------------------------------------------------------------------------------------------------
    def get_now(self, key: str, now: float | None = None) -> Reputation:
        """Synchronous :meth:`get` (the memory store never waits)."""
        now = self.now() if now is None else now
        raw = self._data.get(key)
        if raw is None:
            return self._neutral(key, now)
        self._data.move_to_end(key)
        # inlined Reputation.at(): this is the server's per-connection read
        s, t, b, u, *codes = self._packer.unpack(raw)
        if now > t:
            lam = self.options.lam
            if lam and s:
                s *= math.exp(-lam * (now - t))
            t = float(now)
        names = self._reasons.names
        return Reputation(key, s, t, b, u, tuple(names[c] for c in codes if c))

    async def get(self, key: str, now: float | None = None) -> Reputation:
        return self.get_now(key, now)

    def update_now(self, key: str, op: str, value: float = 0.0, reason: str = "", now: float | None = None,
                   block_score: float | None = None, block_seconds: float = 0.0) -> Reputation:
        check_value(op, value)
        now = self.now() if now is None else now
        raw = self._data.get(key)
        state = self._neutral(key, now) if raw is None else self._unpack(key, raw)
        new = apply_op(state, op, value, reason, now, self.options.lam, block_score, block_seconds,
                       self.max_reasons)
        self._store(new)
        return new

    async def update(self, key: str, op: str, value: float = 0.0, reason: str = "", now: float | None = None,
                     block_score: float | None = None, block_seconds: float = 0.0) -> Reputation:
        return self.update_now(key, op, value, reason, now, block_score, block_seconds)

    def put(self, rep: Reputation) -> None:
        """Store an entry as is (the Redis fallback mirrors what Redis answered)."""
        self._store(rep)

    async def delete(self, key: str) -> bool:
        self._blocked.pop(key, None)
        return self._data.pop(key, None) is not None

    async def blocks(self, now: float | None = None, limit: int = 1_000_000) -> list[Reputation]:
        now = self.now() if now is None else now
        for key in [k for k, until in self._blocked.items() if until <= now]:
            del self._blocked[key]
        keys = sorted(self._blocked, key=self._blocked.__getitem__)[:max(0, limit)]
        lam = self.options.lam
        return [self._unpack(k, self._data[k]).at(now, lam) for k in keys]

    async def top(self, n: int = 10, worst: bool = True, now: float | None = None) -> list[Reputation]:
        now = self.now() if now is None else now
        lam = self.options.lam
        entries = ((k, self._packer.unpack_from(raw)) for k, raw in self._data.items())
        pick = heapq.nsmallest if worst else heapq.nlargest
        best = pick(n, entries, key=lambda kv: decayed(kv[1][0], kv[1][1], now, lam))
        return [self._unpack(k, self._data[k]).at(now, lam) for k, _ in best]

    async def load_scores(self, scores: Iterable[tuple[str, float]], now: float | None = None,
                          reason: str = "model") -> int:
        now = self.now() if now is None else now
        n = 0
        for key, score in scores:
            self.update_now(key, "set", float(score), reason, now)
            n += 1
        return n

    async def count(self) -> int:
        return len(self._data)

    def __len__(self) -> int:
        return len(self._data)

    async def clear(self) -> None:
        self._data.clear()
        self._blocked.clear()

    def metrics(self) -> dict[str, float]:
        return {"keys": float(len(self._data)), "max_keys": float(self.max_keys),
                "evictions_total": float(self.evictions)}
