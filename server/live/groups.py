"""Address groups under pressure: many addresses of one network opening streams that end within seconds.

A botnet spread over a network stays below every per-address rule (each of its thousand addresses comes back a few
times a minute), but an EventSource holds its stream: a network from which many addresses together make hundreds
of short-lived streams a minute is not a crowd of browsers. :class:`GroupPressure` counts short-lived streams
(the features' own definition, ``SHORT_LIVED_S``) per IPv4 /24 or IPv6 /64 (configurable); when one group makes
``threshold`` of them within ``window`` seconds, from at least ``min_addresses`` distinct addresses, it says so
with a level (the count starts again after each crossing): the first crossing puts the network in the lowest tier
(where the proof-of-work challenge lets a real browser prove itself), the next ones refuse it, each for
``block_seconds``,
through the gate's range table (no per-address store writes, no extra store read per connection).

Off by default (``[server] group_short_lived = 0``): a carrier-grade NAT or a campus network can legitimately put
many clients in one /24; turn it on where SSE clients are expected to hold their streams. State is bounded:
``max_groups`` networks (least recently active dropped first) and, per network, its short-lived stream times in the
window and at most ``4 × min_addresses`` addresses.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from stormguard.addresses import client_address


@dataclass
class _Group:
    times: deque[float] = field(default_factory=deque)
    addresses: dict[str, float] = field(default_factory=dict)
    fired_at: float = float("-inf")
    level: int = 0


@dataclass(frozen=True)
class Crossing:
    network: str
    level: int           # 1: lowest tier; 2 and more: refused
    count: int
    addresses: int


class GroupPressure:
    def __init__(self, *, threshold: int = 100, min_addresses: int = 20, window: float = 60.0,
                 block_seconds: float = 300.0, prefix_v4: int = 24, prefix_v6: int = 64,
                 max_groups: int = 10_000) -> None:
        if threshold < 1 or min_addresses < 1 or window <= 0 or block_seconds <= 0:
            raise ValueError("group pressure: threshold, min_addresses, window and block_seconds must be positive")
        if not (8 <= prefix_v4 <= 32 and 16 <= prefix_v6 <= 128):
            raise ValueError("group pressure: prefix_v4 in [8, 32], prefix_v6 in [16, 128]")
        self.threshold = threshold
        self.min_addresses = min_addresses
        self.window = window
        self.block_seconds = block_seconds
        self.prefix = {4: prefix_v4, 6: prefix_v6}
        self.max_groups = max_groups
        self._groups: OrderedDict[str, _Group] = OrderedDict()
        self.evicted = 0
        self.crossings = 0

    def __len__(self) -> int:
        return len(self._groups)

    def network_of(self, ip: str) -> str | None:
        addr = client_address(ip)
        if addr is None:
            return None
        return str(ipaddress.ip_network(f"{addr}/{self.prefix[addr.version]}", strict=False))

    def short_lived(self, ip: str, ts: float) -> Crossing | None:
        """Count one short-lived stream of ``ip`` that ended at ``ts``; a :class:`Crossing` when its network just
        crossed the threshold."""
        net = self.network_of(ip)
        if net is None:
            return None
        groups = self._groups
        g = groups.get(net)
        if g is None:
            g = groups[net] = _Group()
            while len(groups) > self.max_groups:
                groups.popitem(last=False)
                self.evicted += 1
        else:
            groups.move_to_end(net)
        horizon = ts - self.window
        times = g.times
        times.append(ts)
        while times and times[0] < horizon:
            times.popleft()
        g.addresses[ip] = ts
        if len(g.addresses) > 4 * self.min_addresses:
            g.addresses = {a: t for a, t in g.addresses.items() if t >= horizon}
            while len(g.addresses) > 4 * self.min_addresses:        # all recent: keep the newest
                g.addresses.pop(next(iter(g.addresses)))
        if len(times) < self.threshold:
            return None
        distinct = sum(1 for t in g.addresses.values() if t >= horizon)
        if distinct < self.min_addresses:
            return None
        if ts - g.fired_at > self.block_seconds + self.window:
            g.level = 0                                  # the last action ran out long ago: start over
        g.level += 1
        g.fired_at = ts
        count = len(times)
        times.clear()
        self.crossings += 1
        return Crossing(net, g.level, count, distinct)
