"""QUIC Initial decryption → ClientHello: RFC 9001 / RFC 9369 test vectors, synthetic handshakes, real captures.

The RFC vectors pin the key schedule and packet protection byte for byte. Everything beyond one packet
(fragmented/out-of-order CRYPTO data, server-chosen DCIDs, Retry, HelloRetryRequest, coalescing, state bounds) is
exercised with packets protected by the small encryptor below, which is itself checked against the RFC packets.
The corpus test replays every capture that tshark saw a QUIC ClientHello in and requires each one to be found.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import corpus_root
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stormguard.features.capture.quic import (
    QUIC_V1,
    QUIC_V2,
    QuicInitialTracker,
    _decode_pn,
    derive_client_initial_keys,
    looks_like_quic_initial,
)

try:  # the TLS parser is written in parallel; fall back to a byte search for the SNI when it is not there
    from stormguard.features.tls.clienthello import parse_client_hello
except ImportError:  # pragma: no cover - depends on the state of the tree
    parse_client_hello = None

DRAFT_29 = 0xFF00001D
RFC_DCID = bytes.fromhex("8394c8f03e515708")

# RFC 9001 A.2 / RFC 9369 A.2: the client's CRYPTO frame (ClientHello for example.com) before 917 bytes of PADDING.
RFC_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
)
RFC_PAYLOAD = RFC_CRYPTO_FRAME + bytes(917)
RFC_CLIENT_HELLO = RFC_CRYPTO_FRAME[4:]  # frame type 06, offset 00, length 40f1

RFC9001_A2_PROTECTED = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)

RFC9369_A2_PROTECTED = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc"
)


# ---------------------------------------------------------------------------------------------------------------
# A minimal client-side Initial encryptor, so that tests can build any packet sequence they need
# ---------------------------------------------------------------------------------------------------------------


def varint(value: int, size: int | None = None) -> bytes:
    if size is None:
        size = 1 if value < 0x40 else 2 if value < 0x4000 else 4 if value < 0x40000000 else 8
    prefix = {1: 0, 2: 1, 4: 2, 8: 3}[size]
    return ((prefix << (8 * size - 2)) | value).to_bytes(size, "big")


def protect_initial(
    payload: bytes,
    *,
    dcid: bytes = RFC_DCID,
    key_dcid: bytes | None = None,
    version: int = QUIC_V1,
    pn: int = 0,
    pn_len: int = 4,
    scid: bytes = b"",
    token: bytes = b"",
) -> bytes:
    """Build a protected client Initial; keys come from ``key_dcid`` (the connection's original DCID)."""
    keys = derive_client_initial_keys(key_dcid if key_dcid is not None else dcid, version)
    payload = payload + bytes(max(0, 4 - pn_len - len(payload)))  # room for the header-protection sample
    itype = 1 if version == QUIC_V2 else 0
    first = 0xC0 | (itype << 4) | (pn_len - 1)
    header = (
        bytes([first])
        + version.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + varint(len(token))
        + token
        + varint(pn_len + len(payload) + 16, 2)
        + (pn & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big")
    )
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(keys.key).encrypt(nonce, payload, header)
    sample = sealed[4 - pn_len : 20 - pn_len]
    enc = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    out = bytearray(header)
    out[0] ^= mask[0] & 0x0F
    pn_at = len(header) - pn_len
    for i in range(pn_len):
        out[pn_at + i] ^= mask[1 + i]
    return bytes(out) + sealed


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def make_client_hello(sni: str, pad: int = 0) -> bytes:
    """A small but well-formed TLS 1.3 ClientHello handshake message; ``pad`` grows it via the padding extension."""
    name = sni.encode()
    sni_ext = (len(name) + 3).to_bytes(2, "big") + b"\x00" + len(name).to_bytes(2, "big") + name
    exts = b"\x00\x00" + len(sni_ext).to_bytes(2, "big") + sni_ext
    exts += b"\x00\x2b\x00\x03\x02\x03\x04"  # supported_versions: TLS 1.3
    if pad:
        exts += b"\x00\x15" + pad.to_bytes(2, "big") + bytes(pad)
    body = b"\x03\x03" + bytes(range(32)) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += len(exts).to_bytes(2, "big") + exts
    return b"\x01" + len(body).to_bytes(3, "big") + body


def sni_of(msg: bytes) -> str | None:
    if parse_client_hello is not None:
        ch = parse_client_hello(msg)
        return None if ch is None else ch.sni
    return None


FLOW = ("10.0.0.1", 50000, "10.0.0.2", 443)


# ---------------------------------------------------------------------------------------------------------------
# RFC test vectors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "secret", "key", "iv", "hp"),
    [
        pytest.param(
            QUIC_V1,
            "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea",
            "1f369613dd76d5467730efcbe3b1a22d",
            "fa044b2f42a3fd3b46fb255c",
            "9f50449e04a0e810283a1e9933adedd2",
            id="rfc9001-A.1",
        ),
        pytest.param(
            QUIC_V2,
            "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b",
            "8b1a0bc121284290a29e0971b5cd045d",
            "91f73e2351d8fa91660e909f",
            "45b95e15235d6f45a6b19cbcb0294ba9",
            id="rfc9369-A.1",
        ),
    ],
)
def test_client_initial_key_derivation(version: int, secret: str, key: str, iv: str, hp: str) -> None:
    keys = derive_client_initial_keys(RFC_DCID, version)
    assert keys.secret.hex() == secret
    assert keys.key.hex() == key
    assert keys.iv.hex() == iv
    assert keys.hp.hex() == hp


@pytest.mark.parametrize(
    ("version", "protected"),
    [
        pytest.param(QUIC_V1, RFC9001_A2_PROTECTED, id="v1"),
        pytest.param(QUIC_V2, RFC9369_A2_PROTECTED, id="v2"),
    ],
)
def test_rfc_protected_client_initial_yields_client_hello(version: int, protected: bytes) -> None:
    assert len(protected) == 1200
    assert looks_like_quic_initial(protected)
    tracker = QuicInitialTracker()
    hellos = tracker.feed(protected, FLOW, 0.0)
    assert hellos == [RFC_CLIENT_HELLO]
    assert hellos[0].startswith(bytes.fromhex("010000ed0303ebf8fa56f129"))
    assert tracker.packets_decrypted == 1 and not tracker.errors
    if parse_client_hello is not None:
        assert sni_of(hellos[0]) == "example.com"


@pytest.mark.parametrize(
    ("version", "protected"),
    [
        pytest.param(QUIC_V1, RFC9001_A2_PROTECTED, id="v1"),
        pytest.param(QUIC_V2, RFC9369_A2_PROTECTED, id="v2"),
    ],
)
def test_test_encryptor_reproduces_rfc_packet(version: int, protected: bytes) -> None:
    """The encryptor used by the other tests is exact: it rebuilds the RFC's protected packet (pn 2, 4-byte pn)."""
    assert protect_initial(RFC_PAYLOAD, version=version, pn=2) == protected


def test_rfc_packet_tampering_is_rejected() -> None:
    for at in (7, 30, 600, 1199):
        damaged = bytearray(RFC9001_A2_PROTECTED)
        damaged[at] ^= 0x01
        tracker = QuicInitialTracker()
        assert tracker.feed(bytes(damaged), FLOW, 0.0) == []
        assert tracker.errors["decrypt_failed"] == 1


def test_packet_number_decoding_rfc9000_a3() -> None:
    assert _decode_pn(0xA82F30EA, 0x9B32, 16) == 0xA82F9B32
    assert _decode_pn(-1, 0, 8) == 0
    assert _decode_pn(254, 0x01, 8) == 257


# ---------------------------------------------------------------------------------------------------------------
# Cheap check
# ---------------------------------------------------------------------------------------------------------------


def test_looks_like_quic_initial() -> None:
    assert looks_like_quic_initial(RFC9001_A2_PROTECTED)
    assert looks_like_quic_initial(RFC9369_A2_PROTECTED)
    assert looks_like_quic_initial(protect_initial(RFC_PAYLOAD, version=DRAFT_29))
    v1_handshake = bytes([0xE0]) + RFC9001_A2_PROTECTED[1:]
    v2_retry_bits = bytes([0xC0]) + RFC9369_A2_PROTECTED[1:]  # type 00 is Retry in v2
    no_fixed_bit = bytes([0x80]) + RFC9001_A2_PROTECTED[1:]
    short_header = b"\x40" + bytes(40)
    dns = bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")
    unknown_version = RFC9001_A2_PROTECTED[:1] + b"\x0a\x0a\x0a\x0a" + RFC9001_A2_PROTECTED[5:]
    long_dcid = RFC9001_A2_PROTECTED[:5] + b"\x15" + RFC9001_A2_PROTECTED[6:]
    for payload in (
        v1_handshake,
        v2_retry_bits,
        no_fixed_bit,
        short_header,
        dns,
        unknown_version,
        long_dcid,
        b"",
        b"\xc0",
    ):
        assert not looks_like_quic_initial(payload)


def test_non_quic_is_rejected_without_state() -> None:
    tracker = QuicInitialTracker()
    assert tracker.feed(b"\x00" * 100, FLOW, 0.0) == []
    assert tracker.feed(b"GET / HTTP/1.1\r\n", FLOW, 0.0) == []
    assert len(tracker) == 0 and not tracker.errors


# ---------------------------------------------------------------------------------------------------------------
# Reassembly and connection handling
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2, DRAFT_29])
def test_client_hello_over_three_datagrams_out_of_order_with_gap(version: int) -> None:
    ch = make_client_hello("split.example", pad=3000)
    a, b, c = ch[:1100], ch[1100:2200], ch[2200:]
    server_dcid = bytes.fromhex("c0ffee0011223344")
    p0 = protect_initial(crypto_frame(2200, c) + bytes(50), version=version, pn=0)
    p1 = protect_initial(crypto_frame(0, a), version=version, pn=1)
    # the gap is filled by a packet addressed to the server-chosen DCID, protected with the original DCID's keys
    p2 = protect_initial(crypto_frame(1100, b), dcid=server_dcid, key_dcid=RFC_DCID, version=version, pn=2)
    tracker = QuicInitialTracker()
    assert tracker.feed(p0, FLOW, 0.0) == []
    assert tracker.feed(p1, FLOW, 0.1) == []
    assert tracker.feed(p2, FLOW, 0.2) == [ch]
    assert tracker.packets_decrypted == 3
    if parse_client_hello is not None:
        assert sni_of(ch) == "split.example"


def test_several_crypto_frames_in_one_packet_out_of_order_with_other_frames() -> None:
    ch = make_client_hello("frames.example", pad=200)
    ack = b"\x02" + varint(5) + varint(10) + varint(1) + varint(2) + varint(0) + varint(1)
    ack_ecn = b"\x03" + varint(5) + varint(0) + varint(0) + varint(0) + varint(1) + varint(2) + varint(3)
    payload = (
        b"\x01"  # PING
        + ack
        + crypto_frame(150, ch[150:])
        + bytes(7)  # PADDING in the middle
        + ack_ecn
        + crypto_frame(0, ch[:80])
        + crypto_frame(60, ch[60:150])  # overlaps the previous frame
        + bytes(300)
    )
    tracker = QuicInitialTracker()
    assert tracker.feed(protect_initial(payload), FLOW, 0.0) == [ch]
    assert not tracker.errors


def test_coalesced_initial_with_zero_rtt_and_trailing_padding() -> None:
    ch = make_client_hello("coalesced.example")
    initial = protect_initial(crypto_frame(0, ch), pn=0, pn_len=1)
    zero_rtt = (
        bytes([0xD1]) + (1).to_bytes(4, "big") + b"\x08" + RFC_DCID + b"\x00" + varint(40, 2) + bytes(40)
    )
    datagram = initial + zero_rtt + bytes(200)
    tracker = QuicInitialTracker()
    assert tracker.feed(datagram, FLOW, 0.0) == [ch]


def test_two_initials_coalesced_in_one_datagram() -> None:
    ch = make_client_hello("two.example", pad=500)
    first = protect_initial(crypto_frame(0, ch[:300]), pn=0)
    second = protect_initial(crypto_frame(300, ch[300:]), pn=1)
    assert QuicInitialTracker().feed(first + second, FLOW, 0.0) == [ch]


def test_retry_rekeys_from_new_dcid_and_does_not_duplicate_the_hello() -> None:
    ch = make_client_hello("retry.example", pad=1500)
    retry_dcid = bytes(range(20))
    tracker = QuicInitialTracker()
    # attempt 1: only the first half makes it before the server answers with a Retry
    assert tracker.feed(protect_initial(crypto_frame(0, ch[:900]), pn=0), FLOW, 0.0) == []
    # attempt 2: new DCID (keys from it), token from the Retry, CRYPTO stream starts again at 0
    p1 = protect_initial(crypto_frame(0, ch[:900]), dcid=retry_dcid, token=b"tok" * 10, pn=1)
    p2 = protect_initial(crypto_frame(900, ch[900:]), dcid=retry_dcid, token=b"tok" * 10, pn=2)
    assert tracker.feed(p1, FLOW, 1.0) == []
    assert tracker.feed(p2, FLOW, 1.1) == [ch]

    # a complete hello before the Retry and the same one resent after it: reported once
    tracker = QuicInitialTracker()
    assert tracker.feed(protect_initial(crypto_frame(0, ch), pn=0), FLOW, 0.0) == [ch]
    again = protect_initial(crypto_frame(0, ch), dcid=retry_dcid, token=b"t", pn=1)
    assert tracker.feed(again, FLOW, 1.0) == []
    assert tracker.packets_decrypted == 2


def test_second_client_hello_after_hello_retry_request() -> None:
    ch1 = make_client_hello("hrr.example")
    ch2 = make_client_hello("hrr.example", pad=64)
    server_dcid = b"\x55" * 8
    tracker = QuicInitialTracker()
    assert tracker.feed(protect_initial(crypto_frame(0, ch1), pn=0), FLOW, 0.0) == [ch1]
    ack_only = protect_initial(b"\x02\x00\x00\x00\x00", dcid=server_dcid, key_dcid=RFC_DCID, pn=1)
    assert tracker.feed(ack_only, FLOW, 0.1) == []
    off = len(ch1)
    part1 = protect_initial(crypto_frame(off, ch2[:50]), dcid=server_dcid, key_dcid=RFC_DCID, pn=2)
    part2 = protect_initial(crypto_frame(off + 50, ch2[50:]), dcid=server_dcid, key_dcid=RFC_DCID, pn=3)
    assert tracker.feed(part2, FLOW, 0.2) == []
    assert tracker.feed(part1, FLOW, 0.3) == [ch2]
    # done: later Initials are not even decrypted
    before = tracker.packets_decrypted
    assert tracker.feed(protect_initial(crypto_frame(0, ch1), pn=4), FLOW, 0.4) == []
    assert tracker.packets_decrypted == before


def test_compatible_version_negotiation_keeps_original_dcid() -> None:
    """RFC 9368: a v1 first flight answered in v2; the client's later v2 Initials use v2 keys of the original DCID."""
    ch = make_client_hello("cvn.example", pad=400)
    tracker = QuicInitialTracker()
    assert tracker.feed(protect_initial(crypto_frame(0, ch[:200]), version=QUIC_V1, pn=0), FLOW, 0.0) == []
    later = protect_initial(
        crypto_frame(200, ch[200:]), dcid=b"\x01" * 8, key_dcid=RFC_DCID, version=QUIC_V2, pn=1
    )
    assert tracker.feed(later, FLOW, 0.1) == [ch]


def test_flows_are_independent() -> None:
    ch_a = make_client_hello("a.example", pad=300)
    ch_b = make_client_hello("b.example", pad=300)
    dcid_b = b"\xbb" * 8
    other = ("10.0.0.3", 50001, "10.0.0.2", 443)
    tracker = QuicInitialTracker()
    assert tracker.feed(protect_initial(crypto_frame(0, ch_a[:100]), pn=0), FLOW, 0.0) == []
    assert tracker.feed(protect_initial(crypto_frame(0, ch_b[:100]), dcid=dcid_b, pn=0), other, 0.0) == []
    assert tracker.feed(protect_initial(crypto_frame(100, ch_b[100:]), dcid=dcid_b, pn=1), other, 0.1) == [
        ch_b
    ]
    assert tracker.feed(protect_initial(crypto_frame(100, ch_a[100:]), pn=1), FLOW, 0.1) == [ch_a]


def test_lru_bound_and_forget() -> None:
    tracker = QuicInitialTracker(max_connections=2)
    for i in range(5):
        flow = ("10.0.0.9", 40000 + i, "10.0.0.2", 443)
        tracker.feed(
            protect_initial(crypto_frame(0, b"\x01\x00\x01\x00"), dcid=bytes([i]) * 8), flow, float(i)
        )
        assert len(tracker) <= 2
    tracker.forget(("10.0.0.9", 40004, "10.0.0.2", 443))
    assert len(tracker) == 1
    tracker.forget(("never", "seen"))  # no error


def test_idle_timeout_drops_partial_state() -> None:
    ch = make_client_hello("idle.example", pad=400)
    tracker = QuicInitialTracker(idle_timeout=120.0)
    assert tracker.feed(protect_initial(crypto_frame(0, ch[:200]), pn=0), FLOW, 0.0) == []
    # the rest arrives (addressed to the server-chosen DCID) long after the connection was forgotten
    late = protect_initial(crypto_frame(200, ch[200:]), dcid=b"\x42" * 8, key_dcid=RFC_DCID, pn=1)
    assert tracker.feed(late, FLOW, 500.0) == []
    assert tracker.errors["decrypt_failed"] == 1
    # within the timeout it would have completed
    tracker = QuicInitialTracker(idle_timeout=120.0)
    tracker.feed(protect_initial(crypto_frame(0, ch[:200]), pn=0), FLOW, 0.0)
    assert tracker.feed(late, FLOW, 100.0) == [ch]


def test_memory_budget_evicts_other_connections() -> None:
    tracker = QuicInitialTracker(max_buffer_bytes=64 * 1024)
    big = make_client_hello("big.example", pad=60_000)
    for i in range(3):
        flow = ("10.0.0.8", 30000 + i, "10.0.0.2", 443)
        for k, off in enumerate(range(0, 40_000, 1000)):
            tracker.feed(
                protect_initial(crypto_frame(off, big[off : off + 1000]), dcid=bytes([i]) * 8, pn=k),
                flow,
                0.0,
            )
    assert tracker._buffered <= 64 * 1024
    assert tracker.errors["evicted_for_memory"] >= 1


def test_non_client_hello_first_message_marks_connection_done() -> None:
    server_hello_like = b"\x02\x00\x00\x04abcd"
    tracker = QuicInitialTracker()
    assert tracker.feed(protect_initial(crypto_frame(0, server_hello_like)), FLOW, 0.0) == []
    assert tracker.errors["not_client_hello"] == 1


def test_malformed_packets_count_a_reason() -> None:
    tracker = QuicInitialTracker()
    good = protect_initial(crypto_frame(0, make_client_hello("x.example")))
    assert tracker.feed(good[:60], FLOW, 0.0) == []
    assert tracker.last_error == "truncated_packet"
    assert tracker.feed(good[:6] + b"\xff", FLOW, 0.0) == []
    assert tracker.feed(good[:19], FLOW, 0.0) == []
    assert sum(tracker.errors.values()) == 3


# ---------------------------------------------------------------------------------------------------------------
# Fuzz: nothing raises
# ---------------------------------------------------------------------------------------------------------------

_FUZZ_BASE = [
    RFC9001_A2_PROTECTED,
    RFC9369_A2_PROTECTED,
    protect_initial(
        crypto_frame(0, make_client_hello("fuzz.example")) + b"\x02\x00\x00\x00\x00", pn=7, pn_len=1
    ),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1500))
def test_fuzz_random_datagrams_never_raise(data: bytes) -> None:
    tracker = QuicInitialTracker()
    assert tracker.feed(data, FLOW, 0.0) == []
    assert tracker.feed(b"\xc0\x00\x00\x00\x01" + data, FLOW, 0.0) == []
    assert tracker.feed(b"\xd0\x6b\x33\x43\xcf" + data, FLOW, 0.0) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_FUZZ_BASE),
    st.lists(st.tuples(st.integers(0, 1499), st.integers(0, 7)), max_size=6),
    st.integers(0, 1500),
)
def test_fuzz_bit_flipped_and_truncated_datagrams_never_raise(
    base: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(base)
    for pos, bit in flips:
        if pos < len(data):
            data[pos] ^= 1 << bit
    tracker = QuicInitialTracker()
    out = tracker.feed(bytes(data[:cut]), FLOW, 0.0)
    assert isinstance(out, list)
    assert all(isinstance(m, bytes) and m[:1] == b"\x01" for m in out)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_fuzz_decrypted_garbage_frames_never_raise(frames: bytes) -> None:
    """Authentic packets whose plaintext is junk: exercises the frame parser and reassembly behind the AEAD."""
    tracker = QuicInitialTracker()
    out = tracker.feed(protect_initial(frames), FLOW, 0.0)
    assert isinstance(out, list)


# ---------------------------------------------------------------------------------------------------------------
# Real captures
# ---------------------------------------------------------------------------------------------------------------


def _udp_datagrams(path: Path):
    """(frame number, ts, src, sport, dst, dport, payload) for every UDP datagram of a pcap/pcapng (test-only)."""
    import dpkt

    def ip_of(linktype: int, buf: bytes):
        if linktype == 1:  # Ethernet (dpkt handles VLAN tags)
            return dpkt.ethernet.Ethernet(buf).data
        if linktype in (0, 108):  # BSD null / loopback: 4-byte address family
            buf = buf[4:]
        elif linktype == 113:  # Linux cooked
            return dpkt.sll.SLL(buf).data
        elif linktype == 276:  # Linux cooked v2
            buf = buf[20:]
        elif linktype not in (12, 14, 101, 228, 229):
            return None
        if not buf:
            return None
        return dpkt.ip.IP(buf) if buf[0] >> 4 == 4 else dpkt.ip6.IP6(buf)

    with open(path, "rb") as fh:
        magic = fh.read(4)
        fh.seek(0)
        reader = dpkt.pcapng.Reader(fh) if magic == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(fh)
        linktype = reader.datalink()
        for frame, (ts, buf) in enumerate(reader, 1):
            try:
                ip = ip_of(linktype, buf)
            except (dpkt.UnpackError, IndexError, ValueError):
                continue
            udp = getattr(ip, "data", None)
            if isinstance(udp, dpkt.udp.UDP):
                yield frame, float(ts), bytes(ip.src), udp.sport, bytes(ip.dst), udp.dport, bytes(udp.data)


def _quic_expectations() -> list[tuple[str, str]]:
    try:
        root = corpus_root()
    except RuntimeError:
        root = None
    if root is None:
        return []
    found = []
    for csv_path in sorted((root / "expected" / "tshark").glob("*/*.csv")):
        with open(csv_path, newline="") as fh:
            if any(row["proto"] == "quic" for row in csv.DictReader(fh)):
                found.append((csv_path.parent.name, csv_path.name[: -len(".csv")]))
    return found


_QUIC_CAPTURES = _quic_expectations()


@pytest.mark.corpus
@pytest.mark.parametrize(
    ("folder", "capture"),
    _QUIC_CAPTURES or [pytest.param("-", "-", id="no-corpus")],
    ids=[f"{f}/{c}" for f, c in _QUIC_CAPTURES] or None,
)
def test_corpus_quic_client_hellos(corpus: Path, folder: str, capture: str) -> None:
    """Every QUIC ClientHello tshark found is recovered, in the same frame, with the same SNI; nothing extra.

    All UDP datagrams are fed in both directions (flow key = directed 4-tuple), as a capture reader that does
    not know which side is the client would: server Initials must simply fail to decrypt.
    """
    if folder == "-":
        pytest.skip("no QUIC expectations in the corpus")
    with open(corpus / "expected" / "tshark" / folder / f"{capture}.csv", newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row["proto"] == "quic"]
    tracker = QuicInitialTracker()
    got: list[tuple[int, bytes]] = []
    for frame, ts, src, sport, dst, dport, payload in _udp_datagrams(corpus / "pcap" / folder / capture):
        for msg in tracker.feed(payload, (src, sport, dst, dport), ts):
            got.append((frame, msg))
    by_frame: dict[int, list[bytes]] = {}
    for frame, msg in got:
        by_frame.setdefault(frame, []).append(msg)
    for row in rows:
        msgs = by_frame.get(int(row["frame"]), [])
        assert msgs, f"{capture}: no ClientHello recovered in frame {row['frame']} (SNI {row['sni']!r})"
        expected_sni = row["sni"] or None
        if parse_client_hello is not None:
            assert expected_sni in [sni_of(m) for m in msgs], f"{capture} frame {row['frame']}"
        elif expected_sni:
            assert any(expected_sni.encode() in m for m in msgs)
    assert len(got) == len(rows), f"{capture}: {len(got)} ClientHellos recovered, tshark lists {len(rows)}"
