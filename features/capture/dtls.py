"""DTLS ClientHellos: DTLS records → handshake fragments (fragment_offset/length) → reassembled ClientHello.

A DTLS handshake message header carries ``message_seq``, ``fragment_offset`` and ``fragment_length``; a
ClientHello may be split over several records or datagrams. The body differs from TLS by the ``cookie`` after
the session id. JA3 uses the DTLS version number as is (``65279`` for DTLS 1.0, ``65277`` for 1.2), as Wireshark.
"""

from __future__ import annotations

from stormguard.features.tls.clienthello import ClientHello, _parse_hello_body

MAX_MSG = 1 << 16
MAX_FLOWS = 4096


def looks_like_dtls_handshake(b: bytes) -> bool:
    """A datagram starting with a DTLS handshake record (DTLS 1.0/1.2/1.3 or OpenSSL's pre-RFC 0x0100)."""
    return len(b) >= 25 and b[0] == 22 and ((b[1] == 0xFE and b[2] >= 0xFC) or (b[1] == 1 and b[2] == 0))


class DtlsTracker:
    """Reassembles client ClientHellos per flow."""

    __slots__ = ("flows",)

    def __init__(self) -> None:
        # flow key -> {message_seq: [total_len, bytearray body, set of covered (start, end)]}
        self.flows: dict[tuple, dict[int, list]] = {}

    def feed(self, payload: bytes, key: tuple) -> list[ClientHello]:
        out: list[ClientHello] = []
        try:
            self._feed(payload, key, out)
        except Exception:
            pass
        return out

    def _feed(self, b: bytes, key: tuple, out: list[ClientHello]) -> None:
        p = 0
        n = len(b)
        while n - p >= 13:
            ctype = b[p]
            rlen = (b[p + 11] << 8) | b[p + 12]
            rend = min(n, p + 13 + rlen)
            epoch = (b[p + 3] << 8) | b[p + 4]
            if ctype == 22 and epoch == 0:
                q = p + 13
                while rend - q >= 12:
                    mtype = b[q]
                    mlen = (b[q + 1] << 16) | (b[q + 2] << 8) | b[q + 3]
                    mseq = (b[q + 4] << 8) | b[q + 5]
                    foff = (b[q + 6] << 16) | (b[q + 7] << 8) | b[q + 8]
                    flen = (b[q + 9] << 16) | (b[q + 10] << 8) | b[q + 11]
                    q += 12
                    frag = b[q:min(rend, q + flen)]
                    q += flen
                    if mtype != 1 or mlen > MAX_MSG or foff + len(frag) > mlen:
                        continue
                    if foff == 0 and len(frag) == mlen:
                        ch = _parse_hello_body(frag, 0, mlen, None, dtls=True)
                        if ch is not None:
                            out.append(ch)
                        continue
                    msgs = self.flows.get(key)
                    if msgs is None:
                        if len(self.flows) >= MAX_FLOWS:
                            del self.flows[next(iter(self.flows))]
                        msgs = self.flows[key] = {}
                    ent = msgs.get(mseq)
                    if ent is None and len(msgs) >= 4:
                        msgs.clear()  # a client has one or two hellos in flight, not more
                    if ent is None or ent[0] != mlen:
                        ent = msgs[mseq] = [mlen, bytearray(mlen), []]
                    ent[1][foff:foff + len(frag)] = frag
                    ent[2].append((foff, foff + len(frag)))
                    have = 0
                    for s, e in sorted(ent[2]):
                        if s > have:
                            break
                        have = max(have, e)
                    if have >= mlen:
                        del msgs[mseq]
                        ch = _parse_hello_body(bytes(ent[1]), 0, mlen, None, dtls=True)
                        if ch is not None:
                            out.append(ch)
            p = p + 13 + rlen
