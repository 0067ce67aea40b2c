"""``stormguard reputation ...`` through its registration function (the lead wires it into stormguard.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from redis_server import RedisServer, redis_server_fixture  # noqa: F401 - fixture
from stormguard.scoring.cli import register


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="stormguard")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_help_lists_operations(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _run(["reputation", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: stormguard reputation" in out
    for op in ("get", "set", "block", "unblock", "top", "load"):
        assert op in out


def test_memory_store_get(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["reputation", "--store", "memory://", "--json", "get", "1.2.3.4"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["key"] == "1.2.3.4" and row["score"] == 0


def test_redis_round_trip(redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{redis_server.url}?prefix=cli"
    base = ["reputation", "--store", url, "--json"]
    assert _run([*base, "set", "1.2.3.4", "-30"]) == 0
    assert _run([*base, "block", "5.6.7.8", "--for", "600"]) == 0
    csv = tmp_path / "scores.csv"
    csv.write_text("key,score\nm1,-80\nm2,90\n")
    assert _run([*base, "load", str(csv)]) == 0
    capsys.readouterr()
    assert _run([*base, "top", "-n", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["key"] for r in rows] == ["m1", "1.2.3.4"]
    assert _run([*base, "get", "5.6.7.8"]) == 0
    assert json.loads(capsys.readouterr().out)["block_until"] > 0
    assert _run([*base, "unblock", "5.6.7.8"]) == 0
    lifted = json.loads(capsys.readouterr().out)
    assert 0 < lifted["block_until"] <= lifted["updated"]  # the block ends now
    assert _run([*base, "top", "--best", "-n", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["key"] == "m2"


def test_unreachable_store_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    from redis_server import free_port

    assert _run(["reputation", "--store", f"redis://127.0.0.1:{free_port()}/0", "get", "k"]) == 2
    assert "store error" in capsys.readouterr().err
