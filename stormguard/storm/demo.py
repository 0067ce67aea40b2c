"""``stormguard demo`` — the closed learning loop, end to end, on this machine.

1. ``stormguard serve`` (memory store unless ``--store``; ``--conn-log``) takes a storm of the default profile's
   labelled classes (``stormguard storm``), which also writes the ground truth (one label per source address);
2. ``stormguard replay`` reads the server's own connection log back as records;
3. ``stormguard train --labels`` fits a model on them, ``stormguard evaluate`` checks it against the labels;
4. the server starts again with that model (``--model``) and takes the same storm again.

It prints both convergence tables and a before/after table per class (share of attempts refused, second of the
first refusal, well-behaved events lost), and leaves everything in the output folder: the two storm reports with
their plots, the labels, both connection logs, the records, the model and its evaluation.

Every step is a ``stormguard`` command in a child process (what a user would run), so this module imports nothing
but the storm lab.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stormguard(*args: str, log: Path) -> None:
    with log.open("a") as fh:
        fh.write(f"$ stormguard {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.run([sys.executable, "-m", "stormguard", *args], stdout=fh, stderr=subprocess.STDOUT,
                              timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"stormguard {args[0]} failed (exit {proc.returncode}); see {log}")


@contextlib.contextmanager
def served(conn_log: Path, log: Path, token: str, *, model: Path | None, store: str | None) -> Iterator[str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "stormguard", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--conn-log", str(conn_log), "--log-level", "warning"]
    if model is not None:
        cmd += ["--model", str(model)]
    if store:
        cmd += ["--store", store]
    env = {**os.environ, "STORMGUARD_PUBLISH_TOKEN": token}
    with log.open("a") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"stormguard serve exited with {proc.returncode}; see {log}")
            try:
                import urllib.request

                with urllib.request.urlopen(url + "/healthz", timeout=1.0):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"stormguard serve did not start in 120 s; see {log}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _first_refusal(report: dict[str, Any], name: str) -> int | None:
    """The second of a class's first refusal or eviction."""
    for row in report["per_second"]:
        own = row["classes"].get(name, {})
        if own.get("refused") or own.get("evicted"):
            return int(row["t"])
    return None


def before_after(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Per class: the share of attempts limited (refused, or evicted once open: slow readers) before and after
    learning, and when the first came."""
    lines = [f"{'class':<14}{'limited before':>16}{'limited after':>15}{'first before':>14}{'first after':>13}"]
    for name, b in before["classes"].items():
        a = after["classes"].get(name, {})

        def share(c: dict[str, Any]) -> str:
            limited = c.get("refused", 0) + c.get("evicted", 0)
            return f"{100 * limited / c['attempts']:.1f}%" if c.get("attempts") else "-"

        fb, fa = _first_refusal(before, name), _first_refusal(after, name)
        lines.append(f"{name:<14}{share(b):>16}{share(a):>15}{'-' if fb is None else f'{fb} s':>14}"
                     f"{'-' if fa is None else f'{fa} s':>13}")
    wb_b, wb_a = before["summary"]["well_behaved"], after["summary"]["well_behaved"]
    lines.append(f"well-behaved events lost: before {wb_b['events_lost']} of {wb_b['events_published']}, "
                 f"after {wb_a['events_lost']} of {wb_a['events_published']}")
    lines.append("limited = refused, or evicted once open (slow readers)")
    return "\n".join(lines)


def run_demo(out: Path, *, duration: float, scale: float, store: str | None, progress: bool) -> dict[str, Any]:
    # the generator's machinery only when it runs: `stormguard --help` and every other subcommand build this parser
    from stormguard.storm.profile import load_profile
    from stormguard.storm.record import convergence_table, plot
    from stormguard.storm.runner import run_storm, save_report, write_labels

    out.mkdir(parents=True, exist_ok=True)
    log = out / "demo.log"
    log.write_text("")
    profile = load_profile()
    if scale != 1.0:
        profile = profile.scaled(scale)
    profile.duration = duration
    token = secrets.token_hex(12)
    labels = out / "labels.csv"
    write_labels(profile, labels)
    say = print
    reports = {}
    learned = out / "model.skops"
    for round_, model in (("before", None), ("after", learned)):
        conn = out / f"conn-{round_}.jsonl"
        conn.unlink(missing_ok=True)
        say(f"== storm {round_} learning: stormguard serve{'' if model is None else ' --model ' + str(model)}",
            flush=True)
        with served(conn, log, token, model=model, store=store) as url:
            report = run_storm(url, profile, token=token, progress=progress)
        save_report(report, out / f"storm-{round_}.json")
        plot(report, str(out / f"storm-{round_}.png"))
        reports[round_] = report
        say(convergence_table(report, label=f"stormguard ({round_})"), flush=True)
        if model is None:
            say("== learning from the server's own connection log", flush=True)
            _stormguard("replay", str(conn), "-o", str(out / "records.parquet"), "--no-progress", log=log)
            _stormguard("train", str(out / "records.parquet"), "--labels", str(labels), "-o", str(learned), log=log)
            _stormguard("evaluate", str(learned), str(out / "records.parquet"), "--labels", str(labels), "--json",
                        str(out / "evaluate.json"), log=log)
            metrics = json.loads((out / "evaluate.json").read_text())
            auc = metrics.get("roc_auc", metrics.get("auc"))
            say(f"model: {learned} (evaluated against the storm's labels: ROC-AUC {auc}, in-sample)", flush=True)
    table = before_after(reports["before"], reports["after"])
    say("== before / after learning", flush=True)
    say(table, flush=True)
    (out / "before-after.txt").write_text(table + "\n")
    return {"before": reports["before"], "after": reports["after"], "table": table}


def register(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo", help="the closed loop end to end: storm -> own log -> train -> evaluate -> serve the model -> storm",
        description="Run the whole product on this machine: a storm of labelled classes against stormguard serve "
                    "(with its connection log), replay of that log, training with the storm's labels, evaluation, "
                    "then the same storm against the server running the new model. Prints the convergence tables "
                    "and a before/after table per class; leaves reports, plots, labels, logs and the model in "
                    "--out-dir.")
    p.add_argument("--out-dir", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of each storm (default 20)")
    p.add_argument("--scale", type=float, default=0.5, help="client counts of the default profile x F (default 0.5)")
    p.add_argument("--store", metavar="URL", help="reputation store (default memory://; redis://... to share it)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=lambda args: run_demo(Path(args.out_dir), duration=args.duration, scale=args.scale,
                                              store=args.store, progress=not args.quiet) and 0)
    return p
