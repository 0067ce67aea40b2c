"""Property-based fuzzing of every parser that takes outside input (captures and QUIC have their own files:
``test_fuzz_capture.py``, ``test_quic.py``).

Invariant for each: no exception escapes except the project's own documented error types, and no allocation
grows with a length the input merely *claims* (peak traced memory stays within a constant plus a small multiple
of the bytes actually given).

Seeds are built by the same builders the unit tests use (committed code, deterministic) plus regressions kept
in ``tests/fuzz_seeds/`` (inputs that once crashed a parser). The budget is bounded for CI:
``STORMGUARD_FUZZ_EXAMPLES`` (default 150) examples per target; raise it locally for a longer hunt, e.g.
``STORMGUARD_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz_parsers.py``.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from stormguard.features.capture.dtls import DtlsTracker
from stormguard.features.http.headers import (
    header_entropy,
    header_order_fingerprint,
    is_browser_ua,
    tls_client_class,
    ua_family,
)
from stormguard.features.logs.har import read_har
from stormguard.features.logs.reader import read_log
from stormguard.features.tls.clienthello import TlsClientStream, parse_client_hello, parse_sslv2_client_hello
from test_tls_builders import chrome_like_hello, client_hello, ext, ext_sni, hello_body, records, u16, u24

from stormguard.config import ConfigError, load_config
from stormguard.report import ReplayStats

EXAMPLES = int(os.environ.get("STORMGUARD_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SEEDS = Path(__file__).parent / "fuzz_seeds"
_TMP = Path(tempfile.mkdtemp(prefix="sg-fuzz-parsers-"))


def _seed(name: str) -> bytes:
    return (SEEDS / name).read_bytes()


def bounded_memory(fn: Callable[[], Any], given_bytes: int, factor: int = 16, slack: int = 2 << 20) -> Any:
    """Run ``fn`` and fail if its peak traced allocation exceeds ``slack + factor × given_bytes``: a parser
    that trusts a claimed length (2^24 for a TLS handshake, 2^32 for a pcap record) would allocate for it."""
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= slack + factor * given_bytes, f"peak {peak} bytes for {given_bytes} bytes of input"
    return result


def mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """Truncations, bit flips, spliced junk and overwritten length fields of a valid input."""
    n = len(seed)

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["cut", "flip", "splice", "length", "byte"]))
            if not data:
                break
            at = draw(st.integers(0, max(0, len(data) - 1)))
            if kind == "cut":
                del data[at:]
            elif kind == "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif kind == "splice":
                data[at:at] = draw(st.binary(max_size=64))
            elif kind == "length":  # claim a huge length where a length field may sit
                data[at:at + 3] = draw(st.sampled_from([b"\xff\xff\xff", b"\x00\x00\x00", b"\x7f\xff\xff"]))
            else:
                data[at] = draw(st.integers(0, 255))
        return bytes(data[: n + 256])

    return mutate()


# -- TLS ClientHello ------------------------------------------------------------------------------------------

HELLO = chrome_like_hello()
SMALL_HELLO = client_hello(extensions=[ext_sni("a.example"), ext(43, b"\x02\x03\x04")])


@FUZZ
@given(mutations(HELLO) | mutations(SMALL_HELLO) | st.binary(max_size=600))
@example(b"\x01\xff\xff\xff")  # a handshake claiming 16 MiB
@example(b"\x01\x00\x00\x06\x03\x03" + b"\xff" * 2)
def test_client_hello_parser(msg: bytes) -> None:
    ch = bounded_memory(lambda: parse_client_hello(msg), len(msg))
    assert ch is None or isinstance(ch.ciphers, list)
    bounded_memory(lambda: parse_sslv2_client_hello(msg), len(msg))


@FUZZ
@given(mutations(records(22, HELLO, size=120)), st.lists(st.integers(1, 400), min_size=1, max_size=8))
@example(b"\x16\x03\x01\xff\xff" + b"\x01\xff\xff\xff", [5, 4])  # record and handshake lengths far beyond the data
def test_client_stream(stream: bytes, cuts: list[int]) -> None:
    def run() -> list[Any]:
        s, out, pos = TlsClientStream(), [], 0
        for cut in cuts * (1 + len(stream) // max(1, sum(cuts))):
            out += s.feed(stream[pos:pos + cut])
            pos += cut
            if pos >= len(stream):
                break
        s.pending_hello()
        return out

    bounded_memory(run, len(stream))


# -- DTLS ------------------------------------------------------------------------------------------------------

def _dtls_datagram() -> bytes:
    body = hello_body(version=0xFEFD, cookie=b"")
    hs = b"\x01" + u24(len(body)) + u16(0) + u24(0) + u24(len(body)) + body
    return b"\x16\xfe\xff" + b"\x00" * 8 + u16(len(hs)) + hs


@FUZZ
@given(st.lists(mutations(_dtls_datagram()) | st.binary(max_size=200), min_size=1, max_size=4))
@example([b"\x16\xfe\xfd" + b"\x00" * 8 + b"\x00\x0c" + b"\x01\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x04"])
def test_dtls_tracker(datagrams: list[bytes]) -> None:
    tracker = DtlsTracker()
    bounded_memory(lambda: [tracker.feed(d, ("a", 1, "b", 2)) for d in datagrams], sum(map(len, datagrams)))


# -- access logs -----------------------------------------------------------------------------------------------

CLF_LINES = [
    '203.0.113.7 - - [17/May/2015:10:05:03 +0000] "GET /a?b=c HTTP/1.1" 200 512 "http://r/" "Mozilla/5.0 (X11)"',
    '198.51.100.2 - bob [17/May/2015:10:05:04 -0700] "POST /login HTTP/1.0" 302 - "-" "curl/8.0"',
    '- - - [01/Jan/2024:00:00:00 +0100] "GET / HTTP/1.1" 200 1 "-" sess-1 "Mozilla/5.0"',
    '2001:db8::1 - - [17/May/2015:10:05:05 +0000] "\\x16\\x03\\x01" 400 0 "-" "-"',
    '203.0.113.7 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 512',
]
JSON_LINES = [json.dumps({"ts": 1_700_000_000.5, "src_ip": "192.0.2.1", "method": "GET", "path": "/x",
                          "status": 200, "user_agent": "ua", "headers": ["host", "accept"]}),
              json.dumps({"@timestamp": "2024-01-01T00:00:00Z", "source": {"ip": "2001:db8::2"},
                          "url": {"original": "/y"}, "http": {"response": {"status_code": 404}}})]
_line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=200)


def _mutated_lines(seeds: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(seeds), _line_text,
                     st.builds(lambda s, a, b, junk: s[:a] + junk + s[b:], st.sampled_from(seeds),
                               st.integers(0, 160), st.integers(0, 200), _line_text))


@FUZZ
@given(st.lists(_mutated_lines(CLF_LINES + JSON_LINES), min_size=1, max_size=30),
       st.sampled_from(["auto", "combined", "common", "iliou", "jsonl",
                        r"^(?P<src_ip>\S+) (?P<ts>\S+) (?P<request>.*)$"]),
       st.binary(max_size=40))
@example([_seed("jsonl-deep-nesting.txt").decode()], "auto", b"")
@example(["{" * 3000], "jsonl", b"")
def test_log_readers(lines: list[str], fmt: str, junk: bytes) -> None:
    path = _TMP / "fuzz.log"
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass") + junk
    path.write_bytes(data)
    stats = ReplayStats()
    try:
        rows = bounded_memory(lambda: list(read_log(path, stats, fmt=fmt)), len(data), factor=64)
    except ValueError as exc:  # documented: a custom pattern without usable groups, an unknown format name
        assert fmt not in ("auto", "combined", "common", "iliou", "jsonl"), exc
        return
    assert all(isinstance(r, dict) for r in rows)
    assert len(rows) <= max(stats.lines, 1) + 1


# -- HAR -------------------------------------------------------------------------------------------------------

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4), max_leaves=25)
_entry = st.fixed_dictionaries({}, optional={
    "startedDateTime": st.sampled_from(["2018-01-14T07:52:35.297+00:00", "garbage", ""]) | _json,
    "request": st.fixed_dictionaries({}, optional={"method": _json, "url": st.text(max_size=40) | _json,
                                                   "httpVersion": _json, "headers": st.lists(
                                                       st.fixed_dictionaries({"name": _json, "value": _json}),
                                                       max_size=5) | _json}),
    "response": st.fixed_dictionaries({}, optional={"status": _json}) | _json,
    "time": _json, "serverIPAddress": _json, "connection": _json})


@FUZZ
@given(st.lists(_entry | _json, max_size=6), st.sampled_from(["whole", "cut", "not-har"]))
def test_har_reader(entries: list[Any], shape: str) -> None:
    doc = json.dumps({"log": {"version": "1.2", "entries": entries}})
    if shape == "cut":
        doc = doc[: len(doc) // 2]
    elif shape == "not-har":
        doc = json.dumps(entries)
    path = _TMP / "fuzz.har"
    path.write_text(doc)
    stats = ReplayStats()
    rows = list(read_har(path, stats))
    assert all(isinstance(r, dict) for r in rows)


# -- HTTP headers, Forwarded / X-Forwarded-For -----------------------------------------------------------------

@FUZZ
@given(st.lists(st.text(max_size=30), max_size=40), st.text(max_size=300), st.text(max_size=60))
def test_header_signals(names: list[str], ua: str, ja4: str) -> None:
    assert header_entropy(names) >= 0.0
    assert isinstance(header_order_fingerprint(names), str)
    assert isinstance(is_browser_ua(ua), bool)
    ua_family(ua)
    tls_client_class(ja4)


_hop = st.one_of(st.ip_addresses().map(str), st.text(max_size=20),
                 st.ip_addresses(v=6).map(lambda a: f'"[{a}]:443"'), st.just("unknown"), st.just("_hidden"))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["for=", "For=", "by=", "proto=", "", "for = "]), _hop), max_size=6),
       st.lists(_hop, max_size=6), st.text(max_size=100))
def test_forwarded_and_x_forwarded_for(forwarded: list[tuple[str, Any]], xff: list[Any], junk: str) -> None:
    from stormguard.server.layers.identity import _forwarded_hops, parse_ip

    header = ", ".join(f"{k}{v}" for k, v in forwarded) + junk
    hops = _forwarded_hops(header)
    assert hops is None or all(isinstance(h, str) for h in hops)
    for hop in [*xff, junk, *(hops or [])]:
        ip = parse_ip(str(hop))
        assert ip is None or isinstance(ip, str)


# -- JWTs ------------------------------------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_jwt_part = st.one_of(st.text(max_size=40), _json.map(lambda v: _b64(json.dumps(v).encode())),
                      st.binary(max_size=40).map(_b64))


@FUZZ
@given(st.lists(_jwt_part, min_size=1, max_size=5), st.sampled_from([".", "..", ""]))
@example([_b64(b'{"alg":"none","typ":"JWT"}'), _b64(b'{"tenant":"a","exp":9999999999}'), ""], ".")
@example([_b64(b'{"alg":"HS256"}'), _b64(b'{"tenant":"a"}'), _b64(b"\x00" * 32)], ".")
def test_jwt_verifier_never_raises(parts: list[str], sep: str) -> None:
    from stormguard.server.layers.tenants import JwtVerifier

    claims, reason = JwtVerifier(secret="s" * 32).verify(sep.join(parts) if sep else "".join(parts))
    assert (claims is None) != (reason is None)
    assert claims is None  # nothing built here carries a valid signature


# -- TOML configuration ----------------------------------------------------------------------------------------

_toml_value = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=False, allow_infinity=False).map(
    repr), st.text(max_size=12).map(json.dumps), st.sampled_from(["true", "false", "[]", "[1, 'a']", "{}",
                                                                  "{ a = 1 }", "nan", "-inf"]))
_key = st.sampled_from(["url", "max_keys", "ip_rate", "ip_burst", "half_life_hours", "block_score", "tiers",
                        "fail_mode", "prefix", "timeout", "trusted_proxies", "refusal_actions", "rules", "x"])
_section = st.sampled_from(["store", "server", "reputation", "threshold", "geoip", "nope", "server.tenant_pools"])


@FUZZ
@given(st.lists(st.tuples(_section, st.lists(st.tuples(_key, _toml_value), max_size=4)), max_size=4),
       st.binary(max_size=30))
@example([], b"\xff\xfe not utf-8")
@example([("store", [("url", '"memory://"')])], b"")
def test_config_loader_raises_only_config_errors(sections: list[tuple[str, list[tuple[str, str]]]],
                                                 junk: bytes) -> None:
    text = "\n".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in items) for name, items in sections)
    path = _TMP / "fuzz.toml"
    path.write_bytes(text.encode() + junk)
    try:
        load_config(path, env={})
    except ConfigError as exc:
        assert str(exc).startswith(str(path)), exc  # the file is named (and the section/key, by the message)


# -- model bundles ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle_bytes() -> bytes:
    return (Path(__file__).resolve().parent.parent / "data" / "default-model.skops").read_bytes()


def test_bundle_loader_raises_only_bundle_errors(bundle_bytes: bytes) -> None:
    from hypothesis import find  # noqa: F401 - hypothesis drives the mutations below through @given
    from stormguard.models.bundle import BundleError, load_bundle

    @FUZZ
    @given(mutations(bundle_bytes[:4096]) | st.binary(max_size=300), st.integers(0, len(bundle_bytes)))
    def check(head: bytes, keep: int) -> None:
        path = _TMP / "fuzz.skops"
        path.write_bytes(head + bundle_bytes[len(head):keep])
        try:
            load_bundle(path)
        except BundleError:
            pass

    check()
