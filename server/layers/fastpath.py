"""Blocked-client fast path: refuse an address the gate already knows is blocked before any of the Starlette stack.

Why: a blocked client that hammers the server is the one load whose cost we choose. Through the full stack a
refusal costs ~25-30 µs of Python (Starlette's ``ServerErrorMiddleware``, the identity context, the breaker's
``send`` wrapper, the gate, the refuser) — more than a bare app's plain 200. Here it is a dict lookup and two
prebuilt ASGI messages.

Taken only when the outcome is exactly what the full path would produce:

* the socket peer is the client (no trusted proxy configured, or the peer is not one — a trusted proxy's requests
  go through the identity layer, which may name another client from ``Forwarded``/``X-Forwarded-For``);
* the gate's local block cache (:meth:`ReputationGateAdapter.local_block`) holds the address, the block has not
  ended and is not due for its store re-read (``block_recheck_seconds``): otherwise the full path re-reads the store;
* the path is one the gate guards (``reputation_paths``) and not exempt;
* the breaker is closed (an open or half-open breaker refuses or probes first on the full path);
* not shadow mode (shadow admits: :func:`build` returns no fast path at all).

The response is the full path's for the configured ``blocked`` action — *stop* (204), *pace* (200 ``retry:`` = time
to the block's end), ``429``/``503``, and ``403`` on non-EventSource requests — with ``Retry-After`` from the
block's end. Every refusal is counted (``rate_limit_rejected_total{layer="reputation",reason="blocked"}``, a plain
int read at scrape time) and observers get the ``refusal`` event as before.

Differences from the full path, on purpose:

* **Audit records are aggregated per address per second**: the first refusal of an address in each wall-clock
  second is written (``time, client, tier, score, layer, reason, action, retry_ms`` as before) with ``repeats`` = the
  refusals of that address folded since its previous record. Refusals after an address's last record are counted
  in metrics but appear in the audit log only with that address's next record. A flood from one address thus
  writes at most one line per second instead of one per request.
* Fast-path refusals are not recorded in the breaker's window (the full path counts a gate refusal as a success,
  so a blocked client's flood would dilute the failure share the breaker judges the server by).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stormguard.server.context import ClientIdentity, RequestContext
from stormguard.server.layers.identity import TrustedProxies, token_key
from stormguard.server.layers.refuse import _NON_SSE_FALLBACK, _SSE_HEADERS
from stormguard.server.layers.retry import RetryChooser

LAYER, REASON = "reputation", "blocked"
_BODY_END = {"type": "http.response.body", "body": b"", "more_body": False}
_STOP_START = {"type": "http.response.start", "status": 204, "headers": [(b"connection", b"close")]}
_MAX_CACHED = 4096


class BlockedFastPath:
    """``check(scope) -> (start, body) | None``: the refusal's two ASGI messages, or ``None`` for the full path.

    Called by :class:`~stormguard.server.app.StormguardApp` for every HTTP request before Starlette's stack.
    """

    def __init__(self, *, cache: Any, refuser: Any, breaker: Any, trusted_proxies: tuple[str, ...] = (),
                 exempt_paths: tuple[str, ...] = (), paths: tuple[str, ...] | None = None,
                 sse_paths: tuple[str, ...] = ("/events",), audit: Any = None, max_audit_keys: int = 100_000,
                 clock: Callable[[], float] | None = None) -> None:
        self.lookup: Callable[[str, float], tuple[float, float] | None] = cache.local_block
        self.clock: Callable[[], float] = clock or cache.clock
        self.refuser = refuser
        self.breaker = breaker
        self.trusted = TrustedProxies(trusted_proxies) if trusted_proxies else None
        self.exempt_paths = frozenset(exempt_paths)
        self.paths = frozenset(paths) if paths is not None else None
        self.sse_paths = frozenset(sse_paths)
        self.tally = refuser.metrics.rejected.tally(LAYER, REASON) if refuser.metrics is not None else None
        self.audit: Any = audit if audit is not None and audit.path is not None else None
        self.max_audit_keys = max_audit_keys
        self._audited: dict[str, list[int]] = {}      # address -> [second of its last record, refusals folded since]
        self.refusals = 0
        action = refuser.actions.get(REASON, "stop")
        self.sse_action = action
        self.other_action = _NON_SSE_FALLBACK.get(REASON, "429") if action in ("pace", "stop") else action
        self._status_messages: dict[tuple[str, int], tuple[dict[str, Any], dict[str, Any]]] = {}

    # -- the check ----------------------------------------------------------------------------------------------
    def check(self, scope: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The two messages of this request's refusal (accounted for), or ``None``: take the full path."""
        path = scope["path"]
        if path in self.exempt_paths or (self.paths is not None and path not in self.paths):
            return None
        client = scope.get("client")
        if not client or self.breaker.state != "closed":
            return None
        ip = client[0]
        if self.trusted is not None and self.trusted.contains(ip):
            return None
        now = self.clock()
        hit = self.lookup(ip, now)
        if hit is None:
            return None
        until, score = hit
        retry_ms = max(1, int((until - now) * 1000))
        action = self.sse_action if self._is_sse(scope, path) else self.other_action
        self.refusals += 1
        if self.tally is not None:
            self.tally.n += 1
        if self.audit is not None:
            self._audit(ip, now, score, action, retry_ms)
        if self.refuser.on_refusal is not None:
            ctx = RequestContext(ClientIdentity(ip=ip, port=client[1], peer_ip=ip, token_key=token_key(scope)),
                                 tier="blocked", score=score, refused=LAYER)
            ctx.extra["headers"] = scope.get("headers", ())
            ctx.extra["http_version"] = scope.get("http_version")
            self.refuser.on_refusal(ctx, LAYER, REASON, action)
        return self._messages(action, retry_ms)

    def _is_sse(self, scope: dict[str, Any], path: str) -> bool:
        if path in self.sse_paths:
            return True
        if self.sse_action == self.other_action:       # the answer is the same either way: skip the header scan
            return False
        for name, value in scope.get("headers", ()):
            if name == b"accept" and b"text/event-stream" in value:
                return True
        return False

    def _messages(self, action: str, retry_ms: int) -> tuple[dict[str, Any], dict[str, Any]]:
        if action == "stop":
            return _STOP_START, _BODY_END
        if action == "pace":                       # the body carries the time to the block's end: built per refusal
            body = b"retry: %d\n: %s\n\n" % (retry_ms, REASON.encode())
            return ({"type": "http.response.start", "status": 200,
                     "headers": [*_SSE_HEADERS, (b"content-length", b"%d" % len(body))]},
                    {"type": "http.response.body", "body": body, "more_body": False})
        seconds = RetryChooser.seconds(retry_ms)
        key = (action, seconds)
        msgs = self._status_messages.get(key)
        if msgs is None:
            if len(self._status_messages) >= _MAX_CACHED:
                self._status_messages.clear()
            body = b"%s\n" % REASON.encode()
            status = int(action) if action.isdigit() else 429
            msgs = self._status_messages[key] = (
                {"type": "http.response.start", "status": status,
                 "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                             (b"content-length", b"%d" % len(body)), (b"retry-after", b"%d" % seconds)]},
                {"type": "http.response.body", "body": body, "more_body": False})
        return msgs

    def _audit(self, ip: str, now: float, score: float, action: str, retry_ms: int) -> None:
        second = int(now)
        state = self._audited.get(ip)
        if state is not None and state[0] == second:
            state[1] += 1
            return
        repeats = 0
        if state is None:
            if len(self._audited) >= self.max_audit_keys:      # bounded: folded counts of dropped keys stay in metrics
                self._audited.clear()
            self._audited[ip] = [second, 0]
        else:
            repeats, state[0], state[1] = state[1], second, 0
        extra = {"repeats": repeats} if repeats else {}
        self.audit.record(client=ip, tier="blocked", score=score, layer=LAYER, reason=REASON, action=action,
                          retry_ms=retry_ms, **extra)


def build(*, settings: Any, gate: Any, refuser: Any, breaker: Any, audit: Any, exempt_paths: tuple[str, ...],
          paths: tuple[str, ...] | None, sse_paths: tuple[str, ...]) -> BlockedFastPath | None:
    """The fast path for this app, or ``None``: shadow mode (it admits), or a gate without a local block cache."""
    if settings.shadow or gate is None or not callable(getattr(gate, "local_block", None)):
        return None
    return BlockedFastPath(cache=gate, refuser=refuser, breaker=breaker, trusted_proxies=tuple(settings.trusted_proxies),
                           exempt_paths=exempt_paths, paths=paths, sse_paths=sse_paths, audit=audit,
                           max_audit_keys=settings.block_cache_size)
