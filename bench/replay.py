"""Replay benchmark: stormguard's capture and log readers against pyja3 and a plain regex loop, in one run.

    python bench/replay.py                     # build/reuse inputs, 3 runs of everything, final table
    python bench/replay.py --runs 5 --size-mb 200
    python bench/replay.py --skip-pyja3 --skip-logs
    python bench/replay.py --profile           # also cProfile read_capture over the big capture

What is timed, each run (tools interleaved so machine noise hits all of them alike):

* ``ja3 -a BIG.pcap`` — pyja3's CLI (JSON to a file), the baseline;
* ``stormguard replay BIG.pcap -o OUT.parquet`` — the real CLI, as a subprocess, as users run it (default
  ``--jobs``: one reader process per CPU, each taking a share of the flows), and again with ``--jobs 1`` (one
  process parses; only the writer runs beside it);
* the API loop ``for rec in read_capture(BIG.pcap, ReplayStats())`` in a fresh interpreter (the loop only is timed);
* ``stormguard replay BIG.log -o OUT.parquet`` (default ``--jobs``: byte ranges parsed by one process per CPU;
  and ``--jobs 1``) and the ``read_log`` loop over a >= 1,000,000-line access log;
* a plain Python loop applying one typical combined-log regex to each line of the same log (the log baseline).

Wall time is measured around each child; peak RSS is the child's maximum resident set size from ``/usr/bin/time``
(``os.wait4``'s ``ru_maxrss`` when it is missing). Medians
over ``--runs``. Inputs are built by ``build_corpus.py`` and cached in ``--out-dir`` (``bench/out``, git-ignored).
This is a measurement, not a test: it exits 0 whether or not the targets are met and prints MISSED next to a
missed target.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from build_corpus import DEFAULT_CORPUS, DEFAULT_OUT, build_capture, build_log

TARGET_CAPTURE_RATIO = 5.0  # stormguard packets/s >= 5x pyja3's (issue 16; 3x before)
TARGET_PEAK_MB = 500.0
TARGET_LOG_LINES_S = 200_000.0
PROFILE_CLI_LINES = 200_000

# One typical combined-log regex (what a hand-rolled parser would do); the log baseline.
COMBINED_RE = re.compile(
    r'^(\S+) (\S+) (\S+) \[([^\]]+)\] "(\S+) (\S+) ?(\S*)" (\d{3}) (\S+)(?: "([^"]*)" "([^"]*)")?'
)


# ----------------------------------------------------------------------------------------------------------------
# Workers (run in a fresh interpreter by the driver: python bench/replay.py --worker KIND PATH --result FILE)


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _profiled(fn, top: int) -> tuple[float, str]:
    """Run ``fn`` under cProfile: (seconds, top functions by own time, then stormguard's by cumulative time)."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(fn)
    seconds = time.perf_counter() - t0
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(r"features|stormguard", top)
    text = "\n".join(ln for ln in buf.getvalue().splitlines() if ln.strip())
    return seconds, text.replace(str(Path(__file__).resolve().parent.parent) + "/", "")


def worker(kind: str, path: str, result: str, profile_top: int = 30) -> int:
    """``kind``: regex | capture | log | cli-log, each optionally prefixed ``profile-``."""
    profile = kind.startswith("profile-")
    kind = kind.removeprefix("profile-")
    out: dict = {"kind": kind}
    if kind == "regex":
        n = matched = 0

        def loop() -> None:
            nonlocal n, matched
            match = COMBINED_RE.match
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    n += 1
                    if match(line) is not None:
                        matched += 1

        def result_fields() -> dict:
            return {"lines": n, "matched": matched}
    elif kind == "capture":
        from stormguard.features.capture.reader import read_capture

        from stormguard.report import ReplayStats

        stats = ReplayStats()
        keys: Counter = Counter()
        n = ch = 0

        def loop() -> None:
            nonlocal n, ch
            for rec in read_capture(path, stats):
                n += 1
                ja3 = rec.get("ja3")
                if ja3:
                    ch += 1
                    keys[(rec.get("src_ip"), rec.get("src_port"), rec.get("dst_ip"), rec.get("dst_port"), ja3)] += 1

        def result_fields() -> dict:
            return {"records": n, "client_hellos": ch, "stats_packets": stats.packets,
                    "stats_client_hellos": stats.client_hellos, "stats_connections": stats.connections,
                    "skipped": dict(stats.skipped.most_common(12)), "keys": [[*k, v] for k, v in keys.items()]}
    elif kind == "log":
        from stormguard.features.logs.reader import read_log

        from stormguard.report import ReplayStats

        stats = ReplayStats()
        n = 0

        def loop() -> None:
            nonlocal n
            for _rec in read_log(path, stats):
                n += 1

        def result_fields() -> dict:
            return {"records": n, "stats_lines": stats.lines, "skipped": dict(stats.skipped.most_common(12))}
    elif kind == "cli-log":  # the whole CLI in this process (for profiling)
        from stormguard.cli import main as cli_main

        def loop() -> None:
            cli_main(["replay", "--no-progress", path, "-o", str(Path(result).with_suffix(".parquet"))])

        def result_fields() -> dict:
            return {}
    else:
        raise SystemExit(f"unknown worker kind {kind}")
    c0 = time.process_time()
    if profile:
        seconds, out["profile"] = _profiled(loop, profile_top)
    else:
        t0 = time.perf_counter()
        loop()
        seconds = time.perf_counter() - t0
    out.update(seconds=seconds, cpu=time.process_time() - c0, **result_fields())
    out["worker_peak_rss_mb"] = _rss_mb()
    Path(result).write_text(json.dumps(out))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Running children and measuring them


TIME_BIN = shutil.which("time", path="/usr/bin:/bin")


class Child:
    """One finished child process: wall seconds, peak RSS (MB), exit code, stderr tail.

    Peak RSS comes from ``/usr/bin/time -f %M`` when it exists: ``ru_maxrss`` of a child forked straight from this
    (larger) process would start at this process's RSS, since Linux carries the pre-exec high-water mark over
    ``exec``. Without it, ``os.wait4``'s ``ru_maxrss`` is used (an upper bound). Each child runs in its own process
    group, which is killed (by its id) on ``timeout``.
    """

    def __init__(self, argv: list[str], stdout_path: Path | None, timeout: float):
        self.argv = argv
        base = str(stdout_path or "/tmp/bench-child")
        self.stderr_path = Path(base + ".stderr")
        time_out = Path(base + ".time")
        time_out.unlink(missing_ok=True)
        full = [TIME_BIN, "-f", "%e %M %x %U %S", "-o", str(time_out), *argv] if TIME_BIN else argv
        self.timed_out = False
        t0 = time.perf_counter()
        with open(stdout_path or os.devnull, "wb") as out, open(self.stderr_path, "wb") as err:
            p = subprocess.Popen(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)

            def kill() -> None:
                self.timed_out = True
                try:
                    os.killpg(p.pid, 9)  # the process group this bench started for this child, by its id
                except ProcessLookupError:
                    pass

            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                _, status, ru = os.wait4(p.pid, 0)
            finally:
                timer.cancel()
            p.returncode = os.waitstatus_to_exitcode(status)
        self.wall = time.perf_counter() - t0
        self.peak_mb = ru.ru_maxrss / 1024.0
        self.cpu = ru.ru_utime + ru.ru_stime
        self.rc = p.returncode
        if TIME_BIN and time_out.exists():
            last = time_out.read_text().strip().splitlines()[-1:]
            try:
                _, kb, _, user, system = last[0].split()
                self.peak_mb = int(kb) / 1024.0
                self.cpu = float(user) + float(system)
            except (IndexError, ValueError):
                pass

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def why(self) -> str:
        if self.timed_out:
            return "TIMEOUT"
        tail = self.stderr_path.read_text(errors="replace").strip().splitlines()[-3:]
        return f"exit {self.rc}: " + " | ".join(tail)


def _console_script(name: str, module_main: str | None) -> list[str] | None:
    here = Path(sys.executable).parent / name
    if here.exists():
        return [str(here)]
    found = shutil.which(name)
    if found:
        return [found]
    if module_main:
        mod, func = module_main.split(":")
        return [sys.executable, "-c", f"import sys; from {mod} import {func}; sys.exit({func}())"]
    return None


def _stormguard_cmd() -> list[str]:
    return _console_script("stormguard", "stormguard.cli:main") or []


PROBE = """
import importlib, json, sys
have = {}
for mod, func in (("stormguard.features.capture.reader", "read_capture"), ("stormguard.features.logs.reader", "read_log")):
    try:
        have[func] = callable(getattr(importlib.import_module(mod), func, None))
    except Exception as exc:
        have[func] = False
        if not isinstance(exc, ModuleNotFoundError) or exc.name != mod:
            have[func + ":error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(have))
"""


PRECOMPILE = """
import compileall, importlib.util, os, sys
done = []
for name in ("stormguard", "stormguard.features", "stormguard.models", "stormguard.scoring", "stormguard.server",
             "ja3", "dpkt"):
    try:
        spec = importlib.util.find_spec(name)
    except Exception:
        continue
    if spec is None or not spec.origin:
        continue
    where = spec.submodule_search_locations[0] if spec.submodule_search_locations else spec.origin
    ok = compileall.compile_dir(where, quiet=2) if os.path.isdir(where) else compileall.compile_file(where, quiet=2)
    done.append(name if ok else name + "(failed)")
print(" ".join(done))
"""


def precompile() -> str:
    """Byte-compile stormguard and the baseline's modules, as ``pip install`` does: with PYTHONDONTWRITEBYTECODE
    set (as on the shared machine) an editable install would otherwise recompile every module in every timed run
    (~0.2 s of stormguard's CLI time), which no installed copy does."""
    try:
        r = subprocess.run([sys.executable, "-c", PRECOMPILE], capture_output=True, timeout=300, text=True)
        return r.stdout.strip() or r.stderr.strip()[-200:]
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def probe_stormguard() -> dict:
    """Which parts of stormguard exist right now (they are being written while this bench is). Probed in child
    processes, so that a half-written module cannot break the bench and this process stays small."""
    have: dict = {}
    try:
        r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, timeout=120)
        have.update(json.loads(r.stdout.decode().strip().splitlines()[-1]))
    except Exception as exc:
        have["probe:error"] = f"{type(exc).__name__}: {exc}"
    try:
        r = subprocess.run([*_stormguard_cmd(), "replay", "--help"], capture_output=True, timeout=60)
        have["cli"] = r.returncode == 0
        if r.returncode:
            have["cli:error"] = (r.stderr or r.stdout).decode(errors="replace").strip().splitlines()[-1:]
    except Exception as exc:
        have["cli"] = False
        have["cli:error"] = f"{type(exc).__name__}: {exc}"
    return have


def run_worker(kind: str, path: Path, work: Path, timeout: float) -> tuple[Child, dict | None]:
    res = work / f"worker-{kind}.json"
    res.unlink(missing_ok=True)
    c = Child([sys.executable, str(Path(__file__).resolve()), "--worker", kind, str(path), "--result", str(res)],
              work / f"worker-{kind}.out", timeout)
    data = json.loads(res.read_text()) if c.ok and res.exists() else None
    return c, data


# ----------------------------------------------------------------------------------------------------------------
# Results


def _read_parquet_keys(path: Path) -> tuple[Counter, Counter] | None:
    try:
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["src_ip", "src_port", "dst_ip", "dst_port", "ja3", "proto"])
    except Exception as exc:
        print(f"  (could not read {path}: {type(exc).__name__}: {exc})")
        return None
    cols = t.to_pydict()
    keys: Counter = Counter()
    protos: Counter = Counter()
    for *k, proto in zip(cols["src_ip"], cols["src_port"], cols["dst_ip"], cols["dst_port"], cols["ja3"],
                         cols["proto"], strict=True):
        protos[proto] += 1
        if k[4]:
            keys[tuple(k)] += 1
            protos[f"{proto} with ja3"] += 1
    return keys, protos


def _pyja3_keys(path: Path) -> Counter | None:
    try:
        res = json.loads(path.read_text())
    except Exception as exc:
        print(f"  (could not read pyja3 output {path}: {exc})")
        return None
    return Counter((r["source_ip"], r["source_port"], r["destination_ip"], r["destination_port"], r["ja3_digest"])
                   for r in res)


def coverage(py: Counter, sg: Counter) -> list[str]:
    """Every (4-tuple, JA3) pyja3 reports must be reported by stormguard; and every JA3 hash as often."""
    lines = []
    py_set, sg_set = set(py), set(sg)
    missing = py_set - sg_set
    n = len(py_set)
    pct = 100.0 * (n - len(missing)) / n if n else 100.0
    lines.append(f"coverage (src, sport, dst, dport, ja3) pyja3 found by stormguard: {n - len(missing):,}/{n:,} "
                 f"({pct:.2f}%){'' if not missing else '  MISSED'}")
    py_h: Counter = Counter()
    sg_h: Counter = Counter()
    for k, v in py.items():
        py_h[k[4]] += v
    for k, v in sg.items():
        sg_h[k[4]] += v
    short = {h: (c, sg_h.get(h, 0)) for h, c in py_h.items() if sg_h.get(h, 0) < c}
    lines.append(f"coverage by JA3 hash: {len(py_h) - sum(1 for h in short if sg_h.get(h, 0) == 0)}/{len(py_h)} "
                 f"hashes found; {len(short)} hashes seen fewer times by stormguard than by pyja3 "
                 f"(pyja3 counts every ClientHello packet, retransmissions included)")
    for k in sorted(missing)[:5]:
        lines.append(f"  missing e.g. {k}")
    for h, (a, b) in list(short.items())[:5]:
        lines.append(f"  hash {h}: pyja3 {a}, stormguard {b}")
    extra = sg_set - py_set
    lines.append(f"stormguard found {len(extra):,} (4-tuple, ja3) that pyja3 did not (IPv6, QUIC, DTLS, tunnels, "
                 f"ClientHellos over several segments, ...)")
    return lines


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _fmt_runs(xs: list[float]) -> str:
    return "[" + " ".join(f"{x:.2f}" for x in xs) + "]"


def _flag(ok: bool) -> str:
    return "ok" if ok else "MISSED"


# ----------------------------------------------------------------------------------------------------------------
# The driver


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=None, help="capture repetitions of the corpus (overrides --size-mb)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of every tool (median reported; default 3)")
    ap.add_argument("--size-mb", type=float, default=100.0, help="minimum size of the built capture (default 100)")
    ap.add_argument("--log-lines", type=int, default=1_000_000, help="lines in the built access log")
    ap.add_argument("--skip-pyja3", action="store_true", help="do not run the pyja3 baseline")
    ap.add_argument("--skip-logs", action="store_true", help="do not run the log benchmark")
    ap.add_argument("--skip-capture", action="store_true", help="do not run the capture benchmark")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile read_capture, read_log and the log CLI once each (after the table)")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="cache/output folder (default bench/out)")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds before one child is killed")
    ap.add_argument("--budget", type=float, default=540.0,
                    help="seconds after which no further run is started (default 540: the bench stays < 10 min)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("path", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.worker, a.path, a.result)

    t_start = time.perf_counter()
    print(f"replay bench  {time.strftime('%Y-%m-%d %H:%M:%S')}  python {sys.version.split()[0]}  "
          f"cpus {os.cpu_count()}  load {' '.join(f'{x:.1f}' for x in os.getloadavg())}  "
          f"argv: {' '.join(sys.argv[1:]) or '(defaults)'}")
    work = a.out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)

    print(f"byte-compiled (as pip install does): {precompile()}")
    have = probe_stormguard()
    print("stormguard available:", ", ".join(f"{k}={v}" for k, v in have.items()))
    sg_cmd = _stormguard_cmd()
    ja3_cmd = _console_script("ja3", "ja3.ja3:main")

    pcap = meta = log = log_meta = None
    if not a.skip_capture:
        pcap, meta = build_capture(a.corpus, a.out_dir, a.size_mb, a.repeat)
        exp = meta["expected_client_hellos"]
        print(f"capture: {pcap.name}: {meta['bytes'] / 1e6:.1f} MB, {meta['packets']:,} packets, "
              f"{meta['repetitions']} repetitions of {meta['per_repetition']['files']} corpus files; ClientHellos "
              f"per tshark's CSVs x repetitions ~{exp.get('all', 0):,} (tls {exp.get('tls', 0):,}, quic "
              f"{exp.get('quic', 0):,}, dtls {exp.get('dtls', 0):,}; TCP/IPv4 {exp.get('tcp_ipv4', 0):,}; with a JA3 "
              f"{exp.get('with_ja3', 0):,})")
    if not a.skip_logs:
        log, log_meta = build_log(a.corpus, a.out_dir, a.log_lines)

    # name -> {"wall": [...], "peak": [...], "count": n}
    res: dict[str, dict] = {}
    notes: list[str] = []
    py_keys = sg_keys = None
    sg_protos: Counter = Counter()

    def record(name: str, wall: float, peak: float, count: int | None = None, cpu: float | None = None) -> None:
        r = res.setdefault(name, {"wall": [], "peak": [], "count": None, "cpu": []})
        r["wall"].append(wall)
        r["peak"].append(peak)
        if cpu is not None:
            r["cpu"].append(cpu)
        if count is not None:
            r["count"] = count

    def fail(name: str, c: Child) -> None:
        msg = f"{name}: {c.why()}"
        print("  FAILED", msg)
        if msg not in notes:
            notes.append(msg)

    def run_cli(what: str, inp: Path, out_pq: Path, log_name: str, jobs: str | None = None) -> Child | None:
        """One ``stormguard replay`` child (``--jobs`` when given) into ``out_pq``; None (and a note) on failure."""
        out_pq.unlink(missing_ok=True)
        c = Child([*sg_cmd, "replay", "--no-progress", *(("--jobs", jobs) if jobs else ()), str(inp), "-o",
                   str(out_pq)], work / log_name, a.timeout)
        if c.ok:
            return c
        fail(what, c)
        return None

    last_run = 0.0
    for run in range(1, a.runs + 1):
        t_run = time.perf_counter()
        if run > 1 and t_run - t_start + last_run > a.budget:
            notes.append(f"stopped after {run - 1} runs: another run (~{last_run:.0f} s) would pass --budget "
                         f"{a.budget:.0f} s")
            break
        print(f"-- run {run}/{a.runs}")
        # fixed start-up costs (interpreter + imports), part of every CLI row below
        for name, cmd in (("start-up `ja3 --help`", ja3_cmd if not a.skip_pyja3 and pcap is not None else None),
                          ("start-up `stormguard replay --help`", sg_cmd if have.get("cli") else None)):
            if cmd:
                argv_ = [*cmd, "--help"] if name.startswith("start-up `ja3") else [*cmd, "replay", "--help"]
                c = Child(argv_, work / "startup.out", a.timeout)
                if c.ok:
                    record(name, c.wall, c.peak_mb, cpu=c.cpu)
        if pcap is not None:
            if not a.skip_pyja3 and ja3_cmd:
                out = work / "pyja3.json"
                c = Child([*ja3_cmd, "-a", str(pcap)], out, a.timeout)
                if c.ok:
                    if py_keys is None:
                        py_keys = _pyja3_keys(out)
                    n = sum(py_keys.values()) if py_keys is not None else None
                    record("pyja3 `ja3 -a` (CLI)", c.wall, c.peak_mb, n, c.cpu)
                    print(f"  pyja3 ja3 -a            {c.wall:7.2f} s  peak {c.peak_mb:6.0f} MB  ClientHellos {n}")
                else:
                    fail("pyja3", c)
            if have.get("cli"):
                out_pq = work / "replay-capture.parquet"
                c = run_cli("stormguard replay (capture)", pcap, out_pq, "replay-capture.out")
                if c is not None:
                    got = _read_parquet_keys(out_pq) if sg_keys is None or run == 1 else None
                    if got is not None:
                        sg_keys, sg_protos = got
                    n = sum(sg_keys.values()) if sg_keys is not None else None
                    record("stormguard replay (CLI)", c.wall, c.peak_mb, n, c.cpu)
                    print(f"  stormguard replay pcap  {c.wall:7.2f} s  peak {c.peak_mb:6.0f} MB  ClientHellos {n}")
                c = run_cli("stormguard replay --jobs 1 (capture)", pcap, out_pq, "replay-capture-1.out", "1")
                if c is not None:
                    n = sum(sg_keys.values()) if sg_keys is not None else None
                    record("stormguard replay --jobs 1 (CLI)", c.wall, c.peak_mb, n, c.cpu)
                    print(f"  stormguard replay -j1   {c.wall:7.2f} s  peak {c.peak_mb:6.0f} MB  (one process)")
            if have.get("read_capture"):
                c, data = run_worker("capture", pcap, work, a.timeout)
                if data:
                    record("read_capture loop (API)", data["seconds"], c.peak_mb, data["client_hellos"], data["cpu"])
                    if sg_keys is None or not have.get("cli"):
                        sg_keys = Counter({tuple(k[:5]): k[5] for k in data["keys"]})
                    print(f"  read_capture loop       {data['seconds']:7.2f} s  peak {c.peak_mb:6.0f} MB  "
                          f"ClientHellos {data['client_hellos']}  records {data['records']:,}  "
                          f"stats.packets {data['stats_packets']:,}")
                    if run == 1 and data.get("skipped"):
                        print("    skipped:", ", ".join(f"{k}: {v}" for k, v in data["skipped"].items()))
                else:
                    fail("read_capture", c)
        if log is not None:
            c, data = run_worker("regex", log, work, a.timeout)
            if data:
                record("regex loop (baseline)", data["seconds"], c.peak_mb, data["lines"], data["cpu"])
                print(f"  regex baseline          {data['seconds']:7.2f} s  peak {c.peak_mb:6.0f} MB  "
                      f"matched {data['matched']:,}/{data['lines']:,}")
            else:
                fail("regex baseline", c)
            if have.get("read_log"):
                c, data = run_worker("log", log, work, a.timeout)
                if data:
                    record("read_log loop (API)", data["seconds"], c.peak_mb, data["records"], data["cpu"])
                    print(f"  read_log loop           {data['seconds']:7.2f} s  peak {c.peak_mb:6.0f} MB  "
                          f"records {data['records']:,}  stats.lines {data['stats_lines']:,}")
                    if run == 1 and data.get("skipped"):
                        print("    skipped:", ", ".join(f"{k}: {v}" for k, v in data["skipped"].items()))
                else:
                    fail("read_log", c)
            if have.get("cli"):
                out_pq = work / "replay-log.parquet"
                c = run_cli("stormguard replay (log)", log, out_pq, "replay-log.out")
                if c is not None:
                    record("stormguard replay log (CLI)", c.wall, c.peak_mb, None, c.cpu)
                    print(f"  stormguard replay log   {c.wall:7.2f} s  peak {c.peak_mb:6.0f} MB")
                c = run_cli("stormguard replay --jobs 1 (log)", log, out_pq, "replay-log-1.out", "1")
                if c is not None:
                    record("stormguard replay log --jobs 1 (CLI)", c.wall, c.peak_mb, None, c.cpu)
                    print(f"  stormguard replay log -j1 {c.wall:5.2f} s  peak {c.peak_mb:6.0f} MB  (one process)")
        last_run = time.perf_counter() - t_run

    # ---- final table
    print()
    title = "== replay bench: medians"
    if meta:
        title += f" | capture {meta['bytes'] / 1e6:.1f} MB, {meta['packets']:,} packets"
    if log_meta:
        title += f" | log {log_meta['lines']:,} lines"
    print(title + " ==")
    rw = max([24] + [len(_fmt_runs(r["wall"])) for r in res.values()])
    print(f"{'tool':36} {'median s':>9} {'best s':>7} {'runs (s)':>{rw}} {'cpu s':>6} {'pkts|lines/s':>13} "
          f"{'CH found':>9} {'CH/s':>9} {'peak MB':>8}")
    per_s: dict[str, float] = {}
    for name, r in res.items():
        m = _med(r["wall"])
        if name.startswith("start-up"):
            print(f"{name:36} {m:9.2f} {min(r['wall']):7.2f} {_fmt_runs(r['wall']):>{rw}} {_med(r['cpu']):6.2f} "
                  f"{'':13} {'':9} {'':9} {max(r['peak']):8.0f}")
            continue
        is_log = "log" in name or "regex" in name
        denom = (log_meta["lines"] if is_log else meta["packets"]) if (log_meta if is_log else meta) else 0
        per_s[name] = denom / m if m > 0 else float("nan")
        ch = r["count"] if not is_log else None
        chs = f"{ch / m:9,.0f}" if ch is not None and m > 0 else f"{'':9}"
        print(f"{name:36} {m:9.2f} {min(r['wall']):7.2f} {_fmt_runs(r['wall']):>{rw}} {_med(r['cpu']):6.2f} "
              f"{per_s[name]:13,.0f} "
              f"{(f'{ch:,}' if ch is not None else ''):>9} {chs} {max(r['peak']):8.0f}")
    print("(medians over runs; packets/s and lines/s = packets or lines in the file / median wall time; cpu s = "
          "median user+sys;\n API loops: the loop only, a fresh interpreter each run; CLI rows include start-up and "
          "writing Parquet)")

    py = res.get("pyja3 `ja3 -a` (CLI)")
    for name in ("stormguard replay (CLI)", "stormguard replay --jobs 1 (CLI)", "read_capture loop (API)"):
        r = res.get(name)
        if r is None:
            continue
        if py:
            ratio = per_s[name] / per_s["pyja3 `ja3 -a` (CLI)"]
            best = min(py["wall"]) / min(r["wall"])
            cpu = _med(py["cpu"]) / _med(r["cpu"])
            print(f"ratio {name} / pyja3 packets/s: {ratio:.2f}x of medians  (target >= {TARGET_CAPTURE_RATIO:g}x) "
                  f"{_flag(ratio >= TARGET_CAPTURE_RATIO)}   [best runs {best:.2f}x, median CPU time {cpu:.2f}x]")
        peak = max(r["peak"])
        print(f"peak RSS {name}: {peak:.0f} MB  (target < {TARGET_PEAK_MB:g} MB) {_flag(peak < TARGET_PEAK_MB)}")
    if meta and "stormguard replay (CLI)" in res and res["stormguard replay (CLI)"]["count"] is not None:
        n = res["stormguard replay (CLI)"]["count"]
        exp = meta["expected_client_hellos"]
        print(f"ClientHellos with a JA3: stormguard {n:,}, tshark x repetitions {exp.get('with_ja3', 0):,} "
              f"(of {exp.get('all', 0):,} hellos; tshark gives SSLv2-format hellos no JA3)"
              + (f", pyja3 {py['count']:,}" if py and py["count"] is not None else ""))
    if sg_protos and meta:
        exp = meta["expected_client_hellos"]
        print("records by proto (stormguard CLI): " + ", ".join(f"{k} {v:,}" for k, v in sorted(sg_protos.items()))
              + f"; tshark x repetitions: tls {exp.get('tls', 0):,}, quic {exp.get('quic', 0):,}, "
              f"dtls {exp.get('dtls', 0):,}")
    if py_keys is not None and sg_keys is not None:
        for line in coverage(py_keys, sg_keys):
            print(line)
    rl = res.get("read_log loop (API)")
    if rl:
        v = per_s["read_log loop (API)"]
        rb = res.get("regex loop (baseline)")
        base = (f"; vs regex baseline {per_s['regex loop (baseline)']:,.0f} lines/s: "
                f"{v / per_s['regex loop (baseline)']:.2f}x [median CPU time {_med(rb['cpu']) / _med(rl['cpu']):.2f}x]"
                if rb else "")
        print(f"read_log: {v:,.0f} lines/s  (target >= {TARGET_LOG_LINES_S:,.0f}) {_flag(v >= TARGET_LOG_LINES_S)}"
              f"   [best run {log_meta['lines'] / min(rl['wall']):,.0f}, by CPU time "
              f"{log_meta['lines'] / _med(rl['cpu']):,.0f} lines/s]{base}")
    for name in ("stormguard replay log (CLI)", "stormguard replay log --jobs 1 (CLI)"):
        if res.get(name):
            v = per_s[name]
            print(f"{name}: {v:,.0f} lines/s  (target >= {TARGET_LOG_LINES_S:,.0f}) {_flag(v >= TARGET_LOG_LINES_S)}")
    for name, key in (("read_capture", "read_capture"), ("read_log", "read_log"), ("stormguard replay CLI", "cli")):
        if not have.get(key):
            print(f"not measured: {name} is not available yet")
    for n_ in notes:
        print("note:", n_)

    if a.profile:
        jobs = []
        if pcap is not None and have.get("read_capture"):
            jobs.append(("read_capture over the capture", "profile-capture", pcap))
        if log is not None and have.get("read_log"):
            jobs.append(("read_log over the log", "profile-log", log))
        if log is not None and have.get("cli"):
            head = work / f"profile-{log.stem}-{PROFILE_CLI_LINES}.log"
            if not head.exists():
                with open(log, "rb") as src, open(head, "wb") as dst:
                    for i, line in enumerate(src):
                        if i >= PROFILE_CLI_LINES:
                            break
                        dst.write(line)
            jobs.append((f"`stormguard replay` (in-process CLI) over the first {PROFILE_CLI_LINES:,} log lines",
                         "profile-cli-log", head))
        for title, kind, path in jobs:
            print(f"\n== cProfile: {title} (own time; then stormguard code by cumulative time) ==")
            c, data = run_worker(kind, path, work, a.timeout * 3)
            print(f"profiled run: {data['seconds']:.2f} s\n{data['profile']}" if data else f"failed: {c.why()}")
    print(f"bench finished in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
