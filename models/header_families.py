"""Learn the header rules of :mod:`stormguard.features.http.families` from real browser HAR files, and evaluate them.

``python data/make_header_families.py CORPUS`` runs :func:`learn_from_files` over ``CORPUS/har/*.har`` and writes
the result as :mod:`stormguard.features.http.header_family_table` (a small generated Python module, so the live
server needs no data file); ``--evaluate`` prints :func:`evaluate`'s report.

Which requests teach what (every choice is a guard against copying one file's quirks into a rule):

* the family of a request is the one its own ``User-Agent`` claims (:func:`features.http.families.claimed_family`),
  exactly as when the rules are applied;
* only **HTTP/1.x requests whose header names are not alphabetised** are used. HAR exporters rebuild some header
  lists: WebPageTest labels SPDY requests ``1.1`` and lists their names sorted after ``Host``; Browsertime's Chrome
  exports sort every list; WebPageTest writes HTTP/2 entries with garbage versions (``ori``) and a shuffled order.
  No browser sends four or more names alphabetically, so such a list (ignoring a leading ``Host``) is taken as the
  exporter's, not the browser's, and is counted as skipped;
* ``required``: non-volatile names (:data:`features.http.headers.VOLATILE_HEADERS` are request-state dependent: cookie,
  referer, origin, content-type …) present in at least :data:`PRESENCE` of the usable requests of **every** source of
  the family;
* ``before``: a pair ``(a, b)`` of non-volatile names, where in every source that sent both, ``a`` came first in at
  least :data:`AGREEMENT` of those requests, seen together at least :data:`MIN_SUPPORT` times, and in at least
  :data:`MIN_SOURCES` (two) sources. A pair whose order differs between browser versions (Chrome 44 sends ``Accept``
  before ``User-Agent``, Chrome 63 after) is therefore no rule, and neither is one only one capture showed: with a
  single Chrome file, its version's quirks would become rules that the next version breaks (leave-one-source-out
  showed exactly that before this criterion). A header one site's scripts add (``x-…``) makes no rule either.

:func:`evaluate` measures how the rules transfer: leave-one-HAR-source-out (rules learned without the held-out file,
applied to its requests), cross-family swaps (a Chrome request with a Firefox UA and vice versa), real non-browser
header lists (the project's own loopback sample: curl, Python urllib, python-requests, ``openssl s_client``) under
browser UAs, and a modern headless Chromium page load from the same sample (a browser 90+ versions newer than the
HARs); with ``--captures``, the plain-HTTP requests of the corpus' pcaps (unlabelled: listed with their verdicts).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stormguard.features.http.families import check_names, claimed_family, is_h2_or_later
from stormguard.features.http.headers import VOLATILE_HEADERS, split_header_names

__all__ = ["AGREEMENT", "MIN_SOURCES", "MIN_SUPPORT", "PRESENCE", "Request", "evaluate", "learn", "learn_from_files",
           "read_requests", "table_source"]

#: Share of a source's usable requests that must carry a name for it to be required.
PRESENCE = 0.95
#: Share of co-occurrences in every source in which ``a`` must precede ``b``.
AGREEMENT = 0.98
#: Co-occurrences (all sources) a pair needs to become a rule.
MIN_SUPPORT = 5
#: Sources (files: sites, browser versions) that must show a pair before its order is a rule.
MIN_SOURCES = 2
#: A source with fewer usable requests says nothing about the required set.
MIN_SOURCE_REQUESTS = 5
#: Shortest name list that counts as "alphabetised" (three names are sorted by chance too often).
ALPHABETISED_MIN = 4

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the learner sees it."""

    source: str
    family: str | None
    names: tuple[str, ...]  # lower case, wire order, valid header tokens only
    version: str | None
    ua: str | None

    @property
    def alphabetised(self) -> bool:
        rest = list(self.names[1:] if self.names[:1] == ("host",) else self.names)
        return len(rest) >= ALPHABETISED_MIN and rest == sorted(rest)

    @property
    def usable(self) -> bool:
        """HTTP/1.x with the browser's own order (see the module docstring)."""
        return (self.family is not None and self.version in ("HTTP/1.0", "HTTP/1.1") and not self.alphabetised)


def _request(record: Mapping[str, Any], source: str) -> Request | None:
    joined = record.get("header_names")
    if joined is None:
        return None
    names = tuple(n for n in (x.strip().lower() for x in split_header_names(str(joined))) if _TOKEN.match(n))
    ua = record.get("user_agent")
    ua = None if ua is None else str(ua)
    return Request(source, claimed_family(ua), names, record.get("http_version"), ua)


def read_requests(paths: Iterable[str | Path]) -> tuple[list[Request], dict[str, int]]:
    """Every request with recorded header names of the given files (HAR, JSON-lines logs …, read by the project's
    own readers), each named by its file; plus the reader's skip counts (bad entries are reported, not dropped
    silently)."""
    from stormguard.features.replay import read_file

    from stormguard.report import ReplayStats

    out: list[Request] = []
    stats = ReplayStats()
    for path in paths:
        path = Path(path)
        for record in read_file(path, stats):
            req = _request(record, path.name)
            if req is not None:
                out.append(req)
    return out, {str(k): int(v) for k, v in stats.skipped.items()}


def learn(requests: Sequence[Request]) -> dict[str, dict[str, Any]]:
    """Family → ``{"required", "before", "sources", "requests"}`` (see the module docstring for the criteria)."""
    by_family: dict[str, dict[str, list[Request]]] = defaultdict(lambda: defaultdict(list))
    for req in requests:
        if req.usable:
            by_family[str(req.family)][req.source].append(req)
    table: dict[str, dict[str, Any]] = {}
    for family, sources in sorted(by_family.items()):
        table[family] = {"required": _required(sources), "before": _before(sources),
                         "sources": sorted(sources), "requests": sum(len(v) for v in sources.values())}
    return table


def _stable(names: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for n in names:
        if n not in VOLATILE_HEADERS:
            seen.setdefault(n, None)
    return list(seen)


def _required(sources: Mapping[str, list[Request]]) -> tuple[str, ...]:
    common: set[str] | None = None
    for reqs in sources.values():
        if len(reqs) < MIN_SOURCE_REQUESTS:
            continue
        counts = Counter(n for r in reqs for n in set(_stable(r.names)))
        here = {n for n, c in counts.items() if c >= PRESENCE * len(reqs)}
        common = here if common is None else common & here
    return tuple(sorted(common or ()))


def _before(sources: Mapping[str, list[Request]]) -> tuple[tuple[str, str], ...]:
    per_source: dict[str, Counter[tuple[str, str]]] = {}
    for source, reqs in sources.items():
        counts: Counter[tuple[str, str]] = Counter()
        for r in reqs:
            names = _stable(r.names)
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    counts[(a, b)] += 1
        per_source[source] = counts
    pairs = {tuple(sorted(p)) for c in per_source.values() for p in c}
    rules: list[tuple[str, str]] = []
    for x, y in sorted(pairs):
        for a, b in ((x, y), (y, x)):
            total, showing, agree = 0, 0, True
            for counts in per_source.values():
                ab, ba = counts.get((a, b), 0), counts.get((b, a), 0)
                if ab + ba == 0:
                    continue
                showing += 1
                total += ab + ba
                agree &= ab >= AGREEMENT * (ab + ba)
            if agree and total >= MIN_SUPPORT and showing >= MIN_SOURCES:
                rules.append((a, b))
    return tuple(sorted(rules))


def learn_from_files(paths: Iterable[str | Path]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """:func:`learn` over the requests of ``paths`` and a summary of what was used and skipped."""
    requests, skipped = read_requests(paths)
    summary = {"requests": len(requests), "usable": sum(r.usable for r in requests),
               "no_family": sum(r.family is None for r in requests),
               "not_http1": sum(r.family is not None and r.version not in ("HTTP/1.0", "HTTP/1.1") for r in requests),
               "alphabetised": sum(r.family is not None and r.version in ("HTTP/1.0", "HTTP/1.1") and r.alphabetised
                                   for r in requests),
               "reader_skipped": skipped}
    return learn(requests), summary


def table_source(table: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any], inputs: Sequence[str]) -> str:
    """The text of the generated :mod:`stormguard.features.http.header_family_table` module."""
    lines = ['"""Header rules per browser family — GENERATED by ``python data/make_header_families.py``; do not edit.',
             "",
             "Learned by :mod:`stormguard.models.header_families` from: " + ", ".join(inputs) + ".",
             f"Requests with header names: {summary['requests']}; used: {summary['usable']}; skipped: "
             f"{summary['no_family']} without a browser UA, {summary['not_http1']} not HTTP/1.x, "
             f"{summary['alphabetised']} alphabetised by the exporter.",
             '"""', "", "from __future__ import annotations", "", "from typing import Any", "",
             "FAMILIES: dict[str, dict[str, Any]] = {"]
    for family, rules in table.items():
        lines.append(f"    {family!r}: {{")
        lines.append(f"        \"sources\": {tuple(rules['sources'])!r},")
        lines.append(f"        \"requests\": {int(rules['requests'])},")
        lines.append(f"        \"required\": {tuple(rules['required'])!r},")
        lines.append("        \"before\": (")
        for a, b in rules["before"]:
            lines.append(f"            ({a!r}, {b!r}),")
        lines.append("        ),")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- evaluation ---------------------------------------------------------------------------------------------------

def _verdicts(requests: Iterable[Request], table: Mapping[str, Mapping[str, Any]],
              family: str | None = None) -> Counter[str]:
    """Verdict counts of ``requests`` under ``table`` (each against its own claimed family, or ``family``)."""
    out: Counter[str] = Counter()
    for r in requests:
        fam = family or r.family
        out[check_names(r.names, fam, is_h2_or_later(r.version), table)[0] if fam else "unknown"] += 1
    return out


def evaluate(har_paths: Sequence[str | Path], sample_paths: Sequence[str | Path] = (),
             capture_paths: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Transfer figures of the rules (see the module docstring). Counts are of requests: ``consistent``,
    ``inconsistent``, ``unknown``. ``capture_paths``: pcaps whose plain-HTTP requests are judged too (unlabelled)."""
    har, _ = read_requests(har_paths)
    full = learn(har)
    report: dict[str, Any] = {"loso": {}, "table": {f: {"required": len(r["required"]), "before": len(r["before"])}
                                                    for f, r in full.items()}}
    other = {"chromium": "firefox", "firefox": "chromium"}
    for source in sorted({r.source for r in har if r.usable}):
        rules = learn([r for r in har if r.source != source])
        held = [r for r in har if r.source == source and r.usable]
        fam = {r.family for r in held}.pop()
        report["loso"][source] = {"family": fam, "own_ua": dict(_verdicts(held, rules)),
                                  "other_family_ua": dict(_verdicts(held, rules, other.get(str(fam))))
                                  if fam in other else {}}
    swaps: Counter[str] = Counter()
    for r in har:
        if r.usable and r.family in other:
            swaps.update(_verdicts([r], full, other[str(r.family)]))
    report["cross_family_swap"] = dict(swaps)
    if sample_paths:
        sample, _ = read_requests(sample_paths)
        scripts = {r.names: r for r in sample if r.family is None and "Chrome/" not in (r.ua or "")}
        script_lists = list(scripts.values())
        report["scripts_under_browser_ua"] = {fam: dict(_verdicts(script_lists, full, fam)) for fam in other}
        report["script_header_lists"] = sorted(",".join(n) for n in scripts)
        lying = [r for r in sample if r.family is not None]
        report["sample_browser_ua"] = dict(_verdicts(lying, full))
        chromium = [r for r in sample if r.ua and "Chrome/" in r.ua and claimed_family(r.ua) is None]
        report["headless_chromium_as_chrome"] = dict(_verdicts(chromium, full, "chromium"))
    if capture_paths:
        report["captures"] = _captures(capture_paths, full, other)
    return report


def _captures(paths: Sequence[str | Path], table: Mapping[str, Mapping[str, Any]],
              other: Mapping[str, str]) -> dict[str, Any]:
    """Plain-HTTP requests found in captures (no labels: each browser-UA claim is listed with its verdict; the
    non-browser header lists are also judged under Chrome and Firefox UAs)."""
    requests, _ = read_requests(paths)
    claims = Counter()
    for r in requests:
        if r.family is not None:
            fam = str(r.family)
            verdict, reason = check_names(r.names, fam, is_h2_or_later(r.version), table)
            claims[f"{r.source} | {(r.ua or '')[:110]} | {','.join(r.names)} -> {verdict} {reason}".strip()] += 1
    lists = {r.names for r in requests if r.family is None and len(r.names) >= 2 and "user-agent" in r.names}
    scripts = [Request("captures", None, names, "HTTP/1.1", None) for names in sorted(lists)]
    return {"requests_with_headers": len(requests), "browser_ua_claims": dict(claims),
            "non_browser_lists": len(scripts),
            "non_browser_lists_under_browser_ua": {fam: dict(_verdicts(scripts, table, fam)) for fam in other}}
