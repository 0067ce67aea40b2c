"""``stormguard storm`` against the real server under uvicorn, over sockets from many loopback addresses.

A bounded storm (seconds, a few hundred clients) with the memory store and with a real Redis; the assertions are
invariants, never timings: well-behaved clients lose no event and see none twice, every abusive class is refused
at least once, the report's keys exist and add up, the labels file matches the classes.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from redis_server import RedisServer, redis_server_fixture  # noqa: F401 - fixture
from server_harness import TOKEN, running_server

from stormguard.storm.profile import ProfileError, load_profile, parse_profile
from stormguard.storm.record import check_numbers, converged_at
from stormguard.storm.runner import run_storm, write_labels

#: The shipped classes at test scale; botnet and slow readers share few addresses so that the server's per-address
#: limits (new requests per address; 3 concurrent streams for a neutral client) can see them.
TEST_PROFILE = """
duration = 5
warmup = 1.0
drain = 2.0
timeout = 5.0
processes = 1
[[class]]
name = "well_behaved"
behaviour = "eventsource"
clients = 60
first_address = "127.40.0.1"
[[class]]
name = "no_backoff"
behaviour = "no_backoff"
clients = 6
first_address = "127.41.0.1"
hold = [0.05, 0.2]
[[class]]
name = "flappers"
behaviour = "flapper"
clients = 6
first_address = "127.42.0.1"
hold = [0.05, 0.3]
interval = 0.1
[[class]]
name = "ua_rotators"
behaviour = "ua_rotator"
clients = 6
first_address = "127.43.0.1"
interval = 0.1
hold = [0.05, 0.3]
user_agents = ["curl/8.0", "python-requests/2.31", "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"]
[[class]]
name = "header_poor"
behaviour = "header_poor"
clients = 6
first_address = "127.44.0.1"
interval = 0.1
hold = [0.05, 0.3]
user_agents = []
[[class]]
name = "slow_readers"
behaviour = "slow_reader"
clients = 8
addresses = 2
first_address = "127.45.0.1"
interval = 0.2
[[class]]
name = "botnet"
behaviour = "botnet"
clients = 30
addresses = 60
first_address = "127.46.0.1"
interval = 0.05
hold = [0.05, 0.2]
[[class]]
name = "scanners"
behaviour = "scanner"
clients = 4
first_address = "127.47.0.1"
interval = 0.05
paths = ["/.env", "/wp-login.php", "/.git/config", "/events?topic=storm"]
[[class]]
name = "publishers"
behaviour = "publisher"
clients = 1
first_address = "127.48.0.1"
rate = 10.0
"""

#: Every path rate limited per address (publishing excepted), refilling slowly: a class that keeps coming from the
#: same address is refused after a handful of requests however slowly a loaded machine lets the generator run.
#: Slow readers (a 2 KiB receive buffer, never read) are ended once nothing they were sent is acknowledged for
#: 0.5 s (the default is 15 s: the storm is seconds long); checked every 0.5 s (heartbeat / 2).
SETTINGS = {"ip_rate": 0.2, "ip_burst": 2.0, "limited_paths": ["*"], "exempt_paths": ["/healthz", "/metrics", "/publish"],
            "slow_reader_timeout": 0.5, "heartbeat_interval": 1.0}


def _profile(tmp_path: Path):
    path = tmp_path / "profile.toml"
    path.write_text(TEST_PROFILE)
    return load_profile(path)


def _check(report: dict, profile) -> None:
    summary = report["summary"]
    wb = summary["well_behaved"]
    assert wb["events_published"] > 0
    assert wb["events_lost"] == 0, wb
    assert wb["events_duplicated"] == 0, wb
    assert wb["events_delivered"] == wb["events_published"] * wb["clients"]
    for name, refused in summary["abusive_refused"].items():
        assert refused, f"{name} was never refused or evicted: {report['classes'][name]}"
    for spec in profile.classes:                  # slow readers are not only refused: their open streams are ended
        c = report["classes"][spec.name]
        assert c["evicted"] <= c["successes"]
        if spec.behaviour == "slow_reader":
            assert c["evicted"] > 0, f"{spec.name}: no open stream was ended by the server: {c}"
        elif spec.behaviour == "eventsource":
            assert c["evicted"] == 0, c
    assert set(summary["converged_s"]) == {"reconnect_delay", "success_rate", "rss"}
    assert "success_rate_after_convergence" in wb
    for spec in profile.classes:
        c = report["classes"][spec.name]
        assert {"clients", "attempts", "successes", "refused"} <= set(c)
        assert c["clients"] == spec.clients
        assert c["successes"] + c["refused"] + c["errors"] == c["attempts"]
        assert c["refused"] == sum(c["refused_by"].values())
        per_second = sum(row["classes"].get(spec.name, {}).get("attempts", 0) for row in report["per_second"])
        assert per_second == c["attempts"]
    assert any(row.get("rss") for row in report["per_second"])  # the server's RSS, read from its /metrics


def test_bounded_storm_memory_store(tmp_path: Path) -> None:
    profile = _profile(tmp_path)
    with running_server(SETTINGS) as srv:
        report = run_storm(srv.url, profile, token=TOKEN, progress=False)
    _check(report, profile)


def test_bounded_storm_redis_store(tmp_path: Path, redis_server: RedisServer) -> None:
    profile = _profile(tmp_path)
    with running_server(SETTINGS, args=("--store", f"{redis_server.url}?prefix=storm")) as srv:
        report = run_storm(srv.url, profile, token=TOKEN, progress=False)
    _check(report, profile)


def test_cli_writes_report_plot_and_labels(tmp_path: Path) -> None:
    profile_path = tmp_path / "p.toml"
    profile_path.write_text(TEST_PROFILE.replace("duration = 5", "duration = 2"))
    with running_server(SETTINGS) as srv:
        proc = subprocess.run([sys.executable, "-m", "stormguard", "storm", "--target", srv.url, "--profile",
                               str(profile_path), "--report", str(tmp_path / "r.json"), "--labels",
                               str(tmp_path / "l.csv"), "--token", TOKEN], capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "seed (100k clients)" in proc.stdout and "storm " in proc.stderr   # the table and progress lines
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["well_behaved"]["events_lost"] == 0
    assert (tmp_path / "r.png").stat().st_size > 1000
    rows = list(csv.DictReader((tmp_path / "l.csv").open()))
    profile = load_profile(profile_path)
    assert len(rows) == sum(c.addresses or c.clients for c in profile.classes)
    by_class = {}
    for r in rows:
        by_class.setdefault(r["class"], set()).add(r["key"])
    for spec in profile.classes:
        assert by_class[spec.name] == {spec.address(i) for i in range(spec.addresses or spec.clients)}
        assert all(r["label"] == ("abusive" if spec.abusive else "human") for r in rows if r["class"] == spec.name)


def test_labels_cover_the_default_profile(tmp_path: Path) -> None:
    profile = load_profile()
    n = write_labels(profile, tmp_path / "labels.csv")
    assert n == sum(c.addresses or c.clients for c in profile.classes)
    names = {c.name for c in profile.classes}
    assert {"well_behaved", "no_backoff", "flappers", "ua_rotators", "header_poor", "slow_readers", "botnet",
            "scanners", "publishers"} <= names
    assert next(c for c in profile.classes if c.name == "botnet").addresses >= 1000


@pytest.mark.parametrize("text,match", [
    ("duration = 5", "at least one"),
    ("[[class]]\nname='a'\nbehaviour='nope'\nclients=1\nfirst_address='127.1.0.1'", "behaviour"),
    ("[[class]]\nname='a'\nbehaviour='botnet'\nclients=0\nfirst_address='127.1.0.1'", "clients"),
    ("[[class]]\nname='a'\nbehaviour='botnet'\nclients=2\nfirst_address='x'", "first_address"),
    ("[[class]]\nname='a'\nbehaviour='botnet'\nclients=2\nfirst_address='127.1.0.1'\ncolour=1", "unknown"),
    ("[[class]]\nname='a'\nbehaviour='botnet'\nclients=5\nfirst_address='127.1.0.1'\n"
     "[[class]]\nname='b'\nbehaviour='flapper'\nclients=5\nfirst_address='127.1.0.3'", "overlap"),
    ("[[class]]\nname='a'\nbehaviour='flapper'\nclients=2\nfirst_address='127.1.0.1'\nhold=[2, 1]", "hold"),
    ("[[class]]\nname='a'\nbehaviour='slow_reader'\nclients=2\nfirst_address='127.1.0.1'\nrcvbuf=-1", "rcvbuf"),
])
def test_bad_profiles_name_the_field(tmp_path: Path, text: str, match: str) -> None:
    import tomllib

    with pytest.raises(ProfileError, match=match):
        parse_profile(tomllib.loads(text), "p.toml")


def test_convergence_and_number_checks() -> None:
    assert check_numbers([1, 2, 2, 4], 5) == (4, 2, 1)         # 3 and 5 lost, 2 twice
    series = [(t, 10.0 if t < 5 else 1.0) for t in range(30)]
    assert converged_at(series) == 5.0
    assert converged_at([(t, float(t % 2)) for t in range(30)]) is None
    assert converged_at([(0, 1.0), (1, 1.0)]) is None


def test_demo_closes_the_loop(tmp_path: Path) -> None:
    """storm -> the server's own connection log -> replay -> train with the storm's labels -> evaluate -> serve the
    new model -> storm again: every artefact is left behind and the second storm ran against the learned model."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "stormguard", "demo", "--out-dir", str(out), "--duration", "3",
                           "--scale", "0.15", "--quiet"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in ("labels.csv", "conn-before.jsonl", "conn-after.jsonl", "records.parquet", "model.skops",
                 "evaluate.json", "storm-before.json", "storm-after.json", "before-after.txt"):
        assert (out / name).exists(), name
    assert "before / after learning" in proc.stdout and "--model" in (out / "demo.log").read_text() + proc.stdout
    before = json.loads((out / "storm-before.json").read_text())
    after = json.loads((out / "storm-after.json").read_text())
    for report in (before, after):
        assert report["summary"]["well_behaved"]["events_lost"] == 0
    records = sum(1 for _ in (out / "conn-before.jsonl").open())
    assert records >= sum(c["attempts"] for c in before["classes"].values()) * 0.9   # the log saw the storm
    assert json.loads((out / "evaluate.json").read_text())["n_bad"] > 0


def test_demo_table_counts_evicted_streams_as_limited() -> None:
    """Slow readers are not refused but evicted once their stream is open: the before/after table counts both."""
    from stormguard.storm.demo import before_after

    def report(refused: int, evicted: int, second: int) -> dict:
        row = {"t": second, "classes": {"slow_readers": {"refused": refused, "evicted": evicted}}}
        return {"classes": {"slow_readers": {"attempts": 8, "refused": refused, "evicted": evicted}},
                "per_second": [{"t": 0, "classes": {}}, row],
                "summary": {"well_behaved": {"events_lost": 0, "events_published": 10}}}

    table = before_after(report(0, 4, 17), report(2, 4, 9)).splitlines()
    line = next(x for x in table if x.startswith("slow_readers")).split()
    assert line[1:] == ["50.0%", "75.0%", "17", "s", "9", "s"]
