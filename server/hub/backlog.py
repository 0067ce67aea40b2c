"""Slow readers: streams whose client does not take what is sent to it, found by asking the socket, and ended.

Why the socket must be asked: a client that stops reading still has its kernel acknowledge data until its
receive buffer is full, and the server's kernel then queues more (up to megabytes with buffer autotuning) before
uvicorn's transport buffers anything and the ASGI ``send`` blocks. Until then the writer and the hub's queue see a
healthy stream. So the hub's ticker asks, for every stream written to since it was last seen drained, its TCP
socket: the bytes waiting (the transport's buffer plus the kernel's send queue, ``SIOCOUTQ``) and the bytes the
peer has acknowledged (``TCP_INFO`` ``tcpi_bytes_acked``, Linux ≥ 4.2). A stream is a slow reader when

* bytes wait and the peer has acknowledged none of them for ``slow_reader_timeout`` seconds (its window is closed:
  it stopped reading), or
* more than ``slow_reader_max_bytes`` wait (it reads, but slower than it is sent to), or — checked where they
  happen, :mod:`~stormguard.server.hub.topics` and :mod:`~stormguard.server.hub.sse` — its queue of
  ``send_queue_size`` events is full, or one write blocks past ``send_timeout``.

It is then ended at once: the connection is reset (a final ``retry:`` would wait for the very window that is
closed; a reset, unlike a close, frees the kernel's queue at once), the eviction is counted (``stormguard_evictions_total
{reason="slow_reader"}``) and audited, and the live rules charge the client (rule ``slow_reader``), so a client
that keeps doing it is paced, then blocked, on reconnect. What one stream can hold is therefore bounded by
``send_queue_size`` events plus ``slow_reader_max_bytes``; the largest values seen are exported as
``stormguard_stream_queue_peak`` and ``stormguard_stream_backlog_peak_bytes``.

Where the socket cannot be reached (another ASGI server, a non-TCP transport) only the queue bound and the send
deadline apply; where ``TCP_INFO`` is missing, a shrinking backlog counts as progress instead of acknowledgements.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stormguard.server.hub.sse import Stream

try:                                    # POSIX only; elsewhere the socket is not asked
    import fcntl
    import termios

    _SIOCOUTQ: int | None = termios.TIOCOUTQ        # == SIOCOUTQ on Linux: bytes not yet acknowledged
except (ImportError, AttributeError):  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]
    _SIOCOUTQ = None

#: The reason of every slow-reader eviction: metric label, audit reason, close reason and rule evidence.
SLOW_READER = "slow_reader"
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_ACKED = struct.Struct("=Q")
_ACKED_OFFSET = 120                     # struct tcp_info: tcpi_bytes_acked follows tcpi_max_pacing_rate
_OUTQ = struct.Struct("=i")
_LINGER_RESET = struct.pack("ii", 1, 0)


def stream_socket(transport: Any) -> Any:
    """The socket object of an asyncio/uvloop transport (it has ``fileno`` and ``getsockopt``), or None."""
    if transport is None:
        return None
    with contextlib.suppress(Exception):
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6):
            return sock
    return None


def reset(transport: Any) -> None:
    """Abort ``transport`` with a TCP reset. A plain abort closes the socket, and the kernel then keeps an orphan
    holding the unsent bytes, probing a zero window for minutes; ``SO_LINGER`` 0 makes close send RST and free them.
    """
    if transport is None or transport.is_closing():
        return
    sock = stream_socket(transport)
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


def kernel_backlog(sock: Any) -> tuple[int, int | None] | None:
    """(bytes in the socket's send queue, bytes the peer acknowledged or None); None when it cannot be read."""
    if _SIOCOUTQ is None:
        return None
    try:
        queued = _OUTQ.unpack(fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return None                     # closed meanwhile: the stream's own disconnect handling ends it
    acked = None
    if _TCP_INFO is not None:
        with contextlib.suppress(OSError, ValueError):
            info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _ACKED_OFFSET + _ACKED.size)
            if len(info) >= _ACKED_OFFSET + _ACKED.size:
                acked = _ACKED.unpack_from(info, _ACKED_OFFSET)[0]
    return queued, acked


class SlowReaderGuard:
    """The ticker's check of one stream (see the module docstring); keeps the peaks it has seen.

    ``timeout`` 0 turns the stall check off, ``max_bytes`` 0 the byte bound.
    """

    def __init__(self, timeout: float = 15.0, max_bytes: int = 1 << 20) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.peak_bytes = 0             # the largest backlog (transport + kernel) seen on one stream
        self.peak_queue = 0             # the longest queue of events seen on one stream
        self.probes = 0
        self.rounds = 0                 # ticker rounds that ran the check (tests wait on it: a condition, not a sleep)

    @property
    def enabled(self) -> bool:
        return bool(self.timeout or self.max_bytes)

    def check(self, stream: Stream, now: float) -> bool:
        """True when ``stream`` is a slow reader now (the caller evicts it)."""
        queue = len(stream.mailbox)
        if queue > self.peak_queue:
            self.peak_queue = queue
        sock = stream.sock
        if sock is None or (stream.last_write <= stream.drained and not queue):
            return False                # nothing written since the socket was last seen drained
        backlog = kernel_backlog(sock)
        self.probes += 1
        if backlog is None:
            return False
        queued, acked = backlog
        with contextlib.suppress(Exception):
            queued += stream.transport.get_write_buffer_size()
        if queued > self.peak_bytes:
            self.peak_bytes = queued
        last_acked, last_pending = stream.acked, stream.pending
        stream.acked, stream.pending = acked, queued
        if queued == 0:
            stream.drained = now
            stream.stall_since = None
            return False
        if self.max_bytes and queued > self.max_bytes:
            return True
        progress = acked != last_acked if acked is not None else queued < last_pending
        if progress or stream.stall_since is None:
            stream.stall_since = now    # waiting bytes, but the peer took some since the last look
            return False
        return bool(self.timeout) and now - stream.stall_since >= self.timeout

    def bind_metrics(self, registry: Any) -> None:
        from prometheus_client import Gauge

        Gauge("stormguard_stream_backlog_peak_bytes", "Largest backlog (transport buffer + kernel send queue) seen "
              "on one stream; bounded by slow_reader_max_bytes plus one check interval of writes",
              registry=registry).set_function(lambda: self.peak_bytes)
        Gauge("stormguard_stream_queue_peak", "Longest queue of events seen on one stream (bound: send_queue_size)",
              registry=registry).set_function(lambda: self.peak_queue)
        Gauge("stormguard_slow_reader_check_rounds", "Ticker rounds that checked every stream for slow readers",
              registry=registry).set_function(lambda: self.rounds)
