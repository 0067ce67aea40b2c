"""`stormguard replay` as a user runs it: refusals are explained, the summary counts, outputs are complete."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pandas as pd
from stormguard.features.sniff import sniff

from stormguard.schema import read_records


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stormguard", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_non_input_files_are_refused_with_reason(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello, this is not a log\nnor a capture\n")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "access.log.gz").write_bytes(gzip.compress(b'1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /'))
    (tmp_path / "empty.pcap").write_bytes(b"")
    out = tmp_path / "out.csv"
    proc = run("replay", str(tmp_path), "-o", str(out))
    assert proc.returncode == 2, proc.stderr  # nothing readable
    err = proc.stderr
    assert "notes.txt: refused: neither a pcap/pcapng capture nor an access log" in err
    assert "blob.bin: refused" in err
    assert "access.log.gz: refused: gzip-compressed" in err
    assert "empty.pcap: refused: empty file" in err
    assert "files: 0 read, 4 refused" in err
    assert "not a capture or log" in err  # the skip reason is counted in the summary
    assert not out.exists()  # no empty table that could pass for a result


def test_missing_input_and_bad_output_suffix(tmp_path: Path) -> None:
    proc = run("replay", str(tmp_path / "nope.pcap"), "-o", str(tmp_path / "o.parquet"))
    assert proc.returncode == 2
    assert "nope.pcap: no such file or folder" in proc.stderr
    proc = run("replay", str(tmp_path), "-o", str(tmp_path / "o.xlsx"))
    assert proc.returncode != 0 and "must end in .parquet or .csv" in proc.stderr


def test_sniff_by_content_not_name(tmp_path: Path) -> None:
    cap = tmp_path / "looks-like.log"
    cap.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x02\x00\x04\x00" + bytes(16))
    log = tmp_path / "capture.pcap"
    log.write_text('10.0.0.1 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 12 "-" "curl/8.0"\n')
    jsonl = tmp_path / "a.txt"
    jsonl.write_text('{"remote_addr": "10.0.0.1", "time": 1}\n')
    assert sniff(cap) == "pcap"
    assert sniff(log) == "log"
    assert sniff(jsonl) == "jsonl"
    blanked = tmp_path / "sessions.txt"  # IP blanked, as in the Iliou dataset
    blanked.write_text('- - [27/Oct/2019:10:19:55 +0000] "GET / HTTP/1.0" 200 2045 "-" - "-"\n')
    assert sniff(blanked) == "log"


def test_csv_and_parquet_round_trip(tmp_path: Path) -> None:
    from stormguard.schema import records_frame, write_records

    rows = [{"ts": 1.5, "src_ip": "127.0.0.2", "src_port": 5000, "proto": "tls", "ja3": "ab" * 16,
             "header_names": "Host,User-Agent", "status": 200},
            {"ts": 2.0, "src_ip": "::1", "proto": "http", "user_agent": 'a "quoted", comma UA'}]
    frame = records_frame(rows)
    for name in ("r.csv", "r.parquet"):
        write_records(frame, tmp_path / name)
        back = read_records(tmp_path / name)
        pd.testing.assert_frame_equal(back, frame, check_dtype=True)


def test_records_table_tolerates_wrong_python_types_and_rejects_unknown_fields() -> None:
    import pytest

    from stormguard.schema import records_table

    table = records_table([{"ts": 1, "src_port": "443", "status": 200.0}, {"ts": 2.5, "src_ip": "::1"}])
    assert table.column("src_port").to_pylist() == [443, None]
    assert table.column("ts").to_pylist() == [1.0, 2.5]
    with pytest.raises(ValueError, match="unknown record field"):
        records_table([{"ts": 1.0, "colour": "blue"}])


def test_records_table_coerces_odd_values_per_value() -> None:
    import numpy as np

    from stormguard.schema import records_table

    table = records_table([{"ts": np.float64(2.0), "src_port": "x", "status": "abc", "frame": 2**70,
                            "user_agent": 42, "ch_index": np.int64(1)}])
    row = table.to_pylist()[0]
    assert row["ts"] == 2.0 and row["src_port"] is None and row["status"] is None and row["frame"] is None
    assert row["user_agent"] == "42" and row["ch_index"] == 1
