"""What a storm saw: per class and per one-second bucket, merged across generator processes, and the report.

Definitions (the report's keys):

* an *attempt* is one request; a *success* opened a stream (SSE classes) or got an answer that is not a refusal
  (scanners, publishers; a 404 counts: the request got through); *refused* counts the server's refusals (pace, stop/204, 429, 503, 403); *errors* are
  everything else (connect errors, timeouts, resets, 5xx).
* *evicted* counts successes whose open stream the server ended itself without a final ``retry:`` — a reset, or
  the ``slow_reader`` comment — rather than the client closing it (slow readers; an eviction is still a success:
  the stream was opened). ``summary.abusive_refused.<class>`` is true when the class was refused or evicted.
* *reconnect delay* is the time a client waited between the end of a session and its next attempt.
* well-behaved (``eventsource``) clients check the publisher's sequence numbers: *lost* are numbers published
  but never received, *duplicated* are numbers received more than once.
* a series has *converged* at the first second after which it stays within 5% of its final value (the mean of
  its last three buckets) for the rest of the run, at least 10 s; ``None`` when it never does. The well-behaved
  success rate carries its last value over seconds without attempts (clients holding their streams).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

REFUSED = ("pace", "stop", "429", "503", "403")
#: Outcomes that are an answer from the service, not a refusal by a defence layer (a scanner's 404 got through).
ANSWERED = (None, "404", "4xx")
#: The seed's convergence table (DESIGN: 100k clients, backoff 1 → 8 s): start → end, and seconds to converge.
SEED = {"reconnect_delay": (3.2, 1.1, 42.0), "success_rate": (0.764, 0.9998, 58.0), "rss": (1.8e9, 420e6, 65.0)}


@dataclass
class Bucket:
    attempts: int = 0
    successes: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    delay_sum: float = 0.0
    delays: int = 0
    events: int = 0
    evicted: int = 0


class Recorder:
    """Counters of one generator process (merged by the parent with :meth:`merge`)."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.buckets: dict[str, dict[int, Bucket]] = defaultdict(dict)
        self.numbers: dict[str, list[list[int]]] = defaultdict(list)   # eventsource classes: numbers per client
        self.published = 0
        self.stopped: dict[str, int] = defaultdict(int)                 # clients told to stop (204)

    def _bucket(self, cls: str, t: float) -> Bucket:
        i = max(0, int(t - self.start))
        b = self.buckets[cls].get(i)
        if b is None:
            b = self.buckets[cls][i] = Bucket()
        return b

    def attempt(self, cls: str, t: float, outcome: str | None, opened: bool, delay: float | None, *,
                evicted: bool = False) -> None:
        b = self._bucket(cls, t)
        b.attempts += 1
        if evicted:
            b.evicted += 1
        if outcome in REFUSED:
            b.refused[outcome] = b.refused.get(outcome, 0) + 1
        elif outcome in ANSWERED or opened:
            b.successes += 1
        else:
            b.errors += 1
        if delay is not None:
            b.delay_sum += delay
            b.delays += 1

    def events(self, cls: str, t: float, n: int) -> None:
        if n:
            self._bucket(cls, t).events += n

    def state(self) -> dict[str, Any]:
        return {"buckets": {c: {i: b.__dict__ for i, b in bs.items()} for c, bs in self.buckets.items()},
                "numbers": dict(self.numbers), "published": self.published, "stopped": dict(self.stopped)}

    def merge(self, state: dict[str, Any]) -> None:
        for cls, bs in state["buckets"].items():
            for i, raw in bs.items():
                b = self.buckets[cls].setdefault(int(i), Bucket())
                b.attempts += raw["attempts"]
                b.successes += raw["successes"]
                b.errors += raw["errors"]
                b.delay_sum += raw["delay_sum"]
                b.delays += raw["delays"]
                b.events += raw["events"]
                b.evicted += raw.get("evicted", 0)
                for k, v in raw["refused"].items():
                    b.refused[k] = b.refused.get(k, 0) + v
        for cls, lists in state["numbers"].items():
            self.numbers[cls].extend(lists)
        self.published += state["published"]
        for cls, n in state["stopped"].items():
            self.stopped[cls] += n


def converged_at(series: list[tuple[int, float]], tolerance: float = 0.05, hold: int = 10) -> float | None:
    """First second after which ``series`` stays within ``tolerance`` of its final value (see module docs)."""
    points = [(t, v) for t, v in series if v is not None and not math.isnan(v)]
    if len(points) < 3:
        return None
    final = sum(v for _, v in points[-3:]) / 3
    band = abs(final) * tolerance
    start = None
    for t, v in points:
        if abs(v - final) <= band:
            if start is None:
                start = t
        else:
            start = None
    if start is None or points[-1][0] - start < hold:
        return None
    return float(start)


def check_numbers(numbers: list[int], published: int) -> tuple[int, int, int]:
    """(delivered, lost, duplicated) for one well-behaved client that was there before publishing began."""
    seen: set[int] = set()
    dups = 0
    for n in numbers:
        if n in seen:
            dups += 1
        seen.add(n)
    lost = sum(1 for n in range(1, published + 1) if n not in seen)
    return len(numbers), lost, dups


def build_report(rec: Recorder, profile: Any, *, target: str, duration: float, server: dict[int, dict[str, float]],
                 clients: dict[str, int], addresses: dict[str, int]) -> dict[str, Any]:
    """The JSON report (see the module docstring for every definition)."""
    classes = {c.name: c for c in profile.classes}
    seconds = int(math.ceil(duration + profile.drain)) + 1
    out_classes: dict[str, Any] = {}
    per_second: list[dict[str, Any]] = []
    for t in range(seconds):
        row: dict[str, Any] = {"t": t, "classes": {}}
        row.update(server.get(t, {}))
        per_second.append(row)
    for name, spec in classes.items():
        tot = Bucket()
        for t, b in sorted(rec.buckets.get(name, {}).items()):
            for k in ("attempts", "successes", "errors", "delay_sum", "delays", "events", "evicted"):
                setattr(tot, k, getattr(tot, k) + getattr(b, k))
            for k, v in b.refused.items():
                tot.refused[k] = tot.refused.get(k, 0) + v
            if t < seconds:
                per_second[t]["classes"][name] = {
                    "attempts": b.attempts, "successes": b.successes, "refused": sum(b.refused.values()),
                    "refused_by": dict(b.refused), "errors": b.errors, "events": b.events, "evicted": b.evicted,
                    "mean_reconnect_delay_s": round(b.delay_sum / b.delays, 3) if b.delays else None}
        out_classes[name] = {
            "behaviour": spec.behaviour, "abusive": spec.abusive, "clients": clients.get(name, 0),
            "addresses": addresses.get(name, 0), "attempts": tot.attempts, "successes": tot.successes,
            "refused": sum(tot.refused.values()), "refused_by": dict(sorted(tot.refused.items())),
            "errors": tot.errors, "evicted": tot.evicted, "events": tot.events,
            "stopped_clients": rec.stopped.get(name, 0),
            "mean_reconnect_delay_s": round(tot.delay_sum / tot.delays, 3) if tot.delays else None}
    # well-behaved: every eventsource class together
    wb = [n for n, s in classes.items() if s.behaviour == "eventsource"]
    delivered = lost = dups = 0
    for name in wb:
        for numbers in rec.numbers.get(name, []):
            d, lo, du = check_numbers(numbers, rec.published)
            delivered, lost, dups = delivered + d, lost + lo, dups + du
    # series for convergence: reconnect delay over every client, success rate of well-behaved attempts, RSS
    delay_series, success_series, rss_series = [], [], []
    for row in per_second:
        t = row["t"]
        cls = row["classes"]
        ds = sum((cls[c]["mean_reconnect_delay_s"] or 0) * 1 for c in cls if cls[c]["mean_reconnect_delay_s"])
        dn = sum(1 for c in cls if cls[c]["mean_reconnect_delay_s"])
        if dn:
            delay_series.append((t, ds / dn))
        att = sum(cls[c]["attempts"] for c in wb if c in cls)
        if att:
            success_series.append((t, sum(cls[c]["successes"] for c in wb if c in cls) / att))
        elif success_series and t <= duration:
            # well-behaved clients hold their streams: a second without attempts keeps the last rate
            success_series.append((t, success_series[-1][1]))
        if row.get("rss"):
            rss_series.append((t, row["rss"]))
    conv = {"reconnect_delay": converged_at(delay_series), "success_rate": converged_at(success_series),
            "rss": converged_at(rss_series)}
    after = conv["success_rate"] or 0.0
    att = suc = 0
    for row in per_second:
        if row["t"] >= after:
            att += sum(row["classes"][c]["attempts"] for c in wb if c in row["classes"])
            suc += sum(row["classes"][c]["successes"] for c in wb if c in row["classes"])

    def ends(series: list[tuple[int, float]]) -> list[float | None]:
        return [series[0][1] if series else None, series[-1][1] if series else None]

    summary = {
        "well_behaved": {"classes": wb, "clients": sum(clients.get(n, 0) for n in wb),
                         "events_published": rec.published, "events_delivered": delivered, "events_lost": lost,
                         "events_duplicated": dups,
                         "success_rate_after_convergence": round(suc / att, 6) if att else None},
        "converged_s": conv,
        "start_end": {"reconnect_delay": ends(delay_series), "success_rate": ends(success_series),
                      "rss": ends(rss_series)},
        "abusive_refused": {n: out_classes[n]["refused"] + out_classes[n]["evicted"] > 0
                            for n, s in classes.items() if s.abusive},
        "seed": {k: {"start": v[0], "end": v[1], "converged_s": v[2]} for k, v in SEED.items()},
    }
    return {"target": target, "duration_s": duration, "classes": out_classes, "summary": summary,
            "per_second": per_second}


def convergence_table(report: dict[str, Any], label: str = "stormguard") -> str:
    """The seed's table and this run's, side by side."""
    s = report["summary"]
    rows = [("reconnect delay (s)", "reconnect_delay", lambda v: f"{v:.2f}"),
            ("success rate", "success_rate", lambda v: f"{100 * v:.2f}%"),
            ("server RSS", "rss", lambda v: f"{v / 1e6:.0f} MB")]
    lines = [f"{'metric':<22}{'seed (100k clients)':<34}{label}"]
    for title, key, fmt in rows:
        seed = s["seed"][key]
        start, end = s["start_end"][key]
        conv = s["converged_s"][key]
        ours = (f"{fmt(start)} -> {fmt(end)}" if start is not None and end is not None else "n/a")
        ours += f", converged at {conv:.0f} s" if conv is not None else ", not converged"
        lines.append(f"{title:<22}{fmt(seed['start']) + ' -> ' + fmt(seed['end'])}, within {seed['converged_s']:.0f} s"
                     .ljust(56) + ours)
    wb = s["well_behaved"]
    rate = wb["success_rate_after_convergence"]
    after = "n/a" if rate is None else f"{100 * rate:.2f}%"
    lines.append(f"well-behaved: {wb['clients']} clients, {wb['events_published']} events published, "
                 f"{wb['events_lost']} lost, {wb['events_duplicated']} duplicated, success after convergence {after}")
    for name, c in report["classes"].items():
        lines.append(f"  {name:<14} clients {c['clients']:>6}  attempts {c['attempts']:>7}  ok {c['successes']:>7}  "
                     f"refused {c['refused']:>7} {json.dumps(c['refused_by'])}"
                     + (f"  evicted {c['evicted']}" if c.get("evicted") else ""))
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str) -> bool:
    """A PNG of the three convergence curves; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = report["per_second"]
    wb = report["summary"]["well_behaved"]["classes"]
    t = [r["t"] for r in rows]
    delay = []
    success = []
    for r in rows:
        ds = [c["mean_reconnect_delay_s"] for c in r["classes"].values() if c["mean_reconnect_delay_s"]]
        delay.append(sum(ds) / len(ds) if ds else float("nan"))
        att = sum(r["classes"][c]["attempts"] for c in wb if c in r["classes"])
        suc = sum(r["classes"][c]["successes"] for c in wb if c in r["classes"])
        success.append(100 * suc / att if att else float("nan"))
    rss = [r.get("rss", float("nan")) / 1e6 for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    for ax, ys, label in zip(axes, (delay, success, rss),
                             ("mean reconnect delay (s)", "well-behaved success (%)", "server RSS (MB)"), strict=True):
        ax.plot(t, ys)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds")
    fig.suptitle(f"stormguard storm against {report['target']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
