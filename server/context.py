"""The per-request context the layers share through ``scope["stormguard"]`` (and ``request.state.stormguard``).

One small slotted object per request instead of many scope keys: the identity layer creates it, inner layers read
and annotate it (tier, score, degraded), and the hub uses it to choose ``retry:`` and enforce tier limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCOPE_KEY = "stormguard"
#: Key of the ClientHello fingerprint in the ASGI ``state`` when this server terminates TLS (server/tls_hello.py).
TLS_STATE_KEY = "stormguard.tls_hello"


@dataclass(slots=True)
class ClientIdentity:
    """Who the client is, as far as the socket and *trusted* proxies tell."""

    ip: str
    port: int = 0
    peer_ip: str = ""
    via_proxy: bool = False
    ja3: str | None = None
    ja4: str | None = None
    sni: str | None = None
    alpn: str | None = None        # offered ALPN list (from the ClientHello this server read itself)
    token_key: str | None = None   # short hash of the bearer token (the token itself is never stored)


@dataclass(slots=True)
class RequestContext:
    """Identity plus the annotations of the layers it passed (so retry/quota/audit see one coherent picture)."""

    identity: ClientIdentity
    tier: str = "neutral"
    score: float | None = None
    degraded: bool = False
    refused: str | None = None          # layer that refused: the breaker must not count a 503 refusal as a failure
    shadow_refusals: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def get_context(scope: dict[str, Any]) -> RequestContext:
    """The context of this request; a socket-only one when the identity layer was not mounted."""
    ctx = scope.get(SCOPE_KEY)
    if ctx is None:
        client = scope.get("client") or ("", 0)
        ctx = RequestContext(ClientIdentity(ip=client[0], port=client[1], peer_ip=client[0]))
        scope[SCOPE_KEY] = ctx
    return ctx
