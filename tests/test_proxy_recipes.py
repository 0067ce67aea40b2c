"""The README's proxy recipes against a spoofing client (issue 17: identity spoofing behind a trusted proxy).

Each recipe block of the README (```nginx, ```haproxy, ```yaml for Envoy) is read and applied, directive by
directive, to the headers a spoofing client sends; the resulting header set is sent from the trusted proxy's
address to the real server, which must believe the proxy's values (or nothing), never the client's. A recipe that
leaves any header stormguard trusts to pass through unchanged fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import pytest
from server_harness import PROJECT_ROOT, running_server

REAL_IP = "203.0.113.7"
REAL_SNI = "stream.example.com"
REAL_JA3 = "0123456789abcdef0123456789abcdef"
TRUSTED_BY_STORMGUARD = ("forwarded", "x-forwarded-for", "x-ja3", "x-ja4", "x-tls-sni")
SPOOF = {   # what an attacker sends to the proxy: every header stormguard could believe
    "forwarded": "for=6.6.6.6",
    "x-forwarded-for": "6.6.6.6",
    "x-ja3": "ffffffffffffffffffffffffffffffff",
    "x-ja4": "t13d1516h2_8daaf6152771_e5627efa2ab1",
    "x-tls-sni": "evil.example.com",
}
# the proxy's own values, by the variable each proxy uses for them
PROXY_VARS = {"$remote_addr": REAL_IP, "%[src]": REAL_IP, "$ssl_server_name": REAL_SNI, "%[ssl_fc_sni]": REAL_SNI,
              "%REQUESTED_SERVER_NAME%": REAL_SNI, "$http_ssl_ja3_hash": REAL_JA3, "%TLS_JA3_FINGERPRINT%": REAL_JA3}


def readme_block(info: str) -> str:
    text = (PROJECT_ROOT / "README.md").read_text()
    blocks = re.findall(rf"```{info}\n(.*?)```", text, re.S)
    assert len(blocks) == 1, f"README should hold exactly one ```{info} recipe"
    return blocks[0]


def value_of(expr: str) -> str:
    expr = expr.strip().strip('"')
    if expr == "$proxy_add_x_forwarded_for":
        return f"{SPOOF['x-forwarded-for']}, {REAL_IP}"
    assert expr == "" or expr in PROXY_VARS, f"recipe uses {expr!r}: teach this test what the proxy puts there"
    return PROXY_VARS.get(expr, "")


def apply_nginx(headers: dict[str, str]) -> dict[str, str]:
    out = dict(headers)
    for line in readme_block("nginx").splitlines():
        m = re.match(r"\s*proxy_set_header\s+(\S+)\s+(\"\"|\S+);", line)
        if m:
            name, value = m.group(1).lower(), value_of(m.group(2))
            out.pop(name, None)
            if value:          # nginx: an empty value means the header is not passed at all
                out[name] = value
    return out


def apply_haproxy(headers: dict[str, str]) -> dict[str, str]:
    out = dict(headers)
    for line in readme_block("haproxy").splitlines():
        m = re.match(r"\s*http-request\s+(set|del)-header\s+(\S+)(?:\s+(\S+))?", line)
        if m:
            out.pop(m.group(2).lower(), None)
            if m.group(1) == "set":
                out[m.group(2).lower()] = value_of(m.group(3))
    return out


def apply_envoy(headers: dict[str, str]) -> dict[str, str]:
    out = dict(headers)
    block = readme_block("yaml")
    if re.search(r"^use_remote_address:\s*true", block, re.M):      # Envoy appends the peer address
        out["x-forwarded-for"] = f"{out['x-forwarded-for']}, {REAL_IP}" if "x-forwarded-for" in out else REAL_IP
    m = re.search(r"request_headers_to_remove:\s*\[(.*?)\]", block)
    for name in (m.group(1).split(",") if m else []):
        out.pop(name.strip().lower(), None)
    for key, value in re.findall(r"header:\s*\{key:\s*([\w-]+),\s*value:\s*\"([^\"]*)\"\}", block):
        out[key.lower()] = value_of(value)           # append_action OVERWRITE_IF_EXISTS_OR_ADD
    return out


RECIPES = {"nginx": apply_nginx, "haproxy": apply_haproxy, "envoy": apply_envoy}


@pytest.fixture(scope="module")
def server():
    with running_server({"trusted_proxies": ["127.0.0.2/32"], "enable_test_routes": True, "reputation": False},
                        args=("--no-model",)) as srv:
        yield srv


def whoami(server, headers: dict[str, str]) -> dict:
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport, timeout=10.0) as client:
        return client.get(server.url + "/_test/whoami", headers=headers).json()


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_overwrites_or_strips_every_trusted_header(server, recipe):
    forwarded = RECIPES[recipe](SPOOF)
    for name in TRUSTED_BY_STORMGUARD:      # nothing the client sent survives unchanged
        assert forwarded.get(name) != SPOOF[name], f"{recipe} passes the client's {name} through"
    seen = whoami(server, forwarded)
    assert seen["via_proxy"] and seen["ip"] == REAL_IP, (recipe, forwarded, seen)
    assert seen["sni"] == REAL_SNI
    assert seen["ja3"] in (REAL_JA3, None) and seen["ja4"] is None


def test_default_believes_only_x_forwarded_for(server):
    """A proxy that sets X-Forwarded-For and passes the client's Forwarded through: the client does not choose."""
    seen = whoami(server, {"forwarded": "for=6.6.6.6", "x-forwarded-for": REAL_IP})
    assert seen["ip"] == REAL_IP
    seen = whoami(server, {"forwarded": "for=6.6.6.6"})
    assert seen["ip"] == "127.0.0.2" and not seen["via_proxy"]


def test_two_forwarding_headers_are_refused_at_start():
    env_settings = '{"proxy_headers": ["forwarded", "x-forwarded-for"]}'
    proc = subprocess.run([sys.executable, "-m", "stormguard.server.cli", "serve", "--port", "0", "--no-model"],
                          cwd=PROJECT_ROOT, env={**os.environ, "STORMGUARD_SERVER_SETTINGS": env_settings},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "name only the one forwarding header" in proc.stderr
