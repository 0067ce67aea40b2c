"""pyja3 (salesforce's reference Python JA3, on dpkt) as a peer: every JA3 it finds, read_capture finds too.

pyja3 reads only classic pcap, assumes Ethernet, looks at single TCP segments (no reassembly) and with
``any_port=True`` at every port. Files it cannot read (pcapng, ...) are skipped, as are those where it raises.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from stormguard.features.capture.reader import read_capture

from stormguard.report import ReplayStats

pytestmark = pytest.mark.corpus

dpkt = pytest.importorskip("dpkt")
pyja3 = pytest.importorskip("ja3.ja3")


def _pyja3_hashes(path: Path) -> set[str] | None:
    try:
        with open(path, "rb") as fh:
            results = pyja3.process_pcap(dpkt.pcap.Reader(fh), any_port=True)
    except Exception:  # pcapng, link types dpkt's pcap reader refuses, damaged files
        return None
    return {r["ja3_digest"] for r in results}


def test_every_pyja3_hash_is_found(corpus: Path) -> None:
    captures = sorted(p for p in (corpus / "pcap").glob("*/*") if p.is_file())
    assert captures
    compared = hashes = 0
    missing: dict[str, set[str]] = {}
    for path in captures:
        theirs = _pyja3_hashes(path)
        if theirs is None:
            continue
        compared += 1
        ours = {r.get("ja3") for r in read_capture(path, ReplayStats())}
        hashes += len(theirs)
        if theirs - ours:
            missing[path.name] = theirs - ours
    assert compared >= 50, f"pyja3 could read only {compared} captures"
    assert hashes >= 30
    assert not missing, f"JA3 hashes pyja3 found and read_capture did not: {missing}"
