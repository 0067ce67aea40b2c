"""A storm profile: which client classes to drive, how many, from which addresses, how they behave.

Everything about a class is data (TOML), so a user can describe their own traffic mix without code:

.. code-block:: toml

    duration = 30          # seconds of storm (the command line's --duration wins)
    topic = "storm"
    warmup = 2.0           # well-behaved clients connect before publishing starts
    drain = 3.0            # after the storm: streams stay open this long to receive the last events

    [[class]]
    name = "well_behaved"
    behaviour = "eventsource"
    clients = 200
    first_address = "127.20.0.1"

Behaviours (``behaviour =``): ``eventsource`` (honours ``retry:``, resumes with ``Last-Event-ID``, checks every
event once and in order), ``no_backoff`` (reconnects at once, ignoring ``retry:``), ``flapper`` (opens and closes
within 2 s), ``ua_rotator`` (a new User-Agent each connection), ``header_poor`` (a bare request: no Accept, no
User-Agent), ``slow_reader`` (stops reading once the stream is open; ``rcvbuf`` sets its socket's receive
buffer, so its window closes after a few events as a constrained client's does), ``botnet`` (many addresses, each at a modest
rate), ``scanner`` (probes scanner paths with browser User-Agents), ``publisher`` (POSTs events at a fixed rate).
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

BEHAVIOURS = ("eventsource", "no_backoff", "flapper", "ua_rotator", "header_poor", "slow_reader", "botnet",
              "scanner", "publisher")
#: Classes whose clients the server should limit, pace or block (every class but these is "abusive").
BENIGN = ("eventsource", "publisher")

BROWSER_UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 "
    "Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
)


class ProfileError(ValueError):
    """A profile that cannot be run, with the file and the field at fault."""


@dataclass
class ClassSpec:
    """One labelled client class."""

    name: str
    behaviour: str
    clients: int
    first_address: str
    addresses: int = 0                  # distinct source addresses (default: one per client)
    user_agents: list[str] = field(default_factory=lambda: list(BROWSER_UAS[:1]))
    headers: dict[str, str] = field(default_factory=dict)
    paths: list[str] = field(default_factory=lambda: ["/events?topic={topic}"])
    interval: float = 1.0               # seconds between a client's sessions (botnet, scanner, flapper pause)
    hold: list[float] = field(default_factory=lambda: [0.2, 1.5])  # seconds a short session stays open
    backoff: list[float] = field(default_factory=lambda: [1.0, 8.0])  # eventsource: exponential backoff bounds
    rate: float = 5.0                   # publisher: events per second (all publisher clients together)
    rcvbuf: int = 2048                  # slow_reader: SO_RCVBUF in bytes (0: the system's, autotuned)

    @property
    def abusive(self) -> bool:
        return self.behaviour not in BENIGN

    def address(self, i: int) -> str:
        """Source address of client ``i`` (clients share addresses round-robin when ``addresses`` < clients)."""
        n = self.addresses or self.clients
        return str(ipaddress.ip_address(self.first_address) + (i % n))


@dataclass
class Profile:
    duration: float = 30.0
    topic: str = "storm"
    warmup: float = 2.0
    drain: float = 3.0
    timeout: float = 10.0               # per request: connect and response head
    processes: int = 0                  # generator processes (0: one per CPU)
    seed: int = 0
    classes: list[ClassSpec] = field(default_factory=list)

    def scaled(self, factor: float) -> Profile:
        """The same mix with every class's client count multiplied (at least one client per class)."""
        out = Profile(**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "classes"})
        out.classes = [ClassSpec(**{**c.__dict__, "clients": max(1, round(c.clients * factor)),
                                    "addresses": max(1, round(c.addresses * factor)) if c.addresses else 0})
                       for c in self.classes]
        return out


def _class(raw: Any, where: str) -> ClassSpec:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a table")
    known = {f.name for f in fields(ClassSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ProfileError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    for key in ("name", "behaviour", "clients", "first_address"):
        if key not in raw:
            raise ProfileError(f"{where}: field {key!r} is required")
    spec = ClassSpec(**raw)
    if spec.behaviour not in BEHAVIOURS:
        raise ProfileError(f"{where}.behaviour: {spec.behaviour!r} is not one of {', '.join(BEHAVIOURS)}")
    if not isinstance(spec.clients, int) or spec.clients < 1 or spec.clients > 200_000:
        raise ProfileError(f"{where}.clients: expected an integer from 1 to 200000, got {spec.clients!r}")
    try:
        first = ipaddress.ip_address(spec.first_address)
    except ValueError:
        raise ProfileError(f"{where}.first_address: not an IP address: {spec.first_address!r}") from None
    last = first + max(spec.addresses or spec.clients, 1) - 1
    if first.version == 4 and last not in ipaddress.ip_network("0.0.0.0/0"):
        raise ProfileError(f"{where}: address range overflows")
    for key in ("interval", "rate"):
        value = getattr(spec, key)
        if not isinstance(value, int | float) or value <= 0:
            raise ProfileError(f"{where}.{key}: expected a positive number, got {value!r}")
    for key in ("hold", "backoff"):
        value = getattr(spec, key)
        if (not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, int | float) for v in value)
                or not 0 <= value[0] <= value[1]):
            raise ProfileError(f"{where}.{key}: expected [low, high] seconds with low <= high, got {value!r}")
    if not isinstance(spec.rcvbuf, int) or isinstance(spec.rcvbuf, bool) or not 0 <= spec.rcvbuf <= 1 << 26:
        raise ProfileError(f"{where}.rcvbuf: expected bytes from 0 to 67108864, got {spec.rcvbuf!r}")
    if not spec.user_agents and spec.behaviour not in ("header_poor", "publisher"):
        raise ProfileError(f"{where}.user_agents: at least one is needed")
    return spec


def parse_profile(data: dict[str, Any], source: str = "<profile>") -> Profile:
    known = {f.name for f in fields(Profile)} - {"classes"}
    unknown = sorted(set(data) - known - {"class"})
    if unknown:
        raise ProfileError(f"{source}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))}, "
                           f"[[class]])")
    profile = Profile(**{k: v for k, v in data.items() if k in known})
    raw_classes = data.get("class", [])
    if not isinstance(raw_classes, list) or not raw_classes:
        raise ProfileError(f"{source}: at least one [[class]] table is needed")
    profile.classes = [_class(c, f"{source}: class[{i}]") for i, c in enumerate(raw_classes)]
    names = [c.name for c in profile.classes]
    if len(set(names)) != len(names):
        raise ProfileError(f"{source}: class names must be unique, got {names}")
    ranges = sorted((int(ipaddress.ip_address(c.first_address)), c.addresses or c.clients, c.name)
                    for c in profile.classes if c.behaviour != "publisher")
    for (a, n, name), (b, _, other) in zip(ranges, ranges[1:], strict=False):
        if a + n > b:
            raise ProfileError(f"{source}: classes {name!r} and {other!r} overlap in their address ranges "
                               "(each class needs its own range so the labels stay true)")
    if profile.duration <= 0 or profile.duration > 24 * 3600:
        raise ProfileError(f"{source}: duration must be in (0, 86400] seconds")
    return profile


def load_profile(path: str | Path | None = None) -> Profile:
    """The profile at ``path``, or the default one shipped with stormguard (``stormguard/storm/default.toml``)."""
    if path is None:
        text = resources.files("stormguard.storm").joinpath("default.toml").read_text(encoding="utf-8")
        source = "default.toml"
    else:
        source = str(path)
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"{source}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{source}: {exc}") from None
    try:
        return parse_profile(data, source)
    except TypeError as exc:  # a wrongly typed value reaching a dataclass
        raise ProfileError(f"{source}: {exc}") from None
