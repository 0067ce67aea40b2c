"""In-process TLS with fingerprinting: the ClientHello a client actually sent, read before the handshake uses it.

``stormguard serve --tls-cert CERT --tls-key KEY`` runs uvicorn *without* its own TLS and with
:class:`HelloHttpProtocol` as the HTTP protocol. For each accepted connection it collects the client's first
bytes until one ClientHello is complete (parsed by the same code that replay uses, so the JA3/JA4 are those replay
computes from a capture of the same handshake), then starts TLS over the same transport with the loop's TLS
protocol (uvloop's under uvloop, as uvicorn's own TLS; else ``asyncio.sslproto.SSLProtocol``), fed with exactly
the bytes already read, and hands the decrypted stream to uvicorn's own httptools protocol. That protocol gets
the fingerprint in its per-connection copy of the ASGI ``state`` (``scope["state"][TLS_STATE_KEY]``: ``ja3``,
``ja3_string``, ``ja4``, ``ja4_r``, ``sni``, ``alpn``), which the identity layer reads: the same fields trusted
proxies pass in headers.

Bounded: at most :data:`MAX_HELLO_BYTES` are buffered, and a client that has not completed a ClientHello within
:data:`HELLO_TIMEOUT` seconds is disconnected. Bytes that are not a TLS ClientHello are handed to the TLS layer as
they are (it fails the handshake as it would without fingerprinting).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from asyncio.sslproto import SSLProtocol
from typing import Any

from stormguard.features.tls.clienthello import ClientHello, TlsClientStream
from stormguard.features.tls.ja3 import ja3
from stormguard.features.tls.ja4 import ja4
from stormguard.server.context import TLS_STATE_KEY

#: Environment variables ``stormguard serve`` hands the certificate and key to every worker through.
CERT_ENV = "STORMGUARD_TLS_CERT"
KEY_ENV = "STORMGUARD_TLS_KEY"
MAX_HELLO_BYTES = 64 * 1024
HELLO_TIMEOUT = 10.0

_context: ssl.SSLContext | None = None


def server_context(cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """The server's TLS context (HTTP/1.1 only: uvicorn's protocol speaks nothing else), built once per process."""
    global _context
    if _context is None or cert is not None:
        cert = cert or os.environ[CERT_ENV]
        key = key or os.environ.get(KEY_ENV) or None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        _context = ctx
    return _context


def fingerprint(ch: ClientHello) -> dict[str, Any]:
    """JA3/JA4/SNI/ALPN of a ClientHello, as replay computes them for a TLS-over-TCP hello."""
    digest, ja3_string = ja3(ch)
    ja4_value, ja4_raw = ja4(ch, "t")
    return {"ja3": digest, "ja3_string": ja3_string, "ja4": ja4_value, "ja4_r": ja4_raw, "sni": ch.sni,
            "alpn": ch.alpn_str if ch.alpn else None}


def _ssl_protocol_class(loop: asyncio.AbstractEventLoop) -> type:
    """The TLS protocol of the running loop: uvloop's (compiled, what uvicorn's own TLS uses there) or asyncio's."""
    try:
        import uvloop
        from uvloop.loop import (
            SSLProtocol as UvSSLProtocol,  # same constructor as asyncio.sslproto.SSLProtocol
        )
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency
        return SSLProtocol
    return UvSSLProtocol if isinstance(loop, uvloop.Loop) else SSLProtocol


class HelloHttpProtocol(asyncio.Protocol):
    """uvicorn HTTP protocol class: TLS terminated here, after reading the ClientHello (see the module doc)."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.stream = TlsClientStream()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = self.loop.call_later(HELLO_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        hellos = self.stream.feed(data)
        if hellos or self.stream.done or len(self.buf) >= MAX_HELLO_BYTES:
            self._start_tls(fingerprint(hellos[0]) if hellos else None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def _start_tls(self, fp: dict[str, Any] | None) -> None:
        from stormguard.server.layers.headlimit import GuardedHttpToolsProtocol  # head limits inside TLS too

        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = self.transport
        assert transport is not None
        state = dict(self.app_state)
        if fp is not None:
            state[TLS_STATE_KEY] = fp
        inner = GuardedHttpToolsProtocol(config=self.config, server_state=self.server_state, app_state=state,
                                  _loop=self.loop)
        tls = _ssl_protocol_class(self.loop)(self.loop, inner, server_context(), None, server_side=True,
                                             ssl_handshake_timeout=HELLO_TIMEOUT)
        transport.set_protocol(tls)
        tls.connection_made(transport)
        data, self.buf = bytes(self.buf), bytearray()
        while data:  # SSLProtocol is a buffered protocol: hand it the bytes already read
            view = tls.get_buffer(len(data))
            n = min(len(view), len(data))
            view[:n] = data[:n]
            tls.buffer_updated(n)
            data = data[n:]
