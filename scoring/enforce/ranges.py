"""Address ranges matched without expanding them into per-address keys.

A CrowdSec ``Range`` decision (``203.0.113.0/24``, or a ``/32`` that is one address) is one entry here, not 256
store keys. Entries live in one dict per (family, prefix length); a lookup tries only the prefix lengths in use,
most specific first, so it costs a few dict probes however many ranges there are. Each entry holds every decision
that covers it (by id): it ends when the last of them is deleted or runs out.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stormguard.addresses import client_address

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class RangeEntry:
    network: Network
    kind: str                                   # "ban" or "captcha"
    decisions: dict[str, tuple[float, str]] = field(default_factory=dict)   # decision id -> (until, reason)

    @property
    def until(self) -> float:
        return max((u for u, _ in self.decisions.values()), default=0.0)

    @property
    def reason(self) -> str:
        return max(self.decisions.values(), default=(0.0, ""))[1]


class RangeTable:
    """``match(ip)`` → the most specific live entry covering ``ip`` (bans before captchas at equal length)."""

    KINDS = ("ban", "captcha")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        # (version, prefixlen) -> {network address as int -> {kind -> entry}}
        self._by_len: dict[tuple[int, int], dict[int, dict[str, RangeEntry]]] = {}
        self._lens: dict[int, list[int]] = {4: [], 6: []}     # prefix lengths in use, longest first
        self.version = 0                                      # bumped by every change (callers cache on it)

    def __len__(self) -> int:
        return sum(len(kinds) for table in self._by_len.values() for kinds in table.values())

    def __bool__(self) -> bool:
        return bool(self._by_len)

    def add(self, cidr: str, kind: str, decision_id: str, until: float, reason: str) -> RangeEntry:
        if kind not in self.KINDS:
            raise ValueError(f"range kind must be one of {self.KINDS}, got {kind!r}")
        net = ipaddress.ip_network(cidr, strict=False)
        slot = (net.version, net.prefixlen)
        table = self._by_len.get(slot)
        if table is None:
            table = self._by_len[slot] = {}
            self._lens[net.version] = sorted({*self._lens[net.version], net.prefixlen}, reverse=True)
        kinds = table.setdefault(int(net.network_address), {})
        entry = kinds.get(kind)
        if entry is None:
            entry = kinds[kind] = RangeEntry(net, kind)
        entry.decisions[decision_id] = (until, reason)
        self.version += 1
        return entry

    def remove(self, cidr: str, kind: str, decision_id: str) -> bool:
        """Drop one decision; the entry goes with its last decision. False when it was not there."""
        net = ipaddress.ip_network(cidr, strict=False)
        table = self._by_len.get((net.version, net.prefixlen))
        kinds = table.get(int(net.network_address)) if table else None
        entry = kinds.get(kind) if kinds else None
        if entry is None or entry.decisions.pop(decision_id, None) is None:
            return False
        if not entry.decisions:
            self._drop(net, kind)
        self.version += 1
        return True

    def _drop(self, net: Network, kind: str) -> None:
        slot = (net.version, net.prefixlen)
        table = self._by_len[slot]
        kinds = table[int(net.network_address)]
        del kinds[kind]
        if not kinds:
            del table[int(net.network_address)]
        if not table:
            del self._by_len[slot]
            self._lens[net.version] = [n for n in self._lens[net.version] if n != net.prefixlen]

    def match(self, ip: str, now: float | None = None) -> RangeEntry | None:
        if not self._by_len:
            return None
        addr = client_address(ip)
        if addr is None:
            return None
        bits = 32 if addr.version == 4 else 128
        value = int(addr)
        now = self.clock() if now is None else now
        for plen in self._lens[addr.version]:
            kinds = self._by_len[(addr.version, plen)].get(value >> (bits - plen) << (bits - plen))
            if not kinds:
                continue
            for kind in self.KINDS:
                entry = kinds.get(kind)
                if entry is None:
                    continue
                if entry.until > now:
                    return entry
                self.expire(entry, now)
        return None

    def expire(self, entry: RangeEntry, now: float) -> None:
        for did in [d for d, (u, _) in entry.decisions.items() if u <= now]:
            del entry.decisions[did]
        if not entry.decisions:
            self._drop(entry.network, entry.kind)
        self.version += 1

    def entries(self, now: float | None = None) -> list[RangeEntry]:
        now = self.clock() if now is None else now
        out = [e for table in self._by_len.values() for kinds in table.values() for e in kinds.values()]
        return [e for e in out if e.until > now]

    def clear(self) -> None:
        self._by_len.clear()
        self._lens = {4: [], 6: []}
        self.version += 1
