"""Proof-of-work challenge for low-tier browsers: prove it, and be lifted one tier.

A low-tier client asking for an HTML page (``Accept: text/html``, a ``GET``) gets a small page instead that finds,
in the browser, a counter ``n`` such that ``SHA-256(challenge ":" n)`` starts with ``difficulty`` zero bits, and
posts it to ``/_stormguard/challenge``. A valid answer sets a signed, expiring cookie bound to the client's
address; with it the client is served one tier higher (low → neutral, neutral → trusted) on every request,
EventSource streams included. An EventSource request never gets a challenge body (it cannot run it): it keeps its
low tier (and the quota's pace/stop) until the browser has passed the challenge on a page.

Stateless: the challenge is ``issued_at`` plus an HMAC of the client address and ``issued_at`` (no server-side
store); the answer is checked in one hash; the cookie is ``address|expiry|HMAC``. Forged, expired or borrowed (other
address) cookies simply do not lift; each outcome is counted.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote

from stormguard.server.context import get_context

VERIFY_PATH = "/_stormguard/challenge"
COOKIE = "sg_pass"
#: How long a challenge page's puzzle stays answerable.
CHALLENGE_TTL = 300.0


def leading_zero_bits(digest: bytes) -> int:
    n = 0
    for b in digest:
        if b == 0:
            n += 8
            continue
        return n + 8 - b.bit_length()
    return n


def solve(challenge: str, difficulty: int, limit: int = 1 << 26) -> int:
    """The first counter that answers ``challenge`` (what the page's script does; used by tests and tools)."""
    prefix = challenge.encode() + b":"
    for n in range(limit):
        if leading_zero_bits(hashlib.sha256(prefix + str(n).encode()).digest()) >= difficulty:
            return n
    raise ValueError("no answer within the limit")


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>stormguard — checking your browser</title>
<meta name="robots" content="noindex"></head>
<body><h1>Checking your browser…</h1>
<p id="status">Solving a small proof of work (SHA-256, {difficulty} bits). This takes a moment once.</p>
<form id="f" method="post" action="{verify}"><input type="hidden" name="challenge" value="{challenge}">
<input type="hidden" name="counter" value=""><input type="hidden" name="next" value="{next}"></form>
<script>
(async () => {{
  const form = document.getElementById("f"), ch = form.challenge.value, bits = {difficulty};
  const enc = new TextEncoder();
  const zeros = (h) => {{ let n = 0; for (const b of h) {{ if (b === 0) {{ n += 8; continue; }}
    return n + Math.clz32(b) - 24; }} return n; }};
  for (let n = 0; ; n++) {{
    const h = new Uint8Array(await crypto.subtle.digest("SHA-256", enc.encode(ch + ":" + n)));
    if (zeros(h) >= bits) {{ form.counter.value = String(n); form.submit(); return; }}
  }}
}})();
</script></body></html>
"""


class Challenger:
    """Issues and checks challenges and pass cookies (see the module docstring)."""

    def __init__(self, secret: str | bytes | None, *, difficulty: int = 16, ttl: float = 3600.0,
                 tiers: tuple[str, ...] = ("low", "neutral", "trusted"),
                 clock: Callable[[], float] = time.time) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        self.key = key or os.urandom(32)     # no configured secret: cookies last as long as this process
        self.difficulty = difficulty
        self.ttl = ttl
        self.tiers = tiers
        self.clock = clock
        self.counts = {"issued": 0, "passed": 0, "failed": 0, "lifted": 0, "cookie_invalid": 0}

    def _mac(self, *parts: str) -> str:
        return hmac.new(self.key, "|".join(parts).encode(), hashlib.sha256).hexdigest()[:32]

    def challenge_for(self, ip: str) -> str:
        issued = str(int(self.clock()))
        return f"{issued}.{self._mac('challenge', ip, issued)}"

    def check_answer(self, ip: str, challenge: str, counter: str) -> bool:
        issued, _, mac = challenge.partition(".")
        if not issued.isdigit() or not counter.isdigit() or len(counter) > 12:
            return False
        if not hmac.compare_digest(mac, self._mac("challenge", ip, issued)):
            return False
        if not 0 <= self.clock() - int(issued) <= CHALLENGE_TTL:
            return False
        digest = hashlib.sha256(f"{challenge}:{counter}".encode()).digest()
        return leading_zero_bits(digest) >= self.difficulty

    def cookie_for(self, ip: str) -> str:
        expiry = str(int(self.clock() + self.ttl))
        return f"{expiry}.{self._mac('pass', ip, expiry)}"

    def cookie_valid(self, ip: str, value: str) -> bool:
        expiry, _, mac = value.partition(".")
        return (expiry.isdigit() and hmac.compare_digest(mac, self._mac("pass", ip, expiry))
                and self.clock() < int(expiry))

    def lifted(self, tier: str) -> str:
        if tier in self.tiers and self.tiers.index(tier) + 1 < len(self.tiers):
            return self.tiers[self.tiers.index(tier) + 1]
        return tier


def _cookie(scope: dict[str, Any], name: str) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == b"cookie":
            for part in v.decode("latin-1").split(";"):
                key, _, value = part.strip().partition("=")
                if key == name:
                    return value
    return None


def _wants_html(scope: dict[str, Any]) -> bool:
    accept = b""
    for k, v in scope.get("headers", ()):
        if k == b"accept":
            accept = v
    return scope.get("method") == "GET" and b"text/html" in accept and b"text/event-stream" not in accept


class ChallengeMiddleware:
    """Pure ASGI, after the reputation gate (which sets the tier) and before the limiter and quota (which read
    it): lifts clients with a valid pass, challenges low-tier page loads, verifies answers."""

    def __init__(self, app: Any, *, challenger: Challenger, challenge_tiers: tuple[str, ...] = ("low",),
                 exempt_paths: tuple[str, ...] = (), on_outcome: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.challenger = challenger
        self.challenge_tiers = challenge_tiers
        self.exempt_paths = exempt_paths
        self.on_outcome = on_outcome or (lambda outcome: None)

    def _count(self, outcome: str) -> None:
        self.challenger.counts[outcome] += 1
        self.on_outcome(outcome)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        ip = ctx.identity.ip
        if scope["path"] == VERIFY_PATH and scope["method"] == "POST":
            await self._verify(ip, receive, send)
            return
        cookie = _cookie(scope, COOKIE)
        if cookie is not None:
            if self.challenger.cookie_valid(ip, cookie):
                ctx.tier = self.challenger.lifted(ctx.tier)
                ctx.extra["challenge"] = "passed"
                self._count("lifted")
                await self.app(scope, receive, send)
                return
            self._count("cookie_invalid")
        if ctx.tier in self.challenge_tiers and _wants_html(scope):
            await self._page(ip, scope, send)
            return
        await self.app(scope, receive, send)

    async def _page(self, ip: str, scope: dict[str, Any], send: Any) -> None:
        qs = scope.get("query_string", b"").decode("latin-1")
        target = scope["path"] + (f"?{qs}" if qs else "")
        body = _PAGE.format(difficulty=self.challenger.difficulty, verify=VERIFY_PATH,
                            challenge=html.escape(self.challenger.challenge_for(ip)),
                            next=html.escape(target)).encode()
        self._count("issued")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _verify(self, ip: str, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > 4096:
                break
            if not message.get("more_body"):
                break
        form = dict(parse_qsl(body[:4096].decode("latin-1")))
        nxt = form.get("next", "/")
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"                        # never an open redirect
        if self.challenger.check_answer(ip, form.get("challenge", ""), form.get("counter", "")):
            self._count("passed")
            cookie = (f"{COOKIE}={self.challenger.cookie_for(ip)}; Max-Age={int(self.challenger.ttl)}; Path=/; "
                      "HttpOnly; SameSite=Lax")
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", quote(nxt, safe="/?=&%:").encode()),
                                    (b"set-cookie", cookie.encode()), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        self._count("failed")
        msg = b"stormguard: the proof of work did not check out (expired, forged or not solved); reload the page\n"
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(msg)).encode())]})
        await send({"type": "http.response.body", "body": msg})
