"""stormguard and a real CrowdSec Local API, both directions, end to end (issue 15).

The Local API is Debian's ``crowdsec`` started by :mod:`crowdsec_lapi` on a free loopback port with its own
SQLite database; machines, bouncers and decisions are added with the real ``cscli``. The server is the real app
under uvicorn, configured through a ``[crowdsec]`` TOML section; clients are distinct 127.0.0.0/8 addresses.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from crowdsec_lapi import CrowdsecLapi, lapi_fixture
from redis_server import RedisServer, redis_server_fixture  # noqa: F401 - fixture
from server_harness import PROJECT_ROOT, free_port, running_server, stream_rating

FAST = {"enable_test_routes": True, "block_recheck_seconds": 0.2, "live_rules": False}
lapi = pytest.fixture(scope="module", name="lapi")(lapi_fixture)


def wait_for(predicate: Callable[[], Any], seconds: float = 60.0, pause: float = 0.1) -> Any:
    """Poll ``predicate`` until it is truthy or ``seconds`` pass (a deadline on a loaded machine); its last value."""
    deadline = time.monotonic() + seconds
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(pause)
        value = predicate()
    return value


def status_of(port: int, source: str) -> tuple[int, str | None]:
    return stream_rating(port, source, "/events?topic=cs")


def config_file(tmp_path: Path, lapi: CrowdsecLapi, **keys: Any) -> Path:
    body = {"lapi_url": lapi.url, "pull_interval": 0.3, "scan_interval": 0.3, "push_interval": 0.3,
            "max_backoff": 1.0, "timeout": 2.0, "queue_path": str(tmp_path / "queue.sqlite"), **keys}
    lines = ["[crowdsec]"] + [f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else
                              f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in body.items()]
    path = tmp_path / "stormguard.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stormguard", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_decisions_reach_the_gate_and_deleted_ones_are_lifted(lapi: CrowdsecLapi, tmp_path: Path) -> None:
    key = lapi.add_bouncer(f"sg-{uuid.uuid4().hex[:8]}")
    lapi.cscli("decisions", "add", "--ip", "127.0.0.81", "--duration", "1h", "--reason", "test/ssh-bf")
    lapi.cscli("decisions", "add", "--range", "127.0.1.0/24", "--duration", "1h", "--reason", "test/range")
    lapi.cscli("decisions", "add", "--ip", "127.0.0.82", "--duration", "1h", "--type", "captcha")
    cfg = config_file(tmp_path, lapi, bouncer_key=key, export_blocks=False)
    admin = free_port()
    with running_server({**FAST, "admin_token": "adm-token"},
                        args=("--config", str(cfg), "--admin-port", str(admin))) as srv:
        assert wait_for(lambda: status_of(srv.port, "127.0.0.81")[0] == 204)          # ban on an address
        assert status_of(srv.port, "127.0.1.9")[0] == 204                            # ban on a range
        assert status_of(srv.port, "127.0.0.82") == (200, "low")                     # captcha: the low tier
        assert status_of(srv.port, "127.0.0.83") == (200, "neutral")                 # anyone else
        assert srv.metric("stormguard_range_entries") == 2       # the range and the captcha; no per-address keys
        assert srv.metric("stormguard_crowdsec_import_applied") == 3
        state = httpx.get(f"http://127.0.0.1:{admin}/admin/state", headers={"authorization": "Bearer adm-token"},
                          timeout=10).json()
        assert state["ranges"] == 2 and state["crowdsec"]["export"] is None
        assert state["crowdsec"]["import"]["connected"] and state["crowdsec"]["import"]["applied"] == 3

        lapi.cscli("decisions", "delete", "--ip", "127.0.0.81")
        lapi.cscli("decisions", "delete", "--range", "127.0.1.0/24")
        assert wait_for(lambda: status_of(srv.port, "127.0.0.81")[0] == 200)
        assert wait_for(lambda: status_of(srv.port, "127.0.1.9")[0] == 200)

        lapi.stop()                                              # the Local API goes away: keep serving
        assert wait_for(lambda: srv.metric("stormguard_crowdsec_import_errors") >= 1)
        assert srv.metric("stormguard_crowdsec_import_connected") == 0
        assert status_of(srv.port, "127.0.0.84") == (200, "neutral")
        assert status_of(srv.port, "127.0.0.82") == (200, "low")         # what was imported still holds
        lapi.start()                                             # same port, same database
        lapi.cscli("decisions", "add", "--ip", "127.0.0.85", "--duration", "1h", "--reason", "test/after")
        assert wait_for(lambda: status_of(srv.port, "127.0.0.85")[0] == 204)
        assert wait_for(lambda: srv.metric("stormguard_crowdsec_import_connected") == 1)
        assert "crowdsec import" in srv.output() and "retrying" in srv.output()
    lapi.cscli("decisions", "delete", "--all")


def test_blocks_become_crowdsec_decisions_and_an_outage_loses_none(lapi: CrowdsecLapi, tmp_path: Path,
                                                                   redis_server: RedisServer) -> None:
    store = f"{redis_server.url}?prefix=cs{uuid.uuid4().hex[:8]}&timeout=2"
    key = lapi.add_bouncer(f"sg-{uuid.uuid4().hex[:8]}")
    creds = lapi.add_machine(f"sg-{uuid.uuid4().hex[:8]}")
    cfg = config_file(tmp_path, lapi, bouncer_key=key, credentials_file=str(creds))

    def ours() -> dict[str, dict]:
        return {d["value"]: d for d in lapi.decisions() if d.get("origin") == "stormguard"}

    with running_server(FAST, args=("--config", str(cfg), "--store", store)) as srv:
        r = cli("reputation", "block", "127.0.0.91", "--for", "600", "--store", store)
        assert r.returncode == 0, r.stderr
        got = wait_for(lambda: ours().get("127.0.0.91"))
        assert got and got["scenario"] == "stormguard/operator" and got["type"] == "ban"
        assert 0 < float(got["duration"].split("m")[0]) <= 10            # "9m58.9s": the block's remaining time
        lapi.cscli("decisions", "add", "--ip", "127.0.0.93", "--duration", "1h", "--reason", "test/import")
        assert wait_for(lambda: status_of(srv.port, "127.0.0.93")[0] == 204)   # imported …

        lapi.stop()
        assert cli("reputation", "block", "127.0.0.92", "--for", "900", "--store", store).returncode == 0
        assert wait_for(lambda: srv.metric("stormguard_crowdsec_export_errors") >= 1)
        assert srv.metric("stormguard_crowdsec_export_queued") == 1      # waits on disk
        lapi.start()
        got = wait_for(lambda: ours().get("127.0.0.92"))
        assert got and got["scenario"] == "stormguard/operator"
        assert wait_for(lambda: srv.metric("stormguard_crowdsec_export_queued") == 0)
        assert "127.0.0.93" not in ours()                                # … and never pushed back
        assert srv.metric("stormguard_crowdsec_export_pushed") == 2
    lapi.cscli("decisions", "delete", "--all")


@pytest.fixture()
def garbage_lapi() -> Iterator[str]:
    """A loopback HTTP server that answers every request with 200 and a body that is not JSON."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 17\r\n"
                                 b"Connection: close\r\n\r\n<html>oops</html>")
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(5)
    srv.close()


def test_a_broken_local_api_is_a_clear_error_and_the_server_keeps_serving(garbage_lapi: str, lapi: CrowdsecLapi,
                                                                          tmp_path: Path) -> None:
    cfg = tmp_path / "sg.toml"
    cfg.write_text(f'[crowdsec]\nlapi_url = "{garbage_lapi}"\nbouncer_key = "k"\npull_interval = 0.2\n'
                   'max_backoff = 0.5\nexport_blocks = false\n')
    with running_server(FAST, args=("--config", str(cfg))) as srv:
        assert wait_for(lambda: srv.metric("stormguard_crowdsec_import_errors") >= 2)
        assert status_of(srv.port, "127.0.0.86") == (200, "neutral")
        assert "not JSON: <html>oops</html>" in srv.output()
    # the same, one round from the command line: one line naming the URL and the fault, exit 2
    r = cli("crowdsec", "pull", "--once", "--config", str(cfg))
    assert r.returncode == 2 and "/v1/decisions/stream: not JSON" in r.stderr and "Traceback" not in r.stderr
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(f'[crowdsec]\nlapi_url = "{lapi.url}"\nbouncer_key = "not-a-key"\n')
    r = cli("crowdsec", "pull", "--once", "--config", str(wrong))
    assert r.returncode == 2 and "403" in r.stderr and "bouncer key" in r.stderr, r.stderr
    silent = socket.create_server(("127.0.0.1", 0))      # accepts, never answers
    try:
        hang = tmp_path / "hang.toml"
        hang.write_text(f'[crowdsec]\nlapi_url = "http://127.0.0.1:{silent.getsockname()[1]}"\n'
                        'bouncer_key = "k"\ntimeout = 0.5\n')
        r = cli("crowdsec", "pull", "--once", "--config", str(hang))
        assert r.returncode == 2 and "timed out" in r.stderr, r.stderr
    finally:
        silent.close()
    r = cli("doctor", "--config", str(wrong))
    assert r.returncode == 1 and "FAIL  crowdsec" in r.stdout and "ok    store" in r.stdout, r.stdout


def test_cli_pull_and_push_against_a_shared_store(lapi: CrowdsecLapi, tmp_path: Path,
                                                  redis_server: RedisServer) -> None:
    """``stormguard crowdsec pull|push --once`` without a server; ``doctor`` sees both credentials."""
    store = f"{redis_server.url}?prefix=cc{uuid.uuid4().hex[:8]}&timeout=2"
    key = lapi.add_bouncer(f"sg-{uuid.uuid4().hex[:8]}")
    creds = lapi.add_machine(f"sg-{uuid.uuid4().hex[:8]}")
    cfg = config_file(tmp_path, lapi, bouncer_key=key, credentials_file=str(creds))
    lapi.cscli("decisions", "add", "--ip", "198.51.100.30", "--duration", "2h", "--reason", "test/cli")
    r = cli("crowdsec", "pull", "--once", "--config", str(cfg), "--store", store)
    assert r.returncode == 0 and "1 decisions applied" in r.stderr, r.stderr
    r = cli("reputation", "get", "198.51.100.30", "--json", "--store", store)
    assert '"crowdsec:test/cli"' in r.stdout and time.time() + 7000 < float(
        r.stdout.split('"block_until": ')[1].split(",")[0]) <= time.time() + 7200
    assert cli("reputation", "block", "198.51.100.31", "--for", "300", "--store", store).returncode == 0
    r = cli("crowdsec", "push", "--once", "--config", str(cfg), "--store", store)
    assert r.returncode == 0 and "1 blocks queued, 1 pushed, 0 waiting" in r.stderr, r.stderr
    assert {d["value"] for d in lapi.decisions() if d.get("origin") == "stormguard"} >= {"198.51.100.31"}
    r = cli("doctor", "--config", str(cfg), "--store", store)
    assert r.returncode == 0, r.stdout
    assert "bouncer key accepted" in r.stdout and "logged in" in r.stdout
    lapi.cscli("decisions", "delete", "--all")
