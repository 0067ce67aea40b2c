"""JA3 (salesforce): ``version,ciphers,extensions,curves,point_formats`` with GREASE removed, MD5 of that string.

Matches Wireshark's ``tls.handshake.ja3_full`` / ``tls.handshake.ja3``: decimal values joined with ``-``, fields
joined with ``,``, an absent extension gives an empty field (so the string may end in ``,``). SSLv2-format hellos
have no JA3 (Wireshark computes none), so :func:`ja3` returns ``None`` for them.
"""

from __future__ import annotations

from hashlib import md5

from stormguard.features.tls.clienthello import GREASE, ClientHello


def ja3_string(ch: ClientHello) -> str | None:
    """The JA3 full string of a ClientHello (``None`` for SSLv2-format hellos)."""
    if ch.sslv2:
        return None
    return ",".join((
        str(ch.legacy_version),
        "-".join(str(c) for c in ch.ciphers if c not in GREASE),
        "-".join(str(e) for e in ch.extensions if e not in GREASE),
        "-".join(str(g) for g in ch.supported_groups if g not in GREASE),
        "-".join(str(f) for f in ch.ec_point_formats),
    ))


def ja3_digest(s: str) -> str:
    return md5(s.encode("ascii"), usedforsecurity=False).hexdigest()


def ja3(ch: ClientHello) -> tuple[str, str] | tuple[None, None]:
    """``(ja3_hash, ja3_string)`` or ``(None, None)``."""
    s = ja3_string(ch)
    if s is None:
        return None, None
    return ja3_digest(s), s
