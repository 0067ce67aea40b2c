"""How a layer says no — configurable per reason, because an EventSource reacts to status codes, not to bodies.

A browser's EventSource gives up for good on any status but 200 (and stops on 204), yet it retries after a clean
close. So on SSE requests:

* ``pace`` — 200 ``text/event-stream`` with ``retry: N`` (N from :class:`RetryChooser`), then close: the client
  comes back, but no sooner than N ms.
* ``stop`` — 204: the client must not come back (blocks).
* ``429`` / ``503`` — with ``Retry-After``, for non-EventSource clients that honour it.

Non-SSE requests never get ``pace``/``stop`` (meaningless to them): they get 429, 503 (breaker, shutdown) or 403
(blocked), each with ``Retry-After``. In shadow mode the decision is counted and audited, and the request admitted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stormguard.server.context import get_context
from stormguard.server.layers.retry import RetryChooser
from stormguard.server.ops.audit import AuditLog
from stormguard.server.ops.metrics import Metrics

ACTIONS = ("pace", "stop", "429", "503")
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"), (b"connection", b"close")]
_NON_SSE_FALLBACK = {"breaker": "503", "shutdown": "503", "blocked": "403"}


def is_sse_request(scope: dict[str, Any], sse_paths: tuple[str, ...]) -> bool:
    """An EventSource request: one of the stream paths, or an ``Accept: text/event-stream`` anywhere."""
    if scope.get("path") in sse_paths:
        return True
    for name, value in scope.get("headers", ()):
        if name == b"accept" and b"text/event-stream" in value:
            return True
    return False


class Refuser:
    """Sends refusals and accounts for them (metric with layer and reason, audit record)."""

    def __init__(self, *, retry: RetryChooser, actions: Mapping[str, str] | None = None,
                 load: Callable[[], float] = lambda: 0.0, metrics: Metrics | None = None,
                 audit: AuditLog | None = None, shadow: bool = False,
                 sse_paths: tuple[str, ...] = ("/events",),
                 on_refusal: Callable[[Any, str, str, str], None] | None = None) -> None:
        bad = {a for a in (actions or {}).values() if a not in ACTIONS}
        if bad:
            raise ValueError(f"unknown refusal action(s) {sorted(bad)}; expected one of {ACTIONS}")
        self.retry = retry
        self.actions = dict(actions or {})
        self.load = load
        self.metrics = metrics
        self.audit = audit
        self.shadow = shadow
        self.sse_paths = sse_paths
        self.on_refusal = on_refusal

    def action_for(self, scope: dict[str, Any], reason: str) -> str:
        action = self.actions.get(reason, "pace" if reason != "blocked" else "stop")
        if action in ("pace", "stop") and not is_sse_request(scope, self.sse_paths):
            return _NON_SSE_FALLBACK.get(reason, "429")
        return action

    async def refuse(self, scope: dict[str, Any], send: Any, *, layer: str, reason: str,
                     retry_ms: int | None = None, enforce: bool = False) -> bool:
        """Refuse this request; True when a response was sent, False in shadow mode (the caller admits).

        ``enforce`` refuses even in shadow mode (a closing hub cannot admit, whatever the mode).
        """
        ctx = get_context(scope)
        action = self.action_for(scope, reason)
        if retry_ms is None:
            retry_ms = self.retry.choose(reason, ctx.tier, self.load(), ctx.degraded)
        if self.shadow and not enforce:
            ctx.shadow_refusals.append(f"{layer}:{reason}")
            if self.metrics:
                self.metrics.child(self.metrics.shadow, layer, reason).inc()
            if self.audit:
                self.audit.record(client=ctx.identity.ip, tier=ctx.tier, score=ctx.score, layer=layer,
                                  reason=reason, action=f"shadow-{action}")
            if self.on_refusal:
                self.on_refusal(ctx, layer, reason, f"shadow-{action}")
            return False
        ctx.refused = layer
        ctx.extra["reject_reason"] = reason
        if self.metrics:
            self.metrics.reject(layer, reason)
        if self.audit:
            self.audit.record(client=ctx.identity.ip, tier=ctx.tier, score=ctx.score, layer=layer, reason=reason,
                              action=action, retry_ms=retry_ms)
        if self.on_refusal:
            self.on_refusal(ctx, layer, reason, action)
        await send_refusal(send, action, reason, retry_ms)
        return True


async def send_refusal(send: Any, action: str, reason: str, retry_ms: int) -> None:
    """Write the response for one refusal action (no framework objects: this path must stay cheap)."""
    if action == "pace":
        body = b"retry: %d\n: %s\n\n" % (retry_ms, reason.encode())
        headers = [*_SSE_HEADERS, (b"content-length", str(len(body)).encode())]
        status = 200
    elif action == "stop":
        body, status = b"", 204
        headers = [(b"connection", b"close")]
    else:
        status = int(action) if action.isdigit() else 429
        body = b"%s\n" % reason.encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                   (b"retry-after", str(RetryChooser.seconds(retry_ms)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
