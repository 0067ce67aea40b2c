"""Evidence beyond counters: known-bad JA3 lists, a browser User-Agent over a library TLS stack, allow-lists.

These turn raw connection facts (ip, User-Agent, JA3) into boolean features (``ja3_bad``, ``ua_tls_mismatch``)
that rules can score, and decide who must never be blocked (allow-listed networks, verified crawlers).
"""

from __future__ import annotations

import csv
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stormguard.config import CrawlerConfig, ReputationConfig

_MD5 = re.compile(r"^[0-9a-f]{32}$")
_BROWSER_UA = re.compile(r"Mozilla/5\.0 .*(Chrome|Firefox|Safari|Edg|OPR)/", re.I)
_BOT_UA = re.compile(r"bot|crawl|spider|slurp|curl|wget|python|java/|go-http|okhttp|httpclient", re.I)
_LIBRARY_APP = re.compile(
    r"python|curl|wget|\bjava\b|golang|\bgo\b|openssl|requests|urllib|okhttp|libcurl|\bphp\b|ruby|perl|node"
    r"|dotnet|powershell|httpclient|tor\b|nmap|zgrab|masscan", re.I)
_BROWSER_APP = re.compile(r"chrome|chromium|firefox|safari|edge|opera|webkit|brave|vivaldi", re.I)


def load_ja3_list(path: str | Path) -> dict[str, str]:
    """JA3 MD5 → label from an SSLBL CSV (``ja3_md5,Firstseen,Lastseen,Listingreason``, ``#`` comments), a
    ``hash,"application"`` CSV (salesforce/ja3) or JSON lines with ``ja3_hash`` and ``desc`` (trisulnsm)."""
    text = Path(path).read_text(errors="replace")
    out: dict[str, str] = {}
    if text.lstrip().startswith("{"):
        for line in text.splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            h = str(row.get("ja3_hash", "")).lower()
            if _MD5.match(h):
                out[h] = str(row.get("desc", ""))
        return out
    for row in csv.reader(line for line in text.splitlines() if not line.startswith("#")):
        if not row:
            continue
        h = row[0].strip().lower()
        if _MD5.match(h):
            out[h] = (row[-1] if len(row) > 1 else "").strip()
    return out


def library_ja3s(apps: Mapping[str, str]) -> frozenset[str]:
    """The JA3s whose application label names a TLS library or tool and no browser."""
    return frozenset(h for h, app in apps.items() if _LIBRARY_APP.search(app) and not _BROWSER_APP.search(app))


def claims_browser(ua: str | None) -> bool:
    return bool(ua) and bool(_BROWSER_UA.search(ua or "")) and not _BOT_UA.search(ua or "")


@dataclass(frozen=True)
class Crawler:
    name: str
    pattern: re.Pattern[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def from_config(cls, c: CrawlerConfig) -> Crawler:
        return cls(c.name, re.compile(c.ua_pattern, re.I),
                   tuple(ipaddress.ip_network(n, strict=False) for n in c.networks))


@dataclass
class EvidenceBuilder:
    """Adds list-based evidence to a feature mapping and answers "may this client ever be blocked?"."""

    bad_ja3: dict[str, str] = field(default_factory=dict)
    library_ja3: frozenset[str] = frozenset()
    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    crawlers: tuple[Crawler, ...] = ()

    @classmethod
    def from_config(cls, cfg: ReputationConfig) -> EvidenceBuilder:
        bad = load_ja3_list(cfg.bad_ja3_path) if cfg.bad_ja3_path else {}
        lib = library_ja3s(load_ja3_list(cfg.library_ja3_path)) if cfg.library_ja3_path else frozenset()
        nets = tuple(ipaddress.ip_network(n, strict=False) for n in cfg.allow_networks)
        return cls(bad, lib, nets, tuple(Crawler.from_config(c) for c in cfg.verified_crawlers))

    def allowed(self, ip: str | None, ua: str | None = None) -> str | None:
        """Why this client is allow-listed (``network`` or ``crawler:<name>``), or None.

        A crawler counts only when its User-Agent *and* its address match: a UA alone is trivially forged.
        """
        if not ip:
            return None
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if any(addr in net for net in self.allow_networks):
            return "network"
        if ua:
            for c in self.crawlers:
                if c.pattern.search(ua) and any(addr in net for net in c.networks):
                    return f"crawler:{c.name}"
        return None

    def build(self, features: Mapping[str, Any] | None = None, ua: str | None = None,
              ja3: str | None = None) -> dict[str, Any]:
        """``features`` plus ``ja3_bad`` and ``ua_tls_mismatch`` (only when a JA3 is known)."""
        ev: dict[str, Any] = dict(features or {})
        if ja3:
            h = ja3.lower()
            ev.setdefault("ja3_bad", h in self.bad_ja3)
            if self.library_ja3:
                ev.setdefault("ua_tls_mismatch", claims_browser(ua) and h in self.library_ja3)
        return ev
