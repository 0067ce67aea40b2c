"""Store and command-line edges found when the CLI was tried as a careless or hostile user would: each answers
with a one-line error naming what was wrong (exit 2), writes nothing it should not, and never a traceback."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis
from redis_server import RedisServer, redis_server_fixture  # noqa: F401 - fixture
from server_harness import running_server
from stormguard.scoring.stores import open_store
from stormguard.scoring.stores.sync import SyncStore

from stormguard.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORMGUARD_") or k == "STORMGUARD_CORPUS"}
    return subprocess.run([sys.executable, "-m", "stormguard", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def _dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_set_refuses_non_finite_scores_and_writes_nothing(redis_server: RedisServer, value: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{redis_server.url}?prefix=nan{value.strip('-')}"
    with pytest.raises(SystemExit) as exc:
        main(["reputation", "set", "198.51.100.7", value, "--store", url])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and ("finite" in err or value.startswith("-"))  # "-inf" reads as an unknown option
    assert not redis.Redis.from_url(redis_server.url).keys(f"nan{value.strip('-')}*")


def test_stores_refuse_nan_before_writing(redis_server: RedisServer) -> None:
    for url in ("memory://", f"{redis_server.url}?prefix=nanstore&failover=0"):
        with SyncStore(open_store(url)) as store:
            for op in (store.set, store.add):
                with pytest.raises(ValueError, match="finite"):
                    op("k", math.nan, "x")
            with pytest.raises(ValueError, match="finite"):
                store.block("k", math.nan, "x")
            assert store.count() == 0
            assert [e.key for e in store.top(5)] == []


def test_load_names_the_bad_line(tmp_path: Path, redis_server: RedisServer) -> None:
    headerless = tmp_path / "scores.csv"
    headerless.write_text("198.51.100.7,-60\n203.0.113.9,10\n")
    proc = _cli("reputation", "load", str(headerless), "--store", f"{redis_server.url}?prefix=hdr")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{headerless}:1: expected a header row" in proc.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("key,score\na,1\nb,lots\n")
    proc = _cli("reputation", "load", str(bad), "--store", f"{redis_server.url}?prefix=hdr")
    assert proc.returncode == 2 and f"{bad}:3: field 'score'" in proc.stderr


def test_get_without_a_store_is_an_error_not_a_clean_bill() -> None:
    proc = _cli("reputation", "get", "198.51.100.7")
    assert proc.returncode == 2 and "no store to inspect" in proc.stderr and "0.000" not in proc.stdout


@pytest.mark.parametrize("command", ["score", "pipeline"])
def test_unreachable_store_is_one_line(command: str, tmp_path: Path) -> None:
    args = (["score", str(ROOT / "data/default-model.skops"), str(ROOT / "data/sample-access.log")]
            if command == "score" else ["pipeline", "--out-dir", str(tmp_path)])
    proc = _cli(*args, "--store", _dead_url())
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and f"stormguard {command}: store error: ConnectionError" in proc.stderr


def test_failed_replay_and_pipeline_leave_no_output(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 16)
    out = tmp_path / "records.parquet"
    proc = _cli("replay", str(junk), "-o", str(out))
    assert proc.returncode == 2 and not out.exists() and "no readable input" in proc.stderr
    proc = _cli("pipeline", str(junk), "--out-dir", str(tmp_path / "p"))
    assert proc.returncode == 2 and not any((tmp_path / "p").glob("*.parquet"))


def test_demo_page_is_served() -> None:
    with running_server() as srv:
        resp = httpx.get(srv.url + "/demo", timeout=10.0)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
        assert "EventSource" in resp.text
