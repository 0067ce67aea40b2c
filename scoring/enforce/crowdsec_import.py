"""stormguard as a CrowdSec bouncer: the Local API's decisions applied to the reputation store.

* ``ban`` on an ``Ip`` → a block in the store until the decision ends, reason ``crowdsec:<scenario>`` (so the
  admin API, ``stormguard reputation get`` and every server sharing the store see it). Several decisions on one
  address: the block lasts as long as the longest; deleting one keeps the others' block.
* ``ban`` on a ``Range`` → one entry of the :class:`~.ranges.RangeTable` the gate consults (never one key per
  address).
* ``captcha`` (``Ip`` or ``Range``) → a range-table entry of kind ``captcha``: the gate caps such a client at the
  lowest tier, where the proof-of-work challenge (``[server] challenge``) lets a real browser prove itself.
* A deleted or expired decision lifts what it set; a block that something else (a live rule, an operator) has set
  since is left alone.
* Other scopes (``Country``, ``AS``…) and types are counted as skipped, with a log line naming them once.
* Decisions whose scenario starts with ``stormguard/`` are stormguard's own exports coming back: skipped.

:meth:`DecisionImporter.run` pulls ``startup=true`` once (and again after every failure, so deletions missed while
the Local API was unreachable are reconciled), then deltas every ``interval`` seconds, backing off on errors.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stormguard.scoring.enforce.lapi import LapiError, LocalApi, parse_duration
from stormguard.scoring.enforce.ranges import RangeTable

from stormguard.addresses import client_address

log = logging.getLogger("stormguard.crowdsec")
OWN_PREFIX = "stormguard/"


@dataclass
class ImportStats:
    pulls: int = 0
    errors: int = 0
    applied: int = 0          # decisions that changed the store or the range table
    lifted: int = 0
    skipped: dict[str, int] = field(default_factory=dict)    # why -> count
    last_error: str = ""
    last_pull: float = 0.0
    connected: bool = False

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


class DecisionImporter:
    """Applies Local API decision streams to a store and a range table (see the module docstring)."""

    def __init__(self, store: Any, ranges: RangeTable, api: LocalApi | None = None, *, interval: float = 10.0,
                 max_backoff: float = 120.0, clock: Callable[[], float] = time.time, concurrency: int = 64,
                 full_pulls: bool = False) -> None:
        self.store = store
        self.concurrency = max(1, concurrency)
        # every pull a startup pull (the whole active set, reconciled): for several processes sharing one bouncer
        # key, which would otherwise split the deltas between them
        self.full_pulls = full_pulls
        self.ranges = ranges
        self.api = api
        self.interval = interval
        self.max_backoff = max_backoff
        self.clock = clock
        self.stats = ImportStats()
        # address -> {decision id: (until, reason)}: the ban decisions behind each store block we set
        self._ip_bans: dict[str, dict[str, tuple[float, str]]] = {}
        self._warned: set[str] = set()

    # -- one payload -----------------------------------------------------------------------------------------
    def _parse(self, d: Any) -> tuple[str, str, str, str, float, str] | None:
        """(id, scope, type, value, seconds left, scenario), or None (counted as skipped)."""
        if not isinstance(d, dict):
            self.stats.skip("malformed")
            return None
        try:
            did = str(d["id"])
            scope, kind, value = str(d["scope"]).lower(), str(d["type"]).lower(), str(d["value"]).strip()
            left = parse_duration(str(d.get("duration", "")))
        except (KeyError, ValueError) as exc:
            self.stats.skip("malformed")
            self._warn_once("malformed", f"malformed decision skipped ({exc}): {str(d)[:200]}")
            return None
        scenario = str(d.get("scenario") or d.get("origin") or "unknown")
        return did, scope, kind, value, left, scenario

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("crowdsec import: %s", message)

    async def apply(self, new: list[Any], deleted: list[Any], now: float | None = None,
                    startup: bool = False) -> int:
        """Apply one stream payload; returns how many decisions changed something. With ``startup`` the payload
        is the whole active set: anything imported earlier and absent from it is lifted."""
        now = self.clock() if now is None else now
        changed = 0
        if startup:
            changed += await self._reconcile(new, now)
        changed += await self._each(deleted, self._lift, now)       # deletions first, as the Local API orders them
        changed += await self._each(new, self._set, now)
        self.stats.applied += changed
        return changed

    async def _each(self, decisions: list[Any], fn: Any, now: float) -> int:
        """``fn`` on every decision: those on one value in payload order, distinct values ``concurrency`` at a
        time (a Redis store answers one round trip per block: in flight together they are several times faster)."""
        chains: dict[str, list[tuple[str, str, str, str, float, str]]] = {}
        for d in decisions:
            p = self._parse(d)
            if p is not None:
                chains.setdefault(p[3], []).append(p)

        async def chain(items: list[tuple[str, str, str, str, float, str]]) -> int:
            return sum([await fn(*p, now=now) for p in items])

        total, batch = 0, list(chains.values())
        for i in range(0, len(batch), self.concurrency):
            total += sum(await asyncio.gather(*(chain(c) for c in batch[i:i + self.concurrency])))
        return total

    def _target(self, did: str, scope: str, kind: str, value: str, scenario: str) -> tuple[str, str] | None:
        """("ip"|"range", normalised value), or None when skipped."""
        if scenario.startswith(OWN_PREFIX):
            self.stats.skip("own")
            return None
        if kind not in ("ban", "captcha"):
            self.stats.skip(f"type:{kind}")
            self._warn_once(f"type:{kind}", f"decisions of type {kind!r} are not applied (ban, captcha are)")
            return None
        try:
            if scope == "ip":
                addr = client_address(value)
                if addr is None:
                    raise ValueError(value)
                return "ip", str(addr)
            if scope == "range":
                return "range", str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            self.stats.skip("bad_value")
            self._warn_once(f"value:{value}", f"decision {did}: {value!r} is not an address of scope {scope}")
            return None
        self.stats.skip(f"scope:{scope}")
        self._warn_once(f"scope:{scope}", f"decisions of scope {scope!r} are not applied (Ip, Range are)")
        return None

    async def _set(self, did: str, scope: str, kind: str, value: str, left: float, scenario: str,
                   now: float) -> int:
        target = self._target(did, scope, kind, value, scenario)
        if target is None:
            return 0
        if left <= 0:
            self.stats.skip("expired")
            return 0
        where, value = target
        reason = f"crowdsec:{scenario}"
        until = now + left
        if where == "ip" and kind == "ban":
            bans = self._ip_bans.setdefault(value, {})
            before = max((u for u, _ in bans.values()), default=0.0)
            bans[did] = (until, reason)
            if until > before + 1.0:        # a full pull repeats live decisions: no store write for those
                await self.store.block(value, until, reason, now=now)
                return 1
            return 0
        cidr = value if where == "range" else str(ipaddress.ip_network(value))
        self.ranges.add(cidr, kind, did, until, reason)
        return 1

    async def _lift(self, did: str, scope: str, kind: str, value: str, left: float, scenario: str,
                    now: float) -> int:
        target = self._target(did, scope, kind, value, scenario)
        if target is None:
            return 0
        where, value = target
        if where == "ip" and kind == "ban":
            bans = self._ip_bans.get(value)
            if not bans or bans.pop(did, None) is None:
                return 0
            return await self._reblock(value, bans, now)
        cidr = value if where == "range" else str(ipaddress.ip_network(value))
        if self.ranges.remove(cidr, kind, did):
            self.stats.lifted += 1
            return 1
        return 0

    async def _reblock(self, ip: str, bans: dict[str, tuple[float, str]], now: float) -> int:
        """After a ban decision on ``ip`` went away: keep the longest remaining one, or lift our block."""
        live = {d: v for d, v in bans.items() if v[0] > now}
        if live:
            self._ip_bans[ip] = live
            until, reason = max(live.values())
            await self.store.block(ip, until, reason, now=now)
            return 1
        self._ip_bans.pop(ip, None)
        rep = await self.store.get(ip, now)
        if rep.blocked(now) and rep.reasons and rep.reasons[-1].startswith("crowdsec:"):
            await self.store.unblock(ip, "crowdsec:deleted", now=now)
            self.stats.lifted += 1
            return 1
        return 0

    async def _reconcile(self, new: list[Any], now: float) -> int:
        """A startup pull is the whole active set: lift what we imported before that is no longer in it."""
        active: set[str] = set()
        for d in new:
            if isinstance(d, dict) and "id" in d:
                active.add(str(d["id"]))
        changed = 0
        for ip, bans in list(self._ip_bans.items()):
            gone = [did for did in bans if did not in active]
            for did in gone:
                del bans[did]
            if gone:
                changed += await self._reblock(ip, bans, now)
        for entry in self.ranges.entries(now=float("-inf")):
            for did in [d for d in entry.decisions if d not in active]:
                if self.ranges.remove(str(entry.network), entry.kind, did):
                    self.stats.lifted += 1
                    changed += 1
        return changed

    # -- the loop ----------------------------------------------------------------------------------------------
    async def pull(self, startup: bool = False) -> int:
        if self.api is None:
            raise LapiError("no Local API configured")
        new, deleted = await self.api.stream(startup=startup)
        self.stats.pulls += 1
        self.stats.last_pull = self.clock()
        return await self.apply(new, deleted, startup=startup)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Pull until ``stop`` is set (or the task is cancelled); errors are logged, counted and retried with
        exponential backoff (``interval`` … ``max_backoff``); the server keeps serving on its own decisions."""
        stop = stop or asyncio.Event()
        startup, delay = True, self.interval
        while not stop.is_set():
            try:
                await self.pull(startup=startup)
            except (LapiError, OSError) as exc:
                self.stats.errors += 1
                self.stats.connected = False
                self.stats.last_error = str(exc)
                log.error("crowdsec import: %s; retrying in %.0f s", exc, delay)
                startup, wait = True, delay
                delay = min(delay * 2, self.max_backoff)
            else:
                if not self.stats.connected:
                    log.info("crowdsec import: connected to %s", self.api.url if self.api else "-")
                self.stats.connected = True
                startup, wait, delay = self.full_pulls, self.interval, self.interval
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except TimeoutError:
                pass
