"""JA3 on hand-built ClientHellos: field order, GREASE removal, empty fields, SSLv2 (no JA3)."""

from hashlib import md5

from stormguard.features.tls.clienthello import parse_client_hello, parse_sslv2_client_hello
from stormguard.features.tls.ja3 import ja3, ja3_string
from test_tls_builders import (
    chrome_like_hello,
    client_hello,
    ext,
    ext_groups,
    ext_point_formats,
    ext_sni,
    sslv2_hello,
)


def test_ja3_string_fields_and_hash() -> None:
    msg = client_hello(version=0x0303, ciphers=[0x1301, 0x002F],
                       extensions=[ext_sni("x.test"), ext_groups(29, 23), ext_point_formats(0, 1), ext(0xFF01, b"\x00")])
    ch = parse_client_hello(msg)
    assert ch is not None
    s = "771,4865-47,0-10-11-65281,29-23,0-1"
    assert ja3_string(ch) == s
    assert ja3(ch) == (md5(s.encode()).hexdigest(), s)


def test_ja3_removes_grease_everywhere() -> None:
    ch = parse_client_hello(chrome_like_hello(grease=True))
    plain = parse_client_hello(chrome_like_hello(grease=False))
    assert ch is not None and plain is not None
    assert ja3(ch) == ja3(plain)
    assert "2570" not in ja3_string(ch)  # 0x0a0a


def test_ja3_empty_fields_keep_commas() -> None:
    ch = parse_client_hello(client_hello(version=0x0301, ciphers=[0x0035], extensions=None))
    assert ja3_string(ch) == "769,53,,,"
    ch = parse_client_hello(client_hello(version=0x0303, ciphers=[0x0035], extensions=[ext_groups(29)]))
    assert ja3_string(ch) == "771,53,10,29,"


def test_ja3_known_value_from_salesforce_readme() -> None:
    # the example string in salesforce/ja3's README and its published MD5
    s = ("769,47-53-5-10-49161-49162-49171-49172-50-56-19-4,0-10-11,23-24-25,0")
    assert md5(s.encode()).hexdigest() == "ada70206e40642a3e4461f35503241d5"
    ciphers = [47, 53, 5, 10, 49161, 49162, 49171, 49172, 50, 56, 19, 4]
    ch = parse_client_hello(client_hello(version=769, ciphers=ciphers,
                                         extensions=[ext_sni("a"), ext_groups(23, 24, 25), ext_point_formats(0)]))
    assert ja3(ch) == ("ada70206e40642a3e4461f35503241d5", s)


def test_sslv2_hello_has_no_ja3() -> None:
    ch = parse_sslv2_client_hello(sslv2_hello())
    assert ch is not None and ch.sslv2
    assert ja3(ch) == (None, None)
