"""Tenants over sockets: JWT (HS256/RS256, audience, issuer) verified on /events, refusals with a clear audit
reason and never a 500, per-tenant stream pools, per-token soft (warn, longer retry:) and hard (refuse) limits."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from server_harness import ServerProcess, SSEClient, running_server
from stormguard.server.layers.tenants import JwtVerifier

SECRET = "s3cret-for-tests-only-0123456789abcdef"
AUD, ISS = "stormguard-test", "https://issuer.test"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def token(tenant: str = "acme", *, key: object = SECRET, alg: str = "HS256", sub: str = "user-1",
          exp: float | None = None, **claims: object) -> str:
    payload = {"tenant": tenant, "sub": sub, "aud": AUD, "iss": ISS,
               "exp": int(exp if exp is not None else time.time() + 600), **claims}
    return jwt.encode(payload, key, algorithm=alg)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(rsa_key: rsa.RSAPrivateKey, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    tmp = tmp_path_factory.mktemp("tenants")
    pem = tmp / "jwt.pub"
    pem.write_text(public_pem(rsa_key))
    audit = tmp / "audit.jsonl"
    settings = {"jwt_secret": SECRET, "jwt_public_key": str(pem), "jwt_audience": AUD, "jwt_issuer": ISS,
                "tenant_pools": {"small": 2}, "live_rules": False, "audit_path": str(audit),
                "token_rate": 0.001, "token_burst": 4.0, "token_soft_remaining": 2.0}
    with running_server(settings) as srv:
        yield srv, audit


def sse(srv: ServerProcess, tok: str | None, source: str, *, query: bool = False) -> SSEClient:
    path = "/events?topic=t"
    headers = {}
    if tok is not None:
        if query:
            path += f"&access_token={tok}"
        else:
            headers["Authorization"] = f"Bearer {tok}"
    return SSEClient(srv.port, path, source=source, headers=headers)


def audit_reasons(audit: Path, want: str, attempts: int = 100) -> set[str]:
    """The audit log's reasons, polled (bounded) until ``want`` is among them: the log is written off the hot path."""
    reasons: set[str] = set()
    for _ in range(attempts):
        if audit.exists():
            reasons = {json.loads(line)["reason"] for line in audit.read_text().splitlines()}
            if want in reasons:
                break
        time.sleep(0.05)
    return reasons


def test_valid_tokens_are_admitted_by_header_and_query(server, rsa_key) -> None:
    srv, _ = server
    for i, (tok, query) in enumerate([(token("acme"), False), (token("acme", sub="u2"), True),
                                      (token("acme", key=rsa_key, alg="RS256", sub="u3"), False)]):
        c = sse(srv, tok, f"127.0.1.{i + 1}", query=query)
        assert c.status == 200 and c.messages(1) and not c.eof
        c.close()


@pytest.mark.parametrize("make, reason", [
    (lambda k: token(key="forged-secret-forged-secret-forged-0000"), "jwt_signature"),
    (lambda k: token(exp=time.time() - 3600), "jwt_expired"),
    (lambda k: "not.a.jwt", "jwt_malformed"),
    (lambda k: "%%%garbage", "jwt_malformed"),
    (lambda k: token(aud="someone-else"), "jwt_audience"),
    (lambda k: token(iss="https://evil.test"), "jwt_issuer"),
    (lambda k: jwt.encode({"tenant": "acme", "exp": int(time.time()) + 60, "aud": AUD, "iss": ISS}, None,
                          algorithm="none"), "jwt_algorithm"),
    (lambda k: token(nbf=int(time.time()) + 3600), "jwt_not_yet_valid"),
    (lambda k: jwt.encode({"sub": "x", "exp": int(time.time()) + 60, "aud": AUD, "iss": ISS}, SECRET,
                          algorithm="HS256"), "jwt_claim"),
    (lambda k: None, "jwt_missing"),
])
def test_bad_tokens_are_refused_with_their_reason(server, rsa_key, make, reason) -> None:
    srv, audit = server
    before = srv.metric(f'rate_limit_rejected_total{{layer="tenant",reason="{reason}"}}')
    c = sse(srv, make(rsa_key), "127.0.2.1")
    assert c.status == 204                                # EventSource: stop, do not come back with that token
    c.close()
    assert srv.metric(f'rate_limit_rejected_total{{layer="tenant",reason="{reason}"}}') == before + 1
    assert reason in audit_reasons(audit, reason)


def test_algorithm_confusion_is_refused(server, rsa_key) -> None:
    """An HS256 token whose 'secret' is the server's RSA public key must not verify."""
    srv, _ = server
    import base64
    import hashlib
    import hmac

    def b64(b: bytes) -> bytes:
        return base64.urlsafe_b64encode(b).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"tenant": "acme", "exp": int(time.time()) + 60, "aud": AUD, "iss": ISS}).encode())
    sig = b64(hmac.new(public_pem(rsa_key).encode(), header + b"." + payload, hashlib.sha256).digest())
    forged = (header + b"." + payload + b"." + sig).decode()
    c = sse(srv, forged, "127.0.2.2")
    assert c.status == 204
    c.close()


def test_tenant_pool_caps_concurrent_streams(server) -> None:
    srv, audit = server
    held = [sse(srv, token("small", sub=f"p{i}"), f"127.0.3.{i + 1}") for i in range(2)]
    assert all(c.status == 200 and c.messages(1) for c in held)
    third = sse(srv, token("small", sub="p3"), "127.0.3.3").read_all()
    assert third and "tenant_quota" in third[0].comments and third[0].retry        # paced, not stopped
    other = sse(srv, token("big", sub="p4"), "127.0.3.4")
    assert other.status == 200 and other.messages(1) and not other.eof            # another tenant's pool
    assert srv.metric('rate_limit_rejected_total{layer="quota",reason="tenant_quota"}') == 1
    for c in [*held, other]:
        c.close()
    again = sse(srv, token("small", sub="p5"), "127.0.3.5")                       # slots come back on close
    for _ in range(100):
        if again.status == 200 and not again.eof:
            break
        again.close()
        time.sleep(0.05)
        again = sse(srv, token("small", sub="p5"), "127.0.3.5")
    assert again.status == 200 and again.messages(1) and not again.eof
    again.close()


def test_per_token_soft_warns_and_hard_refuses(server) -> None:
    srv, audit = server
    tok = token("acme", sub="heavy-user")
    streams = [sse(srv, tok, f"127.0.4.{i + 1}") for i in range(4)]    # burst 4, soft below 2 tokens left
    heads = [c.messages(1)[0] for c in streams]
    assert "x-stormguard-warning" not in streams[0].headers
    assert [c.headers.get("x-stormguard-warning") for c in streams[2:]] == ["token_rate", "token_rate"]
    assert all(h.retry and heads[0].retry and h.retry > heads[0].retry for h in heads[2:])   # longer retry:
    refused = sse(srv, tok, "127.0.4.9").read_all()
    assert "token_rate" in refused[0].comments                           # hard: refused (paced)
    for c in streams:
        c.close()
    assert "token_rate" in audit_reasons(audit, "token_rate")
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert any(r["action"] == "warn" and r["reason"] == "token_rate" and r["tenant"] == "acme" for r in records)


def test_verifier_never_raises_on_junk() -> None:
    v = JwtVerifier(secret=SECRET, audience=AUD, issuer=ISS)
    for junk in ["", ".", "..", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.", "\x00\xff", "x" * 10000]:
        claims, reason = v.verify(junk)
        assert claims is None and reason and reason.startswith("jwt_")
    with pytest.raises(ValueError, match="jwt_secret"):
        JwtVerifier()
