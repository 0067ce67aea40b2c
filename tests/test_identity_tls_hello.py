"""The identity layer takes the ClientHello fingerprint from the connection's ASGI state (``serve --tls-cert``);
from a trusted proxy only its fingerprint headers count (the hello this server saw is then the proxy's own)."""

from __future__ import annotations

from stormguard.server.context import TLS_STATE_KEY
from stormguard.server.layers.identity import IdentityMiddleware

HELLO = {"ja3": "0149f47eabf9a20d0893e2a44e5a6323", "ja4": "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6",
         "sni": "stormguard.test", "alpn": "h2,http/1.1"}
PROXY_JA3 = "14eff09463c9d6dc6e14e954eba239c2"


def _scope(peer: str, headers: list[tuple[bytes, bytes]] = (), hello: dict | None = HELLO) -> dict:
    return {"type": "http", "client": (peer, 5555), "headers": list(headers),
            "state": {TLS_STATE_KEY: hello} if hello is not None else {}}


def test_direct_client_gets_the_hello_this_server_read() -> None:
    mw = IdentityMiddleware(None, trusted_proxies=["127.0.0.2/32"])
    ident = mw.identify(_scope("127.0.0.9", [(b"x-ja3", PROXY_JA3.encode())]))  # untrusted: header ignored
    assert (ident.ja3, ident.ja4, ident.sni, ident.alpn) == (HELLO["ja3"], HELLO["ja4"], HELLO["sni"],
                                                             HELLO["alpn"])


def test_from_a_trusted_proxy_only_its_headers_count() -> None:
    mw = IdentityMiddleware(None, trusted_proxies=["127.0.0.2/32"])
    ident = mw.identify(_scope("127.0.0.2", [(b"x-ja3", PROXY_JA3.encode()), (b"x-forwarded-for", b"10.1.2.3")]))
    assert ident.ip == "10.1.2.3" and ident.ja3 == PROXY_JA3
    assert (ident.ja4, ident.sni, ident.alpn) == (None, None, None)  # the proxy's own hello is not the client's


def test_without_tls_in_process_nothing_changes() -> None:
    mw = IdentityMiddleware(None, trusted_proxies=["127.0.0.2/32"])
    ident = mw.identify(_scope("127.0.0.9", hello=None))
    assert (ident.ja3, ident.ja4, ident.sni, ident.alpn) == (None, None, None, None)
    ident = mw.identify(_scope("127.0.0.2", [(b"x-ja3", b"not-a-hash")], hello=None))
    assert ident.ja3 is None
