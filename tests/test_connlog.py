"""``stormguard serve --conn-log FILE``: one JSON line per request in the record schema, read back by
``stormguard replay`` (the closed loop's first step), rotated by size, never on the request path."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
from server_harness import SSEClient, running_server
from stormguard.features.replay import replay
from stormguard.server.ops.connlog import ConnLog

from stormguard.report import ReplayStats


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_served_requests_replay_as_records(tmp_path: Path) -> None:
    log = tmp_path / "conn.jsonl"
    with running_server({"ip_rate": 0.001, "ip_burst": 1.0}, args=("--conn-log", str(log))) as srv:
        first = SSEClient(srv.port, "/events?topic=a", source="127.0.0.71", headers={"User-Agent": "probe/1"})
        assert first.messages(1)
        second = SSEClient(srv.port, "/events?topic=a", source="127.0.0.74")
        assert second.messages(1)
        paced = SSEClient(srv.port, "/events?topic=a", source="127.0.0.71")   # the bucket is empty: paced
        paced.read_all()
        assert srv.publish("a", {"n": 1}).status_code == 200
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.72"), timeout=10) as c:
            assert c.get(srv.url + "/nope").status_code == 404
        first.close()
        second.close()
        deadline = time.monotonic() + 60
        while len([r for r in _lines(log) if r["path"].startswith("/events")]) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    rows = _lines(log)
    events = [r for r in rows if r["path"] == "/events?topic=a"]
    assert len(events) == 3, events
    assert sum(r["outcome"] == "refused" and r["reject_reason"] == "limiter:rate" for r in events) == 1
    ok = [r for r in events if r["outcome"] == "ok"]
    assert len(ok) == 2, [(r["outcome"], r["status"], r.get("reject_reason"), r["bytes_out"]) for r in events]
    assert all(r["ts_end"] >= r["ts"] and r["status"] == 200 for r in ok)
    assert any(r["user_agent"] == "probe/1" and r["header_names"][0] == "host" for r in ok)
    assert any(r["path"] == "/nope" and r["status"] == 404 and r["src_ip"] == "127.0.0.72" for r in rows)
    assert any(r["path"] == "/publish" and r["method"] == "POST" for r in rows)
    stats = ReplayStats()
    records = replay([log], stats)
    assert len(records) == len(rows) and stats.files == 1 and not stats.problems
    rec = records[records["path"] == "/events?topic=a"]
    assert set(rec["src_ip"]) == {"127.0.0.71", "127.0.0.74"} and rec["header_order"].notna().all()
    assert set(rec["outcome"]) == {"ok", "refused"} and "limiter:rate" in set(rec["reject_reason"].dropna())


def test_rotation_keeps_every_record(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    log = ConnLog(str(path), max_bytes=2000, backups=50, flush_interval=0.01)

    async def main() -> None:
        log.start()
        for i in range(300):
            log.record({"ts": float(i), "src_ip": "192.0.2.1", "path": f"/p/{i}"})
            if i % 50 == 0:
                await asyncio.sleep(0.02)
        await log.stop()

    asyncio.run(main())
    files = sorted(tmp_path.glob("c.jsonl*"))
    assert len(files) > 2 and log.rotations == len(files) - 1
    seen = sorted(r["ts"] for f in files for r in _lines(f))
    assert seen == [float(i) for i in range(300)] and log.written == 300 and log.dropped == 0
    assert all(f.stat().st_size <= 2000 for f in files)


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    log = ConnLog(str(tmp_path / "d.jsonl"), max_queue=10)
    for i in range(15):
        log.record({"ts": float(i)})
    assert log.dropped == 5 and len(log._queue) == 10
