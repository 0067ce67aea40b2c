"""The same storm against a bare SSE app (sse-starlette, ``bench/serve_bare.py``) and ``stormguard serve``, under
the same uvicorn settings (one worker, uvloop + httptools, access log off), and the convergence tables side by side
with the seed's figures (issue 13).

    python bench/storm.py                          # default profile x 0.5, 30 s each
    python bench/storm.py --scale 5 --duration 60  # larger
    python bench/storm.py --profile my.toml --out-dir /tmp/storm

The bare app has no limits, no history and no replay: its figures are printed whatever they are. Well-behaved
clients read ``/feed`` on the bare app (its fan-out route) and ``/events`` on stormguard. The machine is small and
shared: run it several times and compare medians, not single runs.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {deadline_s} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", help="storm profile (default: the shipped default.toml)")
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--out-dir", default=str(HERE / "out" / "storm"))
    ap.add_argument("--group-short-lived", type=int, default=100,
                    help="stormguard's [server] group_short_lived for the run (default 100; 0 = off, the serve "
                         "default): networks whose addresses together make this many short-lived streams a minute "
                         "are lowered, then refused")
    args = ap.parse_args()

    from stormguard.storm.profile import load_profile
    from stormguard.storm.record import convergence_table, plot
    from stormguard.storm.runner import run_storm, save_report

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile(args.profile).scaled(args.scale)
    profile.duration = args.duration
    token = secrets.token_hex(8)
    env = {**os.environ, "STORMGUARD_PUBLISH_TOKEN": token}
    reports = {}
    for name in ("bare", "stormguard"):
        port = _port()
        if name == "bare":
            cmd = [sys.executable, "-m", "uvicorn", "serve_bare:app", "--app-dir", str(HERE), "--host", "127.0.0.1",
                   "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                   "--log-level", "warning"]
            health = f"http://127.0.0.1:{port}/hello"
            run_profile = load_profile(args.profile).scaled(args.scale)
            run_profile.duration = args.duration
            for c in run_profile.classes:
                c.paths = [p.replace("/events", "/feed") for p in c.paths]
        else:
            cmd = [sys.executable, "-m", "stormguard", "serve", "--host", "127.0.0.1", "--port", str(port),
                   "--log-level", "warning"]
            health = f"http://127.0.0.1:{port}/healthz"
            run_profile = profile
        with open(out / f"{name}.log", "w") as log:
            run_env = env if name == "bare" else {**env,
                                                   "STORMGUARD_SERVER_GROUP_SHORT_LIVED": str(args.group_short_lived)}
            proc = subprocess.Popen(cmd, env=run_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait(health, proc)
            print(f"== {name}: {' '.join(cmd[:6])} ...", flush=True)
            report = run_storm(f"http://127.0.0.1:{port}", run_profile, token=token, server_pid=proc.pid,
                               progress=False)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        reports[name] = report
        save_report(report, out / f"{name}.json")
        plot(report, str(out / f"{name}.png"))
        print(convergence_table(report, label=name), flush=True)
    print("\n== side by side (seed: 100k clients, exponential backoff 1 -> 8 s)")
    print(f"{'':<30}{'bare (sse-starlette)':>24}{'stormguard':>16}")
    for key, title in (("events_lost", "well-behaved events lost"), ("events_duplicated", "duplicated"),
                       ("success_rate_after_convergence", "success after convergence")):
        row = [reports[n]["summary"]["well_behaved"][key] for n in ("bare", "stormguard")]
        print(f"{title:<30}{str(row[0]):>24}{str(row[1]):>16}")
    for key in ("reconnect_delay", "success_rate", "rss"):
        row = [reports[n]["summary"]["converged_s"][key] for n in ("bare", "stormguard")]
        print(f"{'converged ' + key + ' (s)':<30}{str(row[0]):>24}{str(row[1]):>16}")
    for cls in reports["stormguard"]["classes"]:
        b, s = reports["bare"]["classes"][cls], reports["stormguard"]["classes"][cls]
        share = [f"{100 * c['refused'] / c['attempts']:.1f}%" if c["attempts"] else "-" for c in (b, s)]
        print(f"{cls + ' refused':<30}{share[0]:>24}{share[1]:>16}")
        if b.get("evicted") or s.get("evicted"):     # open streams the server ended (slow readers reset)
            print(f"{cls + ' evicted':<30}{b.get('evicted', 0):>24}{s.get('evicted', 0):>16}")
    (out / "side-by-side.json").write_text(json.dumps({n: r["summary"] for n, r in reports.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
