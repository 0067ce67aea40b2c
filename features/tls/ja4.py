"""JA4 (FoxIO, BSD-3 part): the TLS/QUIC/DTLS client fingerprint ``a_b_c`` and its raw form ``JA4_r``.

* ``a``: transport (``t`` TCP, ``q`` QUIC, ``d`` DTLS), version (highest non-GREASE supported_versions entry, else
  the hello's legacy version; ``13``/``12``/``11``/``10``/``s3``/``s2``/``d1``/``d2``/``d3``, else ``00``), ``d`` when
  an SNI is present else ``i``, cipher and extension counts (GREASE removed, capped at 99), first and last
  character of the first ALPN value (``00`` without ALPN; the hex digits of the value when either end byte is not
  alphanumeric).
* ``b``: first 12 hex chars of SHA-256 over the sorted cipher suites as 4-digit hex joined by ``,``.
* ``c``: the same over the sorted extensions without SNI (0) and ALPN (16), then ``_`` and the signature
  algorithms in wire order (the ``_`` part only when there are signature algorithms, as FoxIO does).

Only JA4 itself lives here: JA4S/JA4H/JA4X/JA4SSH and the rest of JA4+ are under a non-commercial licence.
"""

from __future__ import annotations

from hashlib import sha256

from stormguard.features.tls.clienthello import EXT_ALPN, EXT_SNI, EXT_SUPPORTED_VERSIONS, GREASE, ClientHello

_VERSIONS = {
    0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2", 0x0200: "s2",
    0x0100: "s1", 0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3",
}
_EMPTY = "000000000000"


def _is_alnum(b: int) -> bool:
    return 0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A


def _alpn_part(ch: ClientHello) -> str:
    if not ch.alpn or not ch.alpn[0]:
        return "00"
    v = ch.alpn[0]
    if _is_alnum(v[0]) and _is_alnum(v[-1]):
        return chr(v[0]) + chr(v[-1])
    h = v.hex()
    return h[0] + h[-1]


def _version(ch: ClientHello) -> str:
    if EXT_SUPPORTED_VERSIONS in ch.extensions:
        vs = [v for v in ch.supported_versions if v not in GREASE]
        if vs:
            return _VERSIONS.get(max(vs), "00")
    return _VERSIONS.get(ch.legacy_version, "00")


def _hash12(s: str) -> str:
    return sha256(s.encode("ascii")).hexdigest()[:12] if s else _EMPTY


def ja4(ch: ClientHello, transport: str = "t") -> tuple[str, str]:
    """``(ja4, ja4_r)`` for a ClientHello; ``transport`` is ``"t"``, ``"q"`` (QUIC) or ``"d"`` (DTLS)."""
    if ch.sslv2:
        ciphers: list[int] = []
        exts: list[int] = []
    else:
        ciphers = [c for c in ch.ciphers if c not in GREASE]
        exts = [e for e in ch.extensions if e not in GREASE]
    a = (f"{transport}{_version(ch)}{'d' if ch.sni is not None and EXT_SNI in exts else 'i'}"
         f"{min(len(ciphers), 99):02d}{min(len(exts), 99):02d}{_alpn_part(ch)}")
    cs = ",".join(f"{c:04x}" for c in sorted(ciphers))
    es = ",".join(f"{e:04x}" for e in sorted(exts) if e != EXT_SNI and e != EXT_ALPN)
    sig = ",".join(f"{s:04x}" for s in ch.sig_algs) if not ch.sslv2 else ""
    c_raw = f"{es}_{sig}" if sig else es
    return f"{a}_{_hash12(cs)}_{_hash12(c_raw)}", f"{a}_{cs}_{c_raw}"
