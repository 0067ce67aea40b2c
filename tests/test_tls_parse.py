"""ClientHello parsing and the client record-layer stream (no corpus needed)."""

import random

from stormguard.features.tls.clienthello import (
    GREASE,
    TlsClientStream,
    looks_like_tls_client_start,
    parse_client_hello,
)
from test_tls_builders import (
    chrome_like_hello,
    client_hello,
    ext,
    ext_alpn,
    ext_sni,
    ext_versions,
    records,
    sslv2_hello,
)


def test_grease_table() -> None:
    assert len(GREASE) == 16
    assert {0x0A0A, 0x1A1A, 0xFAFA} <= GREASE and 0x0A1A not in GREASE


def test_parse_fields() -> None:
    msg = client_hello(version=0x0303, ciphers=[0x1301, 0x0A0A],
                       extensions=[ext_sni("www.example.org"), ext_alpn(b"h2", b"http/1.1"),
                                   ext_versions(0x2A2A, 0x0304, 0x0303), ext(57, b"\x01\x02"), ext(0xFFA5, b"")])
    ch = parse_client_hello(msg)
    assert ch is not None
    assert ch.legacy_version == 0x0303
    assert ch.ciphers == [0x1301, 0x0A0A]
    assert ch.extensions == [0, 16, 43, 57, 0xFFA5]  # QUIC transport parameters kept
    assert ch.sni == "www.example.org"
    assert ch.alpn == [b"h2", b"http/1.1"] and ch.alpn_str == "h2,http/1.1"
    assert ch.offered_versions == [0x0304, 0x0303]
    assert ch.note is None


def test_not_a_hello_or_too_short() -> None:
    assert parse_client_hello(b"") is None
    assert parse_client_hello(b"\x02\x00\x00\x04abcd") is None
    assert parse_client_hello(b"\x01\x00\x00\x10" + b"\x03\x03") is None


def test_truncated_extensions_keep_what_was_read() -> None:
    msg = client_hello(extensions=[ext_sni("a.b"), ext(23, b""), ext(35, b"x" * 40)])
    ch = parse_client_hello(msg[:-20])
    assert ch is not None
    assert ch.extensions == [0, 23, 35]
    assert ch.note and "truncated" in ch.note


def test_random_bytes_never_raise() -> None:
    rng = random.Random(7)
    base = chrome_like_hello()
    for _ in range(2000):
        b = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        parse_client_hello(bytes(b[: rng.randint(0, len(b))]))
        parse_client_hello(bytes(rng.randbytes(rng.randint(0, 300))))


def test_stream_across_records_and_segments() -> None:
    msg = chrome_like_hello()
    data = records(22, msg, size=100)  # hello split over many records
    s = TlsClientStream()
    out = []
    for i in range(0, len(data), 37):  # and over many segments
        out += s.feed(data[i:i + 37])
    assert len(out) == 1 and out[0].sni == "example.com"


def test_two_messages_in_one_record_and_hrr_behind_ccs() -> None:
    first = client_hello(extensions=[ext_sni("one"), ext_versions(0x0304)])
    second = client_hello(extensions=[ext_sni("two"), ext_versions(0x0304), ext(44, b"\x00\x02ab")])
    s = TlsClientStream()
    assert [c.sni for c in s.feed(records(22, first))] == ["one"]
    # TLS 1.3 middlebox compatibility: CCS, then the second ClientHello after the HelloRetryRequest
    out = s.feed(records(20, b"\x01", version=0x0303) + records(22, second, version=0x0303))
    assert [c.sni for c in out] == ["two"]
    assert s.done  # two hellos: nothing more to look for


def test_stream_stops_at_application_data_and_other_messages() -> None:
    s = TlsClientStream()
    s.feed(records(22, client_hello()))
    s.feed(records(22, b"\x10\x00\x00\x02ab"))  # ClientKeyExchange
    assert s.done
    s = TlsClientStream()
    s.feed(records(23, b"secret"))
    assert s.done
    s = TlsClientStream()
    s.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert s.done


def test_sslv2_compatible_hello() -> None:
    s = TlsClientStream()
    rec = sslv2_hello(version=0x0301)
    out = s.feed(rec[:5]) + s.feed(rec[5:])
    assert len(out) == 1 and out[0].sslv2 and out[0].legacy_version == 0x0301
    assert out[0].ciphers == [0x010080, 0x000035]
    assert looks_like_tls_client_start(rec)


def test_pending_hello_at_end_of_stream() -> None:
    s = TlsClientStream()
    data = records(22, chrome_like_hello(), size=200)
    assert s.feed(data[:-50]) == []
    ch = s.pending_hello()
    assert ch is not None and ch.note


def test_offered_versions_fall_back_to_legacy() -> None:
    ch = parse_client_hello(client_hello(version=0x0303, extensions=[ext_versions(0x0A0A)]))
    assert ch.offered_versions == [0x0303]
    ch = parse_client_hello(client_hello(version=0x0301))
    assert ch.offered_versions == [0x0301]
