"""Tenants: a verified JWT names the tenant (a configured claim); tenants get concurrent-stream pools.

:class:`JwtVerifier` accepts HS256 (shared secret) and RS256 (public key) tokens — the key is chosen by the
token's ``alg`` among the *configured* keys only, so ``none`` and algorithm confusion (an RS256 public key used as
an HS256 secret) are refused — and checks ``exp`` (required), ``nbf``, audience and issuer when configured. Every
failure has its own reason (``jwt_expired``, ``jwt_signature``, ``jwt_malformed``, ``jwt_audience``…) that goes to
the refusal metric and the audit record; nothing a client sends can turn into a 500.

:class:`TenantMiddleware` (pure ASGI, between the reputation gate and the limiter) verifies the token on the stream
paths — from ``Authorization: Bearer`` or, because an EventSource cannot set headers, ``?access_token=`` — puts the
tenant on the context and keys the limiter's per-token bucket (soft: degrade and warn; hard: refuse) by tenant and
subject instead of by the raw token string. :class:`TenantStreamQuota` adds per-tenant pools on top of the per-client
tier quota.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jwt
from stormguard.server.context import RequestContext, get_context
from stormguard.server.layers.quota import StreamQuota

_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "jwt_expired"),
    (jwt.ImmatureSignatureError, "jwt_not_yet_valid"),
    (jwt.InvalidAudienceError, "jwt_audience"),
    (jwt.InvalidIssuerError, "jwt_issuer"),
    (jwt.InvalidSignatureError, "jwt_signature"),
    (jwt.InvalidAlgorithmError, "jwt_algorithm"),
    (jwt.MissingRequiredClaimError, "jwt_claim"),
    (jwt.DecodeError, "jwt_malformed"),
    (jwt.InvalidTokenError, "jwt_invalid"),
)


def load_key(value: str | None) -> str | None:
    """PEM text as is; anything else is read as a file path."""
    if not value:
        return None
    if "-----BEGIN" in value:
        return value
    return Path(value).expanduser().read_text()


class JwtVerifier:
    """Verify a token; ``verify(token) -> (claims, None)`` or ``(None, reason)``. Never raises on client input."""

    def __init__(self, *, secret: str | None = None, public_key: str | None = None, audience: str | None = None,
                 issuer: str | None = None, leeway: float = 0.0, tenant_claim: str = "tenant") -> None:
        self.keys: dict[str, Any] = {}
        if secret:
            self.keys["HS256"] = secret
        pem = load_key(public_key)
        if pem:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            self.keys["RS256"] = load_pem_public_key(pem.encode())
        if not self.keys:
            raise ValueError("JWT verification needs jwt_secret (HS256) or jwt_public_key (RS256)")
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.tenant_claim = tenant_claim
        self.required = ["exp", tenant_claim, *(["aud"] if audience else []), *(["iss"] if issuer else [])]

    def verify(self, token: str) -> tuple[dict[str, Any] | None, str | None]:
        try:
            alg = jwt.get_unverified_header(token).get("alg")
            key = self.keys.get(alg) if isinstance(alg, str) else None
            if key is None:
                return None, "jwt_algorithm"
            claims = jwt.decode(token, key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                                leeway=self.leeway, options={"require": self.required})
        except Exception as exc:
            for cls, reason in _ERRORS:
                if isinstance(exc, cls):
                    return None, reason
            return None, "jwt_invalid"
        tenant = claims.get(self.tenant_claim)
        if not isinstance(tenant, str | int) or isinstance(tenant, bool) or not str(tenant) or len(str(tenant)) > 128:
            return None, "jwt_claim"
        return claims, None


def _bearer(scope: dict[str, Any], query_param: str) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip().decode("latin-1")
    if query_param:
        qs = scope.get("query_string", b"")
        if query_param.encode() in qs:
            for k, v in parse_qsl(qs.decode("latin-1")):
                if k == query_param:
                    return v
    return None


class TenantMiddleware:
    """Pure ASGI: verify the JWT on ``paths``; refuse with the failure's reason; annotate tenant and token key."""

    def __init__(self, app: Any, *, verifier: JwtVerifier, refuser: Any, paths: tuple[str, ...] = ("/events",),
                 required: bool = True, query_param: str = "access_token") -> None:
        self.app = app
        self.verifier = verifier
        self.refuser = refuser
        self.paths = paths
        self.required = required
        self.query_param = query_param

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        token = _bearer(scope, self.query_param)
        if token is None:
            if self.required and await self.refuser.refuse(scope, send, layer="tenant", reason="jwt_missing"):
                return
        else:
            claims, reason = self.verifier.verify(token)
            if claims is None:
                if await self.refuser.refuse(scope, send, layer="tenant", reason=reason or "jwt_invalid"):
                    return
            else:
                tenant = str(claims[self.verifier.tenant_claim])
                ctx.extra["tenant"] = tenant
                subject = claims.get("sub") or claims.get("jti") or token
                ctx.identity.token_key = hashlib.blake2b(f"{tenant}\0{subject}".encode(),
                                                         digest_size=8).hexdigest()
        await self.app(scope, receive, send)


class TenantStreamQuota:
    """Per-client tier quota (``inner``) plus a concurrent-stream pool per tenant; tenant-less requests use only
    the inner quota. Counts exist only for tenants with open streams (bounded by the open streams)."""

    def __init__(self, inner: StreamQuota, *, default_pool: int = 1000, pools: Mapping[str, int] | None = None) -> None:
        self.inner = inner
        self.default_pool = default_pool
        self.pools = dict(pools or {})
        self.open: dict[str, int] = {}

    def acquire(self, ctx: RequestContext, force: bool = False) -> bool:
        if not self.inner.acquire(ctx, force):
            return False
        tenant = ctx.extra.get("tenant")
        if tenant is None:
            return True
        n = self.open.get(tenant, 0)
        if n >= self.pools.get(tenant, self.default_pool) and not force:
            self.inner.release(ctx)
            ctx.extra["quota_reason"] = "tenant_quota"
            return False
        self.open[tenant] = n + 1
        ctx.extra["tenant_slot"] = tenant
        return True

    def release(self, ctx: RequestContext) -> None:
        self.inner.release(ctx)
        tenant = ctx.extra.pop("tenant_slot", None)
        if tenant is None:
            return
        n = self.open.get(tenant, 0) - 1
        if n > 0:
            self.open[tenant] = n
        else:
            self.open.pop(tenant, None)
