"""Bounds on the request head, enforced in the HTTP protocol itself: bytes, header count, URL length and time.

Why below ASGI: by the time an ASGI middleware sees a request the parser has already buffered the whole head, so
a 50 MB header (or a slow-loris client that never finishes one) costs memory and a socket before any layer runs.
uvicorn's httptools protocol has no head limits at all (``h11_max_incomplete_event_size`` only applies to h11)
and cancels its keep-alive timer on the first byte, so a client that sends one byte every few seconds is held
forever. :class:`GuardedHttpToolsProtocol` counts head bytes *before* they reach the parser, counts headers and
URL bytes in the parser callbacks, and arms a timer when a head starts (connection made, or first byte of the next
keep-alive request) that is cancelled only when the head is complete.

Refusals (every one counted in ``rate_limit_rejected_total{layer="head", reason=...}``, see :data:`HEAD_REFUSALS`):

* ``head_bytes`` → 431: the head (request line + headers) passed ``head_max_bytes``;
* ``header_count`` → 431: more than ``head_max_headers`` header fields;
* ``url_bytes`` → 414: the request target passed ``head_max_url``;
* ``head_timeout`` → 408: the head was not complete ``head_timeout`` seconds after it started (also a connection
  that sends nothing at all);
* ``malformed`` → 400: the parser rejected the bytes (garbage, bad framing).

Memory per connection is therefore at most ``head_max_bytes`` plus one socket read (a pipelined head that starts in
the same read as the previous request's end is counted from the next read on).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from stormguard.server.ops.metrics import Tally
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

REASONS = {"head_bytes": 431, "header_count": 431, "url_bytes": 414, "head_timeout": 408, "malformed": 400}

# One process serves one app under ``stormguard serve``; the protocol and the app's /metrics share these cells
# (:class:`~stormguard.server.app.Runtime` puts them into its refusal counts under layer "head").
HEAD_REFUSALS: dict[str, Tally] = {reason: Tally() for reason in REASONS}


@dataclass(frozen=True)
class HeadLimits:
    """The four bounds (``[server]`` ``head_max_bytes``, ``head_max_headers``, ``head_max_url``, ``head_timeout``)."""

    max_bytes: int = 65536
    max_headers: int = 128
    max_url: int = 8192
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.max_bytes < 1024 or self.max_headers < 8 or self.max_url < 256 or not self.timeout > 0:
            raise ValueError(f"head limits too small to serve a browser: {self}")

    @classmethod
    def from_settings(cls, settings: Any) -> HeadLimits:
        return cls(max_bytes=settings.head_max_bytes, max_headers=settings.head_max_headers,
                   max_url=settings.head_max_url, timeout=settings.head_timeout)


class HeadRefused(Exception):
    """Raised from a parser callback; :meth:`GuardedHttpToolsProtocol._feed` turns it into the refusal."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def refusal_response(reason: str) -> bytes:
    status = REASONS[reason]
    body = f"{reason}\n".encode()
    return b"".join([STATUS_LINE[status], b"content-type: text/plain; charset=utf-8\r\n",
                     b"content-length: ", str(len(body)).encode(), b"\r\n", b"connection: close\r\n\r\n", body])


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head bounded in bytes, headers, URL bytes and time.

    ``stormguard serve`` passes this class as uvicorn's ``http``; the limits come from the server settings handed to
    the process (``$STORMGUARD_SERVER_SETTINGS``), read once per process, unless :attr:`limits` is set.
    """

    limits: ClassVar[HeadLimits | None] = None

    @classmethod
    def _limits(cls) -> HeadLimits:
        if cls.limits is None:
            from stormguard.server.ops.settings import ServerSettings

            cls.limits = HeadLimits.from_settings(ServerSettings.from_env())
        return cls.limits

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_limits = self._limits()
        self._in_head = True        # bytes arriving now belong to a request head
        self._head_bytes = 0
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    # -- the timer ----------------------------------------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_limits.timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse("head_timeout")

    # -- bytes --------------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._in_head:
            # any byte where a head is due starts its clock (also the CRLFs a parser skips between requests,
            # which would otherwise cancel the keep-alive timer without starting a message)
            self._arm_head_timer()
        limit = self._head_limits.max_bytes
        while data:
            if self._in_head:
                room = limit - self._head_bytes
                if room <= 0:
                    self._refuse("head_bytes")
                    return
                piece, data = data[:room], data[room:]
                self._head_bytes += len(piece)
            else:
                piece, data = data, b""
            if not self._feed(piece):
                return

    def _feed(self, piece: bytes) -> bool:
        """Feed the parser; False once the connection is refused, closed or upgraded."""
        if self.parser is None or self.transport.is_closing():
            return False
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            self._refuse(cause.reason if isinstance(cause, HeadRefused) else "malformed")
            return False
        return not self.transport.is_closing()

    def _refuse(self, reason: str) -> None:
        """Count, answer (unless a response is already under way on this connection) and close."""
        HEAD_REFUSALS[reason].n += 1
        self._cancel_head_timer()
        self._in_head = False
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(refusal_response(reason))
        self.transport.close()

    # -- parser callbacks ---------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._header_count = 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self._head_limits.max_url:
            raise HeadRefused("url_bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._head_limits.max_headers:
            raise HeadRefused("header_count")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True        # what follows is the next request's head
        self._head_bytes = 0
