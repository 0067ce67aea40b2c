"""stormguard's blocks as an nftables table: IPv4 and IPv6 sets whose elements time out when the block ends.

    table inet stormguard {
        set blocked4 { type ipv4_addr; flags timeout; }
        set blocked6 { type ipv6_addr; flags timeout; }
        chain input { type filter hook input priority -10; policy accept;
                      ip saddr @blocked4 drop; ip6 saddr @blocked6 drop; }
    }

The table is declared with ``add`` (idempotent) and the chain's two rules are rewritten with ``flush chain``, so
applying twice leaves one table. Elements are synced incrementally against what the kernel holds (``nft -j list
set``): new blocks are ``add element … timeout Ns``, extended ones ``delete element`` + ``add element`` in the same
transaction (nft does not change an element's timeout in place), blocks lifted early ``delete element``; expired
ones the kernel drops by itself. One ``nft -f -`` call per sync: the whole change is atomic.

``command`` is how nft is run: ``["nft"]``, ``["sudo", "nft"]``, or ``["nsenter", "--net=/proc/PID/ns/net",
"nft"]`` / ``["ip", "netns", "exec", "NAME", "nft"]`` for a namespace.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from stormguard.scoring.enforce.blocks import Block

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
SLACK = 2.0       # seconds: an element whose timeout is within this of the block's end is left as it is


class NftError(OSError):
    pass


@dataclass
class Plan:
    add: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: {"blocked4": [], "blocked6": []})
    delete: dict[str, list[str]] = field(default_factory=lambda: {"blocked4": [], "blocked6": []})

    def __bool__(self) -> bool:
        return any(self.add.values()) or any(self.delete.values())

    @property
    def counts(self) -> dict[str, int]:
        return {"add": sum(map(len, self.add.values())), "delete": sum(map(len, self.delete.values()))}


class NftSets:
    def __init__(self, table: str = "stormguard", command: Sequence[str] = ("nft",), chain: bool = True,
                 priority: int = -10, timeout: float = 30.0) -> None:
        if not _NAME.match(table):
            raise ValueError(f"nftables table name {table!r}: letters, digits and _ only, starting with a letter")
        self.table = table
        self.command = list(command)
        self.chain = chain
        self.priority = priority
        self.timeout = timeout

    # -- script text -----------------------------------------------------------------------------------------
    def declare(self) -> str:
        t = f"inet {self.table}"
        lines = [f"add table {t}",
                 f"add set {t} blocked4 {{ type ipv4_addr; flags timeout; }}",
                 f"add set {t} blocked6 {{ type ipv6_addr; flags timeout; }}"]
        if self.chain:
            lines += [f"add chain {t} input {{ type filter hook input priority {self.priority}; policy accept; }}",
                      f"flush chain {t} input",
                      f"add rule {t} input ip saddr @blocked4 drop",
                      f"add rule {t} input ip6 saddr @blocked6 drop"]
        return "\n".join(lines) + "\n"

    def plan(self, blocks: Iterable[Block], current: dict[str, dict[str, float]], now: float) -> Plan:
        """What to change so the sets hold exactly ``blocks`` (``current``: set → {address: seconds left})."""
        p = Plan()
        want: dict[str, dict[str, int]] = {"blocked4": {}, "blocked6": {}}
        for b in blocks:
            version = b.version
            left = int(b.until - now + 0.999)
            if version is None or left < 1:
                continue
            name = "blocked4" if version == 4 else "blocked6"
            addr = b.address
            want[name][addr] = max(left, want[name].get(addr, 0))
        for name, wanted in want.items():
            have = current.get(name, {})
            for addr, left in sorted(wanted.items()):
                if addr not in have:
                    p.add[name].append((addr, left))
                elif have[addr] + SLACK < left:
                    p.delete[name].append(addr)
                    p.add[name].append((addr, left))
            p.delete[name] = sorted([*p.delete[name], *(a for a in have if a not in wanted)])
        return p

    def elements(self, p: Plan) -> str:
        t = f"inet {self.table}"
        lines = []
        for name in ("blocked4", "blocked6"):
            for chunk in _chunks(p.delete[name], 1000):
                lines.append(f"delete element {t} {name} {{ {', '.join(chunk)} }}")
            for chunk in _chunks(p.add[name], 1000):
                lines.append(f"add element {t} {name} {{ " + ", ".join(f"{a} timeout {s}s" for a, s in chunk)
                             + " }")
        return "\n".join(lines) + ("\n" if lines else "")

    def script(self, blocks: Iterable[Block], now: float, current: dict[str, dict[str, float]] | None = None) -> str:
        """The declaration plus the elements: a complete script for an empty ruleset (``current`` None) or the
        incremental change against ``current``."""
        return self.declare() + self.elements(self.plan(blocks, current or {}, now))

    # -- running nft -------------------------------------------------------------------------------------------
    def run(self, args: Sequence[str], stdin: str | None = None) -> str:
        try:
            done = subprocess.run([*self.command, *args], input=stdin, capture_output=True, text=True,
                                  timeout=self.timeout)
        except FileNotFoundError:
            raise NftError(f"{self.command[0]}: not found (install nftables, or pass --nft-command)") from None
        except subprocess.TimeoutExpired:
            raise NftError(f"{' '.join(self.command)} {' '.join(args)}: no answer in {self.timeout:g} s") from None
        if done.returncode != 0:
            raise NftError(f"{' '.join(self.command)} {' '.join(args)}: exit {done.returncode}: "
                           f"{done.stderr.strip()[:500]}")
        return done.stdout

    def current(self) -> dict[str, dict[str, float]]:
        """{set: {address: seconds left}} as the kernel holds them (empty when the table does not exist yet)."""
        out: dict[str, dict[str, float]] = {"blocked4": {}, "blocked6": {}}
        for name in out:
            try:
                text = self.run(["-j", "list", "set", "inet", self.table, name])
            except NftError as exc:
                if "No such file or directory" in str(exc) or "does not exist" in str(exc):
                    continue
                raise
            out[name] = parse_set(text)
        return out

    def apply(self, text: str) -> None:
        self.run(["-f", "-"], stdin=text)

    def sync(self, blocks: Iterable[Block], now: float, dry_run: bool = False) -> tuple[Plan, str]:
        """Declare the table and apply the incremental change; ``dry_run`` only computes the script."""
        current = self.current()
        p = self.plan(blocks, current, now)
        text = self.declare() + self.elements(p)
        if not dry_run:
            self.apply(text)
        return p, text


def parse_set(text: str) -> dict[str, float]:
    """{address: seconds left} from ``nft -j list set`` output."""
    try:
        data = json.loads(text)
    except ValueError:
        raise NftError(f"nft -j list set: not JSON: {text[:200]!r}") from None
    out: dict[str, float] = {}
    for item in data.get("nftables", []):
        s = item.get("set")
        if not s:
            continue
        for e in s.get("elem", []) or []:
            if isinstance(e, dict) and "elem" in e:
                e = e["elem"]
                val = e.get("val")
                left = float(e.get("expires", e.get("timeout", 0)))
            else:
                val, left = e, 0.0
            if isinstance(val, str):
                out[val] = left
    return out


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
