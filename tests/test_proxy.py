"""``stormguard proxy``: every layer in front of real upstream processes (a uvicorn app with an SSE route, and
``python -m http.server``), over sockets from loopback addresses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
from mounted_apps import running_process
from server_harness import PROJECT_ROOT, SSEClient, free_port

SETTINGS = json.dumps({"ip_rate": 0.001, "ip_burst": 2.0})


def _proxy(upstream: str, *extra: str) -> tuple[list[str], str, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "stormguard", "proxy", "--upstream", upstream, "--port", str(port),
           "--log-level", "warning", *extra]
    return cmd, f"http://127.0.0.1:{port}/_stormguard/healthz", port


def test_proxy_in_front_of_a_uvicorn_app_with_sse(tmp_path: Path) -> None:
    config = tmp_path / "sg.toml"          # --config reaches the proxy's app: its [reputation] here
    config.write_text("[reputation]\ninitial_score = 70\n")
    up = free_port()
    upstream = [sys.executable, "-m", "uvicorn", "--factory", "mounted_apps:plain_upstream", "--app-dir",
                str(PROJECT_ROOT / "tests"), "--host", "127.0.0.1", "--port", str(up), "--log-level", "warning"]
    cmd, health, port = _proxy(f"http://127.0.0.1:{up}", "--sse-path", "/stream", "--config", str(config))
    with running_process(upstream, f"http://127.0.0.1:{up}/healthz"), \
            running_process(cmd, health, {"STORMGUARD_SERVER_SETTINGS": SETTINGS}):
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.81"), timeout=10) as c:
            seen = c.post(f"http://127.0.0.1:{port}/echo?x=1", content=b"hello",
                          headers={"Forwarded": "for=6.6.6.6", "X-Forwarded-For": "6.6.6.6"}).json()
            headers = dict(seen["headers"])
            assert seen["path"] == "/echo" and seen["query"] == "x=1" and seen["body"] == "hello"
            assert headers["x-forwarded-for"] == "127.0.0.81"                 # the client's own copy dropped
            assert headers["forwarded"].startswith("for=127.0.0.81;proto=http")
            assert c.get(f"http://127.0.0.1:{port}/echo").status_code == 200
            third = c.get(f"http://127.0.0.1:{port}/echo")
            assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1   # stormguard's limiter
        stream = SSEClient(port, "/stream", source="127.0.0.82")
        msgs = stream.messages(3)                         # events arrive one by one, 0.2 s apart: not buffered
        assert stream.status == 200 and [m.id for m in msgs[:3]] == ["0", "1", "2"]
        assert stream.headers.get("x-ip-rating") == "trusted"          # initial_score 70 from --config
        stream.close()
        metrics = httpx.get(f"http://127.0.0.1:{port}/_stormguard/metrics", timeout=10).text
        assert 'rate_limit_rejected_total{layer="limiter",reason="rate"} 1.0' in metrics


def test_proxy_in_front_of_python_http_server(tmp_path: Path) -> None:
    (tmp_path / "page.txt").write_text("static content\n")
    up = free_port()
    upstream = [sys.executable, "-m", "http.server", str(up), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    cmd, health, port = _proxy(f"http://127.0.0.1:{up}")
    with running_process(upstream, f"http://127.0.0.1:{up}/page.txt"), running_process(cmd, health):
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.83"), timeout=10) as c:
            r = c.get(f"http://127.0.0.1:{port}/page.txt")
            assert r.status_code == 200 and r.text == "static content\n"
            assert c.get(f"http://127.0.0.1:{port}/missing").status_code == 404   # upstream errors pass through


def test_unreachable_upstream_is_a_clear_502() -> None:
    dead = free_port()                                    # nothing listens there
    cmd, health, port = _proxy(f"http://127.0.0.1:{dead}")
    with running_process(cmd, health):
        r = httpx.get(f"http://127.0.0.1:{port}/anything", timeout=30)
        assert r.status_code == 502 and "unreachable" in r.text and str(dead) in r.text
