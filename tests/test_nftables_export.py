"""``stormguard export nftables`` against the real ``nft``, inside a private network namespace (issue 15).

A ``unshare -n`` process holds an empty network namespace for the test; ``nft`` runs in it through
``nsenter --net=/proc/PID/ns/net nft`` (the CLI's ``--nft-command``), so the host's ruleset is never touched. The
blocks come from a real Redis store; the sets are listed with ``nft -j`` to check elements and timeouts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from redis_server import RedisServer, redis_server_fixture  # noqa: F401 - fixture
from server_harness import PROJECT_ROOT
from stormguard.scoring.stores import open_store
from stormguard.scoring.stores.sync import SyncStore


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def netns() -> Iterator[list[str]]:
    """The nft command line that runs inside a fresh network namespace."""
    for tool in ("unshare", "nsenter", "nft"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} not found (Debian packages util-linux, nftables)")
    holder = subprocess.Popen(["unshare", "-n", "sleep", "900"], stderr=subprocess.PIPE)
    ns = f"/proc/{holder.pid}/ns/net"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and holder.poll() is None:
        try:
            if os.readlink(ns) != os.readlink("/proc/self/ns/net"):
                break
        except OSError:
            pass
        time.sleep(0.02)
    if holder.poll() is not None:
        _unavailable(f"unshare -n failed (no network namespaces here?): {holder.stderr.read().decode()[:300]}")
    cmd = ["nsenter", f"--net={ns}", "nft"]
    probe = subprocess.run([*cmd, "list", "ruleset"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        holder.kill()
        _unavailable(f"nft does not run in a namespace here: {probe.stderr[:300]}")
    try:
        yield cmd
    finally:
        holder.kill()
        holder.wait(10)


def nft_set(cmd: list[str], table: str, name: str) -> dict[str, tuple[int, int]]:
    """{address: (timeout, expires)} of one set."""
    out = subprocess.run([*cmd, "-j", "list", "set", "inet", table, name], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    elems = {}
    for item in json.loads(out)["nftables"]:
        for e in (item.get("set") or {}).get("elem", []) or []:
            e = e["elem"]
            elems[e["val"]] = (int(e["timeout"]), int(e["expires"]))
    return elems


def export(cmd: list[str], store: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stormguard", "export", "nftables", "--store", store,
                           "--nft-command", " ".join(cmd), *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture()
def store(redis_server: RedisServer) -> Iterator[tuple[str, SyncStore]]:
    url = f"{redis_server.url}?prefix=nf{uuid.uuid4().hex[:8]}&timeout=2"
    s = SyncStore(open_store(url, failover=False))
    yield url, s
    s.clear()
    s.close()


def test_blocks_become_elements_with_their_remaining_time_and_sync_incrementally(netns, store) -> None:
    url, s = store
    table = "sg" + uuid.uuid4().hex[:6]
    t0 = time.time()
    s.block("192.0.2.10", t0 + 600, "manual-block")
    s.block("192.0.2.11", t0 + 120, "reconnect_storm")
    s.block("2001:db8::7", t0 + 300, "manual-block")
    s.block("session-not-an-address", t0 + 300, "manual-block")
    r = export(netns, url, "--apply", "--table", table)
    t1 = time.time()
    assert r.returncode == 0, r.stderr
    assert f"nftables inet {table}: 4 blocked, +3 -0 elements" in r.stderr
    v4, v6 = nft_set(netns, table, "blocked4"), nft_set(netns, table, "blocked6")
    assert set(v4) == {"192.0.2.10", "192.0.2.11"} and set(v6) == {"2001:db8::7"}
    # timeouts equal the remaining block as of the export (rounded up to whole seconds)
    assert 600 - (t1 - t0) - 1 <= v4["192.0.2.10"][0] <= 601
    assert 120 - (t1 - t0) - 1 <= v4["192.0.2.11"][0] <= 121
    assert 300 - (t1 - t0) - 1 <= v6["2001:db8::7"][0] <= 301
    rules = subprocess.run([*netns, "list", "chain", "inet", table, "input"], capture_output=True, text=True,
                           timeout=30, check=True).stdout
    assert "ip saddr @blocked4 drop" in rules and "ip6 saddr @blocked6 drop" in rules

    # lifted, extended, new: the dry run says so and changes nothing
    s.unblock("192.0.2.10", "manual-unblock")
    s.block("192.0.2.11", time.time() + 3600, "manual-block")
    s.block("192.0.2.12", time.time() + 60, "manual-block")
    r = export(netns, url, "--apply", "--dry-run", "--table", table)
    assert r.returncode == 0, r.stderr
    assert f"delete element inet {table} blocked4 {{ 192.0.2.10, 192.0.2.11 }}" in r.stdout
    assert "192.0.2.12 timeout" in r.stdout and "(dry run)" in r.stderr
    assert set(nft_set(netns, table, "blocked4")) == {"192.0.2.10", "192.0.2.11"}
    r = export(netns, url, "--apply", "--table", table)
    assert r.returncode == 0 and "+2 -2 elements" in r.stderr, r.stderr
    v4 = nft_set(netns, table, "blocked4")
    assert set(v4) == {"192.0.2.11", "192.0.2.12"} and v4["192.0.2.11"][0] > 3000
    r = export(netns, url, "--apply", "--table", table)                # nothing changed: nothing to do
    assert "+0 -0 elements" in r.stderr
    tables = subprocess.run([*netns, "list", "tables"], capture_output=True, text=True, timeout=30).stdout
    assert tables.count(f"table inet {table}") == 1


def test_the_written_script_loads_into_an_empty_ruleset_and_watch_follows_new_blocks(netns, store, tmp_path) -> None:
    url, s = store
    table = "sg" + uuid.uuid4().hex[:6]
    s.block("198.51.100.20", time.time() + 900, "manual-block")
    out = tmp_path / "blocked.nft"
    r = export(netns, url, "--table", table, "--sets-only", "-o", str(out))
    assert r.returncode == 0, r.stderr
    subprocess.run([*netns, "-f", str(out)], check=True, timeout=30)
    assert set(nft_set(netns, table, "blocked4")) == {"198.51.100.20"}
    watch = subprocess.Popen([sys.executable, "-m", "stormguard", "export", "nftables", "--store", url,
                              "--nft-command", " ".join(netns), "--apply", "--watch", "--interval", "0.2",
                              "--duration", "300", "--table", table], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        s.block("198.51.100.21", time.time() + 900, "manual-block")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "198.51.100.21" not in nft_set(netns, table, "blocked4"):
            time.sleep(0.1)
        assert "198.51.100.21" in nft_set(netns, table, "blocked4")
    finally:
        watch.terminate()                       # SIGTERM ends the watch cleanly
        _, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err


def test_blocklist_files_for_proxies(store, tmp_path) -> None:
    url, s = store
    s.block("192.0.2.30", time.time() + 900, "manual-block")
    s.block("2001:db8::30", time.time() + 900, "manual-block")
    for fmt, line in (("plain", "192.0.2.30"), ("nginx-geo", "192.0.2.30 1;"), ("haproxy-map", "192.0.2.30 blocked")):
        out = tmp_path / f"list.{fmt}"
        r = subprocess.run([sys.executable, "-m", "stormguard", "export", "blocklist", "--format", fmt, "-o",
                            str(out), "--store", url], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        lines = out.read_text().splitlines()
        assert lines[0].startswith(f"# stormguard blocklist ({fmt}), 2 addresses") and line in lines
