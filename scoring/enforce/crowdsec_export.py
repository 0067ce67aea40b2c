"""stormguard as a CrowdSec source: its blocks pushed to the Local API as alerts with ban decisions.

Every ``scan_interval`` seconds the exporter lists what stormguard blocks (:func:`~.blocks.current_blocks`) and
queues each block that is new or ends later than what was last queued for that client — the model's, the live
rules' and the operators' blocks alike; blocks imported from CrowdSec are never sent back. Queued blocks go to the
Local API ``batch`` alerts per call, at most one call per ``push_interval`` (rate-limited and batched). Scenario
names are ``stormguard/model``, ``stormguard/rules`` and ``stormguard/operator``; each decision's duration is the
block's remaining time, so every CrowdSec bouncer enforces it exactly as long.

A Local API outage (refused, timeout, 5xx, garbage) leaves the rows in the on-disk :class:`~.spool.Spool` and is
retried with exponential backoff; they are sent when it is back, unless their block has ended meanwhile (then
there is nothing left to enforce, and they are counted as expired).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stormguard.scoring.enforce.blocks import Block, current_blocks
from stormguard.scoring.enforce.lapi import LapiError, LocalApi, go_duration
from stormguard.scoring.enforce.spool import Spool

log = logging.getLogger("stormguard.crowdsec")
SCENARIO_PREFIX = "stormguard/"


def alert_for(block: Block, now: float, hostname: str = "stormguard") -> dict[str, Any]:
    """One Local API alert (the ``models.Alert`` of the 1.x API) carrying one ban decision."""
    scenario = SCENARIO_PREFIX + block.source
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    scope = "Ip"
    return {
        "scenario": scenario, "scenario_hash": "", "scenario_version": "1",
        "message": f"{hostname}: {block.key} blocked by stormguard ({block.source}: {block.reason})",
        "events_count": 1, "start_at": stamp, "stop_at": stamp, "capacity": 0, "leakspeed": "0",
        "simulated": False, "remediation": True, "events": [],
        "labels": None,
        "source": {"scope": scope, "value": block.key, "ip": block.key},
        "decisions": [{"origin": "stormguard", "type": "ban", "scope": scope, "value": block.key,
                       "duration": go_duration(block.until - now), "scenario": scenario}],
    }


@dataclass
class ExportStats:
    queued: int = 0
    pushed: int = 0
    calls: int = 0
    errors: int = 0
    expired: int = 0
    last_error: str = ""
    connected: bool = False


class AlertExporter:
    def __init__(self, engine: Any, api: LocalApi | None, spool: Spool, *, scan_interval: float = 2.0,
                 push_interval: float = 5.0, batch: int = 100, max_backoff: float = 120.0,
                 hostname: str = "stormguard", clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.api = api
        self.spool = spool
        self.scan_interval = scan_interval
        self.push_interval = push_interval
        self.batch = max(1, batch)
        self.max_backoff = max_backoff
        self.hostname = hostname
        self.clock = clock
        self.stats = ExportStats()
        self._sent: dict[str, float] = {}         # key -> block end last queued (re-queued only when extended)

    async def scan(self, now: float | None = None) -> int:
        """Queue the blocks that are new or extended since the last scan; returns how many were queued."""
        now = self.clock() if now is None else now
        rows = []
        current = await current_blocks(self.engine, now)
        live = set()
        for b in current:
            if b.source == "crowdsec" or b.version is None:
                continue
            live.add(b.key)
            if b.until > self._sent.get(b.key, 0.0) + 1.0:
                rows.append((b.key, b.until, b.reason, b.source))
                self._sent[b.key] = b.until
        for key in [k for k in self._sent if k not in live]:
            del self._sent[key]
        self.spool.put(rows, now)
        self.stats.queued += len(rows)
        return len(rows)

    async def push(self, now: float | None = None) -> int:
        """Send up to ``batch`` queued blocks in one call; returns how many the Local API accepted. Raises
        :class:`LapiError` on failure (the rows stay queued)."""
        now = self.clock() if now is None else now
        self.stats.expired += self.spool.expire(now)
        rows = self.spool.peek(self.batch)
        if not rows or self.api is None:
            return 0
        alerts = [alert_for(Block(k, u, r, s), now, self.hostname) for k, u, r, s, _ in rows]
        await self.api.push_alerts(alerts)
        self.spool.done(rows)
        self.stats.calls += 1
        self.stats.pushed += len(rows)
        return len(rows)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Scan and push until ``stop`` is set or the task is cancelled (see the module docstring)."""
        stop = stop or asyncio.Event()
        next_scan = next_push = 0.0
        delay = self.push_interval
        while not stop.is_set():
            mono = time.monotonic()
            if mono >= next_scan:
                try:
                    await self.scan()
                except Exception as exc:  # noqa: BLE001 - a store outage: the next scan retries
                    log.warning("crowdsec export: listing blocks failed: %s: %s", type(exc).__name__, exc)
                next_scan = mono + self.scan_interval
            if mono >= next_push:
                try:
                    sent = await self.push()
                except (LapiError, OSError) as exc:
                    self.stats.errors += 1
                    self.stats.connected = False
                    self.stats.last_error = str(exc)
                    log.error("crowdsec export: %s; %d blocks stay queued, retrying in %.0f s", exc,
                              len(self.spool), delay)
                    next_push = mono + delay
                    delay = min(delay * 2, self.max_backoff)
                else:
                    if sent:
                        self.stats.connected = True
                    delay = self.push_interval
                    # a full batch: the next one right after the rate limit; else wait for the interval
                    next_push = mono + self.push_interval
            wait = max(0.01, min(next_scan, next_push) - time.monotonic())
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except TimeoutError:
                pass
