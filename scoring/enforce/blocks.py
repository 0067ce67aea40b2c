"""What stormguard blocks now, as every exporter sees it (nftables, blocklists, CrowdSec).

Two kinds of entries refuse a client: a running block (``block_until`` in the future: the live rules, an operator,
a CrowdSec ban) — listed from the store's block index — and a score at or below the block threshold that has not
been served a block yet (a model's verdict loaded with ``stormguard score --store``): those are the lowest scores,
read from the rank order, and the gate would block them for ``block_seconds`` at their next connection.

Each entry says where its block came from, so exports can be filtered and named: ``crowdsec`` (imported; never
pushed back to CrowdSec), ``model``, ``rules`` (a live rule's name), else ``operator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stormguard.addresses import client_address

SOURCES = ("model", "rules", "operator", "crowdsec")


@dataclass(frozen=True, slots=True)
class Block:
    key: str
    until: float
    reason: str
    source: str

    @property
    def version(self) -> int | None:
        """4 or 6 when the key is an IP address (exports to firewalls take only those), else None."""
        addr = client_address(self.key)
        return None if addr is None else addr.version

    @property
    def address(self) -> str:
        return str(client_address(self.key))


def source_of(reason: str, rule_names: frozenset[str]) -> str:
    if reason.startswith("crowdsec:"):
        return "crowdsec"
    if reason == "model" or reason.startswith("model"):
        return "model"
    if reason and all(part in rule_names for part in reason.split("+")):
        return "rules"
    return "operator"


async def current_blocks(engine: Any, now: float | None = None, limit: int = 1_000_000) -> list[Block]:
    """Every client the gate refuses at ``now`` (see the module docstring), soonest-ending first, deduplicated."""
    store = engine.store
    now = store.now() if now is None else now
    rules = frozenset(r.name for r in engine.rules)
    out: dict[str, Block] = {}
    for rep in await store.blocks(now, limit):
        reason = rep.reasons[-1] if rep.reasons else "blocked"
        out[rep.key] = Block(rep.key, rep.block_until, reason, source_of(reason, rules))
    block_score = engine.block_score()
    step = 1000
    seen = 0
    while len(out) < limit:
        worst = await store.top(seen + step, worst=True, now=now)
        fresh = worst[seen:]
        if not fresh:
            break
        for rep in fresh:
            if rep.key in out:
                continue
            if rep.score > block_score:
                break
            d = engine.classify(rep, now, engine.block_score(ip=rep.key), engine.evidence.allowed(rep.key, None))
            if d.blocked:
                reason = rep.reasons[-1] if rep.reasons else "score"
                out[rep.key] = Block(rep.key, now + d.retry_after, reason, source_of(reason, rules))
        if fresh[-1].score > block_score or len(fresh) < step:
            break
        seen += step
    return sorted(out.values(), key=lambda b: (b.until, b.key))[:limit]
