"""Who may use the admin API: a bearer token, a JWT with the admin role, or the dashboard's login cookie.

* ``Authorization: Bearer <token>`` equal to the admin token (``admin_token`` or ``$STORMGUARD_ADMIN_TOKEN``),
  compared in constant time (:func:`hmac.compare_digest`);
* or ``Authorization: Bearer <jwt>`` verified with the server's JWT keys (``jwt_secret`` HS256 /
  ``jwt_public_key`` RS256, the keys of the tenants' ``JwtVerifier``; ``exp`` required, audience and issuer when configured) whose ``admin_role_claim``
  (default ``role``) is, or is a list containing, ``admin_role`` (default ``admin``): a valid token without the
  role is a 403, anything else a 401;
* or, for ``GET`` only (the dashboard page and its EventSource, which cannot send headers), the ``sg_admin``
  cookie that ``/admin/login`` sets after checking the same credentials. The cookie carries an expiry and the
  principal signed with a per-process random key (never the token itself); ``HttpOnly``, ``SameSite=Strict``,
  path ``/admin``. Changing requests (PUT, DELETE, POST) always need the header, so a cookie cannot be ridden by
  another site.

Every refusal is counted (``stormguard_admin_auth_failures_total{status,reason}``); the audit record of every admin
request is written by :class:`AdminAudit`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import jwt

COOKIE = "sg_admin"
PRINCIPAL_KEY = "stormguard.admin"


class Credentials:
    """Checks one presented credential: ``check(value) -> (principal, None)`` or ``(None, (status, reason))``."""

    def __init__(self, *, token: str | None, jwt_keys: dict[str, Any] | None = None,
                 audience: str | None = None, issuer: str | None = None, leeway: float = 0.0,
                 role_claim: str = "role", role: str = "admin", cookie_max_age: int = 3600,
                 clock: Callable[[], float] = time.time) -> None:
        self.token = token.encode() if token else None
        self.keys: dict[str, Any] = dict(jwt_keys or {})     # alg -> key: the tenants' JwtVerifier.keys
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.role_claim = role_claim
        self.role = role
        self.cookie_max_age = cookie_max_age
        self.clock = clock
        self._session_key = secrets.token_bytes(32)

    @property
    def configured(self) -> bool:
        return bool(self.token or self.keys)

    def check(self, value: str) -> tuple[str | None, tuple[int, str] | None]:
        raw = value.encode("utf-8", "surrogateescape")
        if self.token is not None and hmac.compare_digest(raw, self.token):
            return "token", None
        if self.keys and value.count(".") == 2:
            return self._check_jwt(value)
        return None, (401, "wrong_token")

    def _check_jwt(self, value: str) -> tuple[str | None, tuple[int, str] | None]:
        try:
            alg = jwt.get_unverified_header(value).get("alg")
            key = self.keys.get(alg) if isinstance(alg, str) else None
            if key is None:
                return None, (401, "jwt_algorithm")
            claims = jwt.decode(value, key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                                leeway=self.leeway, options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            return None, (401, "jwt_expired")
        except Exception:
            return None, (401, "jwt_invalid")
        roles = claims.get(self.role_claim)
        if not (roles == self.role or (isinstance(roles, list) and self.role in roles)):
            return None, (403, "not_admin")
        return f"jwt:{str(claims.get('sub', '?'))[:64]}", None

    # -- the dashboard's cookie ---------------------------------------------------------------------------------
    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._session_key, payload, hashlib.sha256).hexdigest()

    def session(self, principal: str) -> str:
        payload = base64.urlsafe_b64encode(json.dumps([int(self.clock()) + self.cookie_max_age,
                                                       principal]).encode())
        return f"{payload.decode()}.{self._sign(payload)}"

    def check_session(self, value: str) -> tuple[str | None, tuple[int, str] | None]:
        payload, _, sig = value.partition(".")
        if not sig or not hmac.compare_digest(sig, self._sign(payload.encode())):
            return None, (401, "bad_cookie")
        try:
            exp, principal = json.loads(base64.urlsafe_b64decode(payload.encode()))
        except (ValueError, TypeError):
            return None, (401, "bad_cookie")
        if exp <= self.clock():
            return None, (401, "cookie_expired")
        return f"session:{principal}", None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


def cookie_value(scope: dict[str, Any], name: str = COOKIE) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None


def bearer(scope: dict[str, Any]) -> str | None:
    value = _header(scope, b"authorization")
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None


class AdminAuth:
    """Pure ASGI: authenticate every request except ``open_paths``; 401/403 JSON refusals, counted."""

    def __init__(self, app: Any, *, credentials: Credentials, on_failure: Callable[[int, str], None],
                 open_paths: tuple[str, ...] = ("/admin/login",)) -> None:
        self.app = app
        self.credentials = credentials
        self.on_failure = on_failure
        self.open_paths = open_paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        creds = self.credentials
        token = bearer(scope)
        failure: tuple[int, str] | None = (401, "missing")
        principal = None
        if token is not None:
            principal, failure = creds.check(token)
        elif scope["method"] in ("GET", "HEAD"):
            cookie = cookie_value(scope)
            if cookie is not None:
                principal, failure = creds.check_session(cookie)
        if principal is None:
            status, reason = failure or (401, "missing")
            self.on_failure(status, reason)
            scope[PRINCIPAL_KEY] = f"refused:{reason}"
            body = json.dumps({"error": "forbidden" if status == 403 else "unauthorized", "reason": reason}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            if status == 401:
                headers.append((b"www-authenticate", b'Bearer realm="stormguard-admin"'))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        scope[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)


def route_of(path: str) -> str:
    """The route template of a path (metric label: never the raw client key)."""
    if path.startswith("/admin/clients/"):
        return "/admin/clients/{key}/block" if path.endswith("/block") else "/admin/clients/{key}"
    if path in ("/admin/top", "/admin/quotas", "/admin/state", "/admin/alerts", "/admin/dashboard",
                "/admin/dashboard/stream", "/admin/login"):
        return path
    return "other"


class AdminAudit:
    """Pure ASGI, outermost: one audit record and one metric sample per admin request (who, what, outcome)."""

    def __init__(self, app: Any, *, audit: Any, requests: Any) -> None:
        self.app = app
        self.audit = audit
        self.requests = requests

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = route_of(scope["path"])
            self.requests.labels(scope["method"], route, str(status)).inc()
            client = (scope.get("client") or ("-", 0))[0]
            self.audit.record(client=client, layer="admin", reason=f"{scope['method']} {scope['path']}"[:300],
                              action=str(status), who=scope.get(PRINCIPAL_KEY, "-"), route=route)
