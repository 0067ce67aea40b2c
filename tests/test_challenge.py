"""The proof-of-work challenge tier: a low-tier browser solves it and is lifted one tier; an EventSource never gets
a challenge body; forged, expired and borrowed passes do not lift. Real server under uvicorn, real Chromium."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from server_harness import SSEClient, running_server
from stormguard.server.layers.challenge import COOKIE, Challenger, leading_zero_bits, solve
from test_server_browser import browser, wait_for  # noqa: F401 - fixture

SECRET = "test-challenge-secret"
SETTINGS: dict[str, Any] = {"challenge": True, "challenge_secret": SECRET, "challenge_difficulty": 10,
                            "enable_test_routes": True,
                            "live_rules": False,   # the checks reconnect quickly from one address on purpose
                            "exempt_paths": ["/healthz", "/metrics", "/_test/reputation"]}


def _low(srv: Any, ip: str) -> None:
    r = httpx.get(f"{srv.url}/_test/reputation", params={"op": "set", "key": ip, "score": "-30"}, timeout=10)
    assert r.json()["score"] == -30


def _client(ip: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=ip), timeout=30, follow_redirects=False)


def _rating(srv: Any, ip: str, cookie: str | None = None) -> str | None:
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else None
    stream = SSEClient(srv.port, "/events?topic=c", source=ip, headers=headers)
    rating = stream.headers.get("x-ip-rating")
    body = stream.messages(1)
    assert stream.status == 200 and "<html" not in "".join(m.text for m in body)   # never a challenge body
    stream.close()
    # the low tier allows one stream: wait (bounded) until the server has released this one, so the next check
    # from the same address is not refused by the quota (a refusal carries no X-IP-Rating)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = httpx.get(f"{srv.url}/metrics", timeout=10).text
        open_streams = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith("stormguard_active_streams{"))
        if open_streams == 0:
            break
        time.sleep(0.05)
    return rating


def test_challenger_unit() -> None:
    now = [1_000_000.0]
    c = Challenger(SECRET, difficulty=8, ttl=60, clock=lambda: now[0])
    ch = c.challenge_for("192.0.2.1")
    n = solve(ch, 8)
    assert c.check_answer("192.0.2.1", ch, str(n))
    assert not c.check_answer("192.0.2.2", ch, str(n))                       # bound to the address
    assert not c.check_answer("192.0.2.1", ch, str(n + 1)) or leading_zero_bits(b"\0") >= 8
    cookie = c.cookie_for("192.0.2.1")
    assert c.cookie_valid("192.0.2.1", cookie) and not c.cookie_valid("192.0.2.9", cookie)
    assert not c.cookie_valid("192.0.2.1", cookie[:-1] + ("0" if cookie[-1] != "0" else "1"))
    now[0] += 61
    assert not c.cookie_valid("192.0.2.1", cookie)                          # expired
    now[0] += 400
    assert not c.check_answer("192.0.2.1", ch, str(n))                      # the puzzle itself expired
    assert c.lifted("low") == "neutral" and c.lifted("neutral") == "trusted" and c.lifted("trusted") == "trusted"
    assert leading_zero_bits(bytes([0, 0x0F])) == 12


def test_low_tier_page_gets_challenge_and_the_answer_lifts_one_tier() -> None:
    ip, other = "127.0.0.92", "127.0.0.93"
    with running_server(SETTINGS) as srv:
        _low(srv, ip)
        _low(srv, other)
        assert _rating(srv, ip) == "low"                                    # EventSource: no challenge, low tier
        with _client(ip) as c:
            page = c.get(srv.url + "/demo", headers={"Accept": "text/html"})
            assert page.status_code == 200 and "proof of work" in page.text and "crypto.subtle" in page.text
            challenge = re.search(r'name="challenge" value="([^"]+)"', page.text).group(1)
            wrong = c.post(srv.url + "/_stormguard/challenge", data={"challenge": challenge, "counter": "x"})
            assert wrong.status_code == 403
            answer = c.post(srv.url + "/_stormguard/challenge",
                            data={"challenge": challenge, "counter": str(solve(challenge, 10)), "next": "/demo"})
            assert answer.status_code == 303 and answer.headers["location"] == "/demo"
            cookie = answer.cookies[COOKIE]
            assert "HttpOnly" in answer.headers["set-cookie"]
            page = c.get(srv.url + "/demo", headers={"Accept": "text/html", "Cookie": f"{COOKIE}={cookie}"})
            assert "proof of work" not in page.text and "EventSource" in page.text
        assert _rating(srv, ip, cookie) == "neutral"                        # lifted one tier, streams included
        assert _rating(srv, ip, cookie[:-1] + ("a" if cookie[-1] != "a" else "b")) == "low"    # forged
        expired = Challenger(SECRET, ttl=60, clock=lambda: time.time() - 3600).cookie_for(ip)
        assert _rating(srv, ip, expired) == "low"                           # expired
        assert _rating(srv, other, cookie) == "low"                         # another address's pass
        metrics = httpx.get(srv.url + "/metrics", timeout=10).text
        for outcome, at_least in (("issued", 1), ("passed", 1), ("failed", 1), ("lifted", 2), ("cookie_invalid", 3)):
            value = float(re.search(rf'stormguard_challenges_total{{outcome="{outcome}"}} (\S+)', metrics).group(1))
            assert value >= at_least, (outcome, value)


def test_chromium_solves_the_challenge_and_then_streams(browser: Any) -> None:  # noqa: F811 - fixture
    with running_server(SETTINGS) as srv:
        _low(srv, "127.0.0.1")                                              # the browser's address
        browser.get(srv.url + "/demo")
        wait_for("the demo page after the challenge", lambda: "EventSource demo" in browser.title, 60)
        opened = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const es = new EventSource('/events?topic=c');
            es.onopen = () => { es.close(); done(true); };
            es.onerror = () => { es.close(); done(false); };""")
        assert opened
        metrics = httpx.get(srv.url + "/metrics", timeout=10).text
        assert 'stormguard_challenges_total{outcome="passed"} 1.0' in metrics
        lifted = float(re.search(r'stormguard_challenges_total\{outcome="lifted"\} (\S+)', metrics).group(1))
        assert lifted >= 2                                                  # the page and its EventSource


@pytest.mark.parametrize("difficulty", [8, 12])
def test_solve_matches_difficulty(difficulty: int) -> None:
    import hashlib

    ch = Challenger(SECRET, difficulty=difficulty).challenge_for("198.51.100.1")
    n = solve(ch, difficulty)
    assert leading_zero_bits(hashlib.sha256(f"{ch}:{n}".encode()).digest()) >= difficulty
