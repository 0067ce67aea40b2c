"""The README's main job, end to end on the bundled sample: replay → features → score → store → tiers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
from conftest import PROJECT_ROOT
from stormguard.features.clients.windows import client_features
from stormguard.features.replay import replay


def test_pipeline_on_the_bundled_sample(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "stormguard", "pipeline", "--out-dir", str(tmp_path)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for name in ("records.parquet", "features.parquet", "scores.parquet"):
        assert (tmp_path / name).stat().st_size > 0
    out = proc.stdout
    assert "model scores loaded into memory://" in out and "tiers:" in out
    tiers = {line.split()[0]: line.split()[2] for line in out.splitlines() if line.startswith(("127.", "::1"))
             and len(line.split()) >= 3 and line.split()[2] in {"trusted", "neutral", "low", "blocked"}}
    assert tiers["127.0.0.5"] == "blocked"          # the 30-connection storm client
    assert tiers["127.0.0.1"] in {"neutral", "trusted"}  # headless Chromium, two page loads
    assert "files: 1 read, 0 refused" in proc.stderr


def test_a_hello_retry_connection_counts_once() -> None:
    records = replay([PROJECT_ROOT / "data" / "sample.pcap"], show_progress=False)
    hrr = records[(records["src_ip"] == "127.0.0.4") & (records["ch_index"] == 1)]
    assert len(hrr) == 1 and hrr["conn_row"].iloc[0] == 1
    same_conn = records[(records["src_ip"] == "127.0.0.4") & (records["src_port"] == hrr["src_port"].iloc[0])]
    assert sorted(same_conn["conn_row"].tolist()) == [0, 1]
    features = client_features(records, window=None).set_index("key")
    hellos = int(((records["src_ip"] == "127.0.0.4") & records["ja3"].notna()).sum())
    assert features.loc["127.0.0.4", "n_conn"] == hellos - 1
    assert pd.notna(features.loc["127.0.0.5", "reconnects_10s"])
