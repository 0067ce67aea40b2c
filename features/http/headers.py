"""HTTP request headers and client claims → small, comparable signals.

Used by every reader (logs with headers, HAR files, captures) and by the live server, so nothing here imports
pandas and every function is cheap enough to call once per connection (the feature code additionally caches
results per distinct input value).

* :func:`header_entropy` — Shannon entropy of the header-name sequence.
* :func:`header_order_fingerprint` — stormguard's own header-order fingerprint (not JA4H: JA4H is under FoxIO's
  non-commercial licence, so this is an independent, deliberately simple design).
* :func:`is_browser_ua` / :func:`ua_family` — what a User-Agent *claims* to be.
* :func:`tls_client_class` — what the TLS ClientHello (its JA4 ``a`` section) *looks* like.
* :func:`finish_row` — the header columns (entropy, order) every record source derives the same way.

The last two are inputs to the UA/TLS-consistency feature (a UA claiming a browser while the TLS stack looks like
a library). Both are heuristics that feed a model; neither is a verdict on its own.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

from stormguard.schema import HEADER_NAME_SEP

__all__ = [
    "VOLATILE_HEADERS",
    "header_entropy",
    "header_order_fingerprint",
    "split_header_names",
    "is_browser_ua",
    "ua_family",
    "tls_client_class",
    "TlsClass",
]

#: Header names (lower case) whose presence depends on the *request state* (cookies set yet, navigation vs direct,
#: cache state, request body, credentials), not on the client software. They are left out of the hash part of
#: the fingerprint so that one client keeps one fingerprint across its requests; cookie and referer presence are
#: kept as two readable flags instead, because "never sends either" is itself a strong bot signal.
VOLATILE_HEADERS: frozenset[str] = frozenset({
    "cookie", "referer", "content-length", "content-type", "if-none-match", "if-modified-since", "if-range",
    "if-match", "if-unmodified-since", "range", "authorization", "proxy-authorization", "cache-control", "pragma",
    "origin", "last-event-id",
})


def split_header_names(joined: str | None) -> list[str]:
    """Inverse of the record column ``header_names`` (names joined with ``","``); ``None`` → ``[]``."""
    if not joined:
        return []
    return joined.split(",")


def header_entropy(names: Sequence[str]) -> float:
    """Shannon entropy, in bits per symbol, of the header names as one string.

    Definition: ``s = "\\n".join(name.lower() for name in names)`` (wire order; the ``"\\n"`` separators are
    symbols too), alphabet = the distinct Unicode characters of ``s``, ``H = -Σ p(c)·log2 p(c)`` with ``p(c)`` the
    relative frequency of character ``c`` in ``s``.

    Why this definition: header names are lower-cased because case is a transport artefact (HTTP/2 and ASGI
    servers lower-case everything) and would otherwise make the same client look different on h1 and h2. A
    browser sends 8–20 long, varied names (``sec-fetch-mode``, ``accept-language`` …) that use most of the
    lower-case alphabet, giving ≈4.0–4.3 bits; scripted clients send 2–5 short names (``host``, ``user-agent``,
    ``accept``) over a smaller alphabet, giving ≈3.3–3.8 bits, and a bare ``GET /`` with one or no header
    scores lowest. The separators count so that the number of headers influences the value, not only their
    spelling.

    An empty sequence returns ``0.0`` (a parsed request *with no headers* is a real, very bot-like observation).
    "Headers unknown" (e.g. an access log) is not an empty sequence: callers store a null entropy for it.
    """
    if not names:
        return 0.0
    text = "\n".join(names).lower()
    total = len(text)
    if total == 0:
        return 0.0
    entropy = 0.0
    for count in Counter(text).values():
        p = count / total
        entropy -= p * math.log2(p)
    return entropy + 0.0  # normalise -0.0


def _case_style(names: Sequence[str]) -> str:
    """``l`` all lower case, ``t`` all canonical Title-Case (``Accept-Encoding``), ``m`` mixed, ``n`` none."""
    if not names:
        return "n"
    if all(name == name.lower() for name in names):
        return "l"
    if all(name == "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-")) for name in names):
        return "t"
    return "m"


def header_order_fingerprint(names: Sequence[str]) -> str:
    """stormguard's header-order fingerprint: ``<case><nn><c><r>_<hash12>``, e.g. ``t07c-_3fa2c1d9e0b4``.

    * ``case`` — ``l`` (all lower case: HTTP/2, many libraries, every ASGI server), ``t`` (all canonical
      Title-Case, e.g. Go, curl, browsers on HTTP/1.1), ``m`` (mixed, often hand-written clients), ``n`` (no
      headers).
    * ``nn`` — number of *stable* headers (all names minus :data:`VOLATILE_HEADERS`), two digits, capped at 99.
    * ``c`` / ``r`` — ``c`` if a Cookie header is present else ``-``; ``r`` likewise for Referer.
    * ``hash12`` — first 12 hex digits of SHA-256 over the lower-cased stable names in wire order joined with
      ``"\\n"``. Lower-casing makes the hash independent of the transport (h1 vs h2 vs ASGI); the order is kept
      because header *order* is set by the client's HTTP stack and rarely spoofed.

    The part after ``_`` identifies the client software; the readable prefix lets an analyst see at a glance
    "few headers, no cookie, no referer". Note that the live server (ASGI) only ever sees lower-case names, so
    its fingerprints always start with ``l`` or ``n``; compare by the hash part across sources.
    """
    lowered = [name.lower() for name in names]
    stable = [name for name in lowered if name not in VOLATILE_HEADERS]
    digest = hashlib.sha256("\n".join(stable).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    cookie = "c" if "cookie" in lowered else "-"
    referer = "r" if "referer" in lowered else "-"
    return f"{_case_style(names)}{min(len(stable), 99):02d}{cookie}{referer}_{digest}"


# ---------------------------------------------------------------------------------------------------------------
# User-Agent claims

_BOT_MARKERS = re.compile(
    r"bot\b|bot/|crawl|spider|slurp|scrap|fetch|monitor|checker|archiver|preview|headless|phantomjs|"
    r"selenium|puppeteer|playwright|lighthouse|pingdom|uptime|facebookexternalhit|ia_archiver|python|"
    r"curl|wget|httpclient|okhttp|java/|go-http|axios|node-fetch|libwww|scrapy|\+https?://",
    re.IGNORECASE,
)
_ENGINE = re.compile(r"AppleWebKit/|Gecko/|Trident/|Presto/")
_FAMILIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("curl", re.compile(r"^curl/", re.I)),
    ("wget", re.compile(r"^wget/", re.I)),
    ("python", re.compile(r"python|aiohttp|httpx|scrapy", re.I)),
    ("go", re.compile(r"^go-http-client|^Go ", re.I)),
    ("java", re.compile(r"^java/|okhttp|apache-httpclient", re.I)),
    ("node", re.compile(r"node-fetch|axios|undici|^node", re.I)),
    ("bot", re.compile(r"bot\b|bot/|crawl|spider|slurp|facebookexternalhit|ia_archiver", re.I)),
    ("headless", re.compile(r"headless|phantomjs|selenium|puppeteer|playwright|lighthouse", re.I)),
    ("edge", re.compile(r"Edg(e|A|iOS)?/")),
    ("opera", re.compile(r"OPR/|Opera")),
    ("firefox", re.compile(r"Firefox/|FxiOS/")),
    ("chrome", re.compile(r"Chrome/|CriOS/|Chromium/")),
    ("safari", re.compile(r"Version/[\d.]+.*Safari/")),
    ("ie", re.compile(r"MSIE |Trident/")),
)


@lru_cache(maxsize=65536)
def ua_family(ua: str | None) -> str:
    """A coarse family name: ``chrome``, ``firefox``, ``safari``, ``edge``, ``opera``, ``ie``, ``bot``,
    ``headless``, ``curl``, ``wget``, ``python``, ``go``, ``java``, ``node``, ``other`` or ``none``.

    First match wins in a fixed order: libraries and self-declared bots before browsers, because bots commonly
    embed a browser token (``Mozilla/5.0 (compatible; Googlebot/2.1 …) Chrome/…``)."""
    if not ua or ua == "-":
        return "none"
    for family, pattern in _FAMILIES:
        if pattern.search(ua):
            return family
    return "other"


@lru_cache(maxsize=65536)
def is_browser_ua(ua: str | None) -> bool:
    """True when the User-Agent *claims* to be an interactive browser.

    The claim is: starts with ``Mozilla/5.0 (`` (every current browser), names a rendering engine
    (``AppleWebKit/``, ``Gecko/``, ``Trident/``, ``Presto/``) and carries no self-declared automation marker
    (``bot``, ``crawl``, ``headless``, ``python``, a ``+http://`` contact URL …). This is a claim, not the truth:
    its use is to be contradicted by the TLS fingerprint (see :func:`tls_client_class`).
    """
    if not ua or not ua.startswith("Mozilla/5.0 ("):
        return False
    if not _ENGINE.search(ua):
        return False
    return not _BOT_MARKERS.search(ua)


# ---------------------------------------------------------------------------------------------------------------
# TLS client class from JA4

TlsClass = Literal["browser", "library", "unknown"]

# JA4 section a: protocol (t/q/d), version (2 chars), SNI (d/i), 2-digit cipher count, 2-digit extension count,
# ALPN first+last character ("00" = no ALPN).
_JA4_A = re.compile(r"^([tqd])([0-9a-z]{2})([di])(\d\d)(\d\d)(..)(?:_|$)")


@lru_cache(maxsize=65536)
def tls_client_class(ja4: str | None) -> TlsClass:
    """Classify a TLS client stack as ``browser``-like, ``library``-like or ``unknown`` from JA4 section ``a``.

    Rules (a heuristic input for the model, never a verdict by itself):

    * ``library`` when any of: no ALPN (``00``) — every browser offers ALPN; an IP address instead of an SNI
      (``i``) — browsers send SNI for host names; highest offered version below TLS 1.3 — every current browser
      offers 1.3; fewer than 10 extensions or more than 24 cipher suites — browsers send 13–18 extensions and
      15–20 suites, OpenSSL-default stacks (curl, Python, many bots) send long suite lists and few extensions;
      ALPN ``h1`` with fewer than 15 extensions (browsers only lead with http/1.1 for WebSockets, and then still
      with their full extension list).
    * ``browser`` when TLS 1.3, SNI, ALPN ``h2`` (or ``h3`` over QUIC), 8–24 suites and at least 14 extensions
      (Chrome ``t13d1516h2``, Firefox ``t13d1715h2``, Safari ``t13d2014h2``).
    * ``unknown`` otherwise, and for ``None`` or a string that is not a JA4.

    GREASE is not visible in JA4 (it is removed before counting), so it cannot be used here.
    """
    if not ja4:
        return "unknown"
    match = _JA4_A.match(ja4)
    if match is None:
        return "unknown"
    _proto, version, sni, ciphers_s, exts_s, alpn = match.groups()
    ciphers, exts = int(ciphers_s), int(exts_s)
    if alpn == "00" or sni == "i" or version != "13" or exts < 10 or ciphers > 24:
        return "library"
    if alpn == "h1":
        return "unknown" if exts >= 15 else "library"
    if alpn in ("h2", "h3") and 8 <= ciphers <= 24 and exts >= 14:
        return "browser"
    return "unknown"


def finish_row(row: dict[str, Any]) -> dict[str, Any]:
    """Derive the header columns every source shares, so each is defined in one place."""
    names = row.get("header_names")
    if names:
        joined = names if isinstance(names, str) else HEADER_NAME_SEP.join(names)
        entropy, order = _header_columns(joined)
        row["header_names"] = joined
        if row.get("header_entropy") is None:
            row["header_entropy"] = entropy
        if row.get("header_order") is None:
            row["header_order"] = order
    return row


@lru_cache(maxsize=8192)
def _header_columns(joined: str) -> tuple[float, str]:
    """Entropy and order fingerprint of one header-name list (clients repeat theirs: computed once per list)."""
    split = joined.split(HEADER_NAME_SEP)
    return header_entropy(split), header_order_fingerprint(split)
