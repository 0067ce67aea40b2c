"""Identity layer: the client address and TLS fingerprints, believed from headers only when a trusted proxy sent them.

Why rightmost-untrusted: every hop appends to ``X-Forwarded-For``/``Forwarded``, so only entries added by our own
proxies are trustworthy; the first address (from the right) that is not one of them is the real client, and
anything to its left is client-controlled. Malformed values are counted and ignored, never fatal.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from stormguard.server.context import SCOPE_KEY, TLS_STATE_KEY, ClientIdentity, RequestContext

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_JA3_STRING = re.compile(r"^\d{1,5},[\d-]*,[\d-]*,[\d-]*,[\d-]*$")
_JA4 = re.compile(r"^[tqd][0-9s]{2}[di][0-9]{2}[0-9]{2}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}$")
_SNI = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$")
_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("[^"]*"|[^;,\s]*)', re.I)


def parse_ip(value: str) -> str | None:
    """A bare address from a forwarded hop: strips ports, brackets and quotes; None when not an IP address."""
    v = value.strip().strip('"')
    if v.startswith("["):
        end = v.find("]")
        if end < 0:
            return None
        v = v[1:end]
    elif v.count(":") == 1:       # IPv4 with port
        v = v.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        return None


def _forwarded_hops(value: str) -> list[str] | None:
    """``for=`` of each element of an RFC 7239 ``Forwarded`` header, in order; None when an element has none."""
    hops: list[str] = []
    for element in value.split(","):
        m = _FOR.search(element)
        if m is None:
            return None
        hops.append(m.group(1))
    return hops


class TrustedProxies:
    """Membership test for the configured proxy networks, cached per peer (peers are few; lookups are many)."""

    CACHE_SIZE = 4096     # peers remembered (a per-client structure: see server/ops/bounds.py)

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[IPNet, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        # no proxies configured: nothing to remember per peer (a cache here grew with every new client address)
        self.contains: Callable[[str], bool] = (lru_cache(maxsize=self.CACHE_SIZE)(self._contains) if self.networks
                                                else self._contains)

    def cached(self) -> int:
        info = getattr(self.contains, "cache_info", None)
        return info().currsize if info is not None else 0

    def _contains(self, ip: str) -> bool:
        if not self.networks:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)


def token_key(scope: dict[str, Any]) -> str | None:
    """A short hash of the bearer token, so limiter keys never hold secrets."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return hashlib.blake2b(value[7:].strip(), digest_size=8).hexdigest()
    return None


def check_proxy_headers(proxy_headers: Iterable[str]) -> tuple[str, ...]:
    """The forwarding header(s) to believe, lower-cased: at most one.

    Why one: a proxy sets one of ``Forwarded``/``X-Forwarded-For`` and passes the other through from the client,
    so with two configured and "first present wins", any client picks its own address by sending the other one.
    Name the header your proxy sets (and have the proxy strip or overwrite the rest: README, "Behind a proxy").
    """
    names = tuple(h.strip().lower() for h in proxy_headers)
    if len(names) > 1:
        raise ValueError(f"proxy_headers = {list(names)}: name only the one forwarding header your trusted proxy "
                         "sets (a client can send the other, and would choose its own address)")
    return names


class IdentityMiddleware:
    """Outermost layer: builds ``scope["stormguard"]`` (a :class:`RequestContext`) for every HTTP request."""

    def __init__(self, app: Any, *, trusted_proxies: Iterable[str] | TrustedProxies = (),
                 proxy_headers: Iterable[str] = ("x-forwarded-for",),
                 ja3_header: str = "x-ja3", ja4_header: str = "x-ja4", sni_header: str = "x-tls-sni",
                 on_malformed: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.trusted = (trusted_proxies if isinstance(trusted_proxies, TrustedProxies)
                        else TrustedProxies(trusted_proxies))
        self.proxy_headers = tuple(h.encode() for h in check_proxy_headers(proxy_headers))
        self.ja3_header = ja3_header.lower().encode()
        self.ja4_header = ja4_header.lower().encode()
        self.sni_header = sni_header.lower().encode()
        self.on_malformed = on_malformed or (lambda header: None)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = RequestContext(self.identify(scope))
        scope[SCOPE_KEY] = ctx
        state = scope.get("state")
        if isinstance(state, dict):
            state[SCOPE_KEY] = ctx
        await self.app(scope, receive, send)

    def identify(self, scope: dict[str, Any]) -> ClientIdentity:
        """The identity of this request (pure function of the scope and the trusted networks)."""
        client = scope.get("client") or ("", 0)
        peer, port = client[0], client[1]
        ident = ClientIdentity(ip=peer, port=port, peer_ip=peer, token_key=token_key(scope))
        hello = (scope.get("state") or {}).get(TLS_STATE_KEY)  # TLS terminated here: the hello we read ourselves
        if hello is not None:
            ident.ja3, ident.ja4, ident.sni, ident.alpn = hello["ja3"], hello["ja4"], hello["sni"], hello["alpn"]
        if not self.trusted.contains(peer):
            return ident
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", ()):
            if name in headers:
                headers[name] += b"," + value      # repeated header lines form one list
            else:
                headers[name] = value
        for hname in self.proxy_headers:
            raw = headers.get(hname)
            if raw is None:
                continue
            ip = self._client_from(hname, raw)
            if ip is not None:
                ident.ip, ident.via_proxy, ident.port = ip, True, 0
            break
        # the peer is a trusted proxy: the hello this server read is the proxy's own, only its headers count
        ident.ja3 = self._fingerprint(headers.get(self.ja3_header), "ja3")
        ident.ja4 = self._fingerprint(headers.get(self.ja4_header), "ja4")
        ident.sni = self._fingerprint(headers.get(self.sni_header), "sni")
        ident.alpn = None
        return ident

    def _client_from(self, hname: bytes, raw: bytes) -> str | None:
        """Rightmost untrusted hop of a forwarding header; None (and counted) when the header is unusable."""
        name = hname.decode()
        try:
            text = raw.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            self.on_malformed(name)
            return None
        hops = _forwarded_hops(text) if hname == b"forwarded" else text.split(",")
        if not hops:
            self.on_malformed(name)
            return None
        ip: str | None = None
        for hop in reversed(hops):
            ip = parse_ip(hop)
            if ip is None:           # garbage, "unknown" or an obfuscated identifier: stop, do not look further left
                self.on_malformed(name)
                return None
            if not self.trusted.contains(ip):
                return ip
        return ip                    # every hop is one of ours: the leftmost is the client

    def _fingerprint(self, raw: bytes | None, kind: str) -> str | None:
        if raw is None:
            return None
        value = raw.decode("latin-1").strip().lower()
        if kind == "ja3":
            if _HEX32.match(value):
                return value
            if _JA3_STRING.match(value):
                return hashlib.md5(value.encode(), usedforsecurity=False).hexdigest()
        elif kind == "ja4" and _JA4.match(value):
            return value
        elif kind == "sni" and _SNI.match(value):
            return value.rstrip(".")
        self.on_malformed(kind)
        return None
