"""JA4 / JA4_r on hand-built ClientHellos (FoxIO's own unit-test vector plus the spec's edge cases)."""

from hashlib import sha256

import pytest
from stormguard.features.tls.clienthello import parse_client_hello, parse_sslv2_client_hello
from stormguard.features.tls.ja4 import ja4
from test_tls_builders import (
    CHROME_JA4,
    CHROME_JA4_R,
    chrome_like_hello,
    client_hello,
    ext,
    ext_alpn,
    ext_sig_algs,
    ext_sni,
    ext_versions,
    sslv2_hello,
)


def _ja4(msg: bytes, transport: str = "t") -> tuple[str, str]:
    ch = parse_client_hello(msg)
    assert ch is not None
    return ja4(ch, transport)


@pytest.mark.parametrize("grease", [False, True])
def test_foxio_vector(grease: bool) -> None:
    assert _ja4(chrome_like_hello(grease=grease)) == (CHROME_JA4, CHROME_JA4_R)


def test_quic_and_dtls_prefix() -> None:
    assert _ja4(chrome_like_hello(), "q")[0].startswith("q13d1516h2_")
    ch = parse_client_hello(client_hello(version=0xFEFD, ciphers=[0xC02B]))
    assert ja4(ch, "d")[0].startswith("dd2i0100")


def test_version_sni_alpn_counts() -> None:
    # no supported_versions: legacy version; no SNI: 'i'; no ALPN: '00'
    a, r = _ja4(client_hello(version=0x0302, ciphers=[0x0035, 0x002F], extensions=[ext(0xFF01, b"\x00")]))
    assert a.startswith("t11i020100_")
    assert r == "t11i020100_002f,0035_ff01"  # no signature algorithms: no trailing underscore
    # supported_versions wins over the legacy version, GREASE ignored, highest value
    a, _ = _ja4(client_hello(version=0x0303, extensions=[ext_versions(0x0A0A, 0x0303, 0x0304)]))
    assert a.startswith("t13i")
    # unknown versions map to 00
    a, _ = _ja4(client_hello(version=0x7F17))
    assert a.startswith("t00i")


def test_alpn_rules() -> None:
    def alpn_part(*protos: bytes) -> str:
        return _ja4(client_hello(extensions=[ext_sni("x"), ext_alpn(*protos)]))[0][8:10]

    assert alpn_part(b"h2") == "h2"
    assert alpn_part(b"http/1.1", b"h2") == "h1"
    assert alpn_part(b"h") == "hh"
    # a non-alphanumeric first or last byte: first and last characters of the value's hex form
    assert alpn_part(b"\xab\xcd") == "ad"
    assert alpn_part(b"h2/") == "6f"  # 68 32 2f


def test_counts_cap_at_99_and_hashes() -> None:
    ciphers = list(range(0x0100, 0x0100 + 120))
    exts = [ext(0x1000 + i, b"") for i in range(105)]
    a, r = _ja4(client_hello(ciphers=ciphers, extensions=exts))
    assert a.startswith("t12i999900_")
    cs = ",".join(f"{c:04x}" for c in ciphers)
    assert a.split("_")[1] == sha256(cs.encode()).hexdigest()[:12]
    assert r.split("_")[1] == cs


def test_sni_and_alpn_left_out_of_the_extension_hash_but_counted() -> None:
    a, r = _ja4(client_hello(ciphers=[0x1301], extensions=[ext_sni("x"), ext_alpn(b"h2"), ext(0x0017, b""),
                                                          ext_sig_algs(0x0403, 0x0804)]))
    assert a.startswith("t12d0104h2_")
    assert r.endswith("_1301_000d,0017_0403,0804")
    assert a.split("_")[2] == sha256(b"000d,0017_0403,0804").hexdigest()[:12]


def test_empty_lists_hash_to_zeros() -> None:
    a, r = _ja4(client_hello(ciphers=[], extensions=None))
    assert a == "t12i000000_000000000000_000000000000"
    assert r == "t12i000000__"


def test_sslv2_hello_like_foxio() -> None:
    ch = parse_sslv2_client_hello(sslv2_hello(version=0x0301))
    assert ja4(ch) == ("t10i000000_000000000000_000000000000", "t10i000000__")
