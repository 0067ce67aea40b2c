"""The background writer: same output as the in-process writer, and failures that say what happened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stormguard.schema import RecordWriter, read_records
from stormguard.sink import BackgroundRecordWriter, SinkError

MIXED = [{"ts": 1.0, "src_ip": "::1", "proto": "tls", "ja3": "a" * 32},
         {"ts": 2.0, "src_ip": "::1", "proto": "other", "outcome": "rst"},
         {"ts": 3.0, "src_ip": "::2", "proto": "tls", "ja3": "b" * 32},
         {"ts": 4.0, "line": 9, "user_agent": "curl/8"}] * 50
ROWS = [{"ts": float(i), "src_ip": f"127.0.0.{i % 7 + 1}", "src_port": 40000 + i, "proto": "tls",
         "ja3": f"{i:032x}", "note": None if i % 3 else "cut"} for i in range(2000)]


@pytest.mark.parametrize("rows", [ROWS, MIXED], ids=["uniform", "mixed-keys"])
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_background_output_equals_in_process_output(tmp_path: Path, suffix: str, rows: list) -> None:
    direct, background = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    with RecordWriter(direct) as w:
        w.write(rows[:70])
        w.write(rows[70:])
    with BackgroundRecordWriter(background) as bw:
        bw.write(rows[:70])
        bw.write([])
        bw.write(rows[70:])
    assert bw.rows == len(rows)
    pd.testing.assert_frame_equal(read_records(direct), read_records(background))


def test_numpy_scalars_survive_the_pipe(tmp_path: Path) -> None:
    out = tmp_path / "n.parquet"
    with BackgroundRecordWriter(out) as bw:
        bw.write([{"ts": np.float64(1.5), "src_port": np.int32(443), "src_ip": "::1"}])
    frame = read_records(out)
    assert frame.loc[0, "ts"] == 1.5 and frame.loc[0, "src_port"] == 443


def test_writer_failure_is_reported_and_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "missing-dir" / "x.parquet"  # the child cannot create its file
    with pytest.raises(SinkError, match="missing-dir"):
        with BackgroundRecordWriter(out) as bw:
            for _ in range(50):
                bw.write(ROWS)
    assert not out.exists()


def test_parser_error_aborts_without_output(tmp_path: Path) -> None:
    out = tmp_path / "x.parquet"
    with pytest.raises(RuntimeError, match="parser broke"):
        with BackgroundRecordWriter(out) as bw:
            bw.write(ROWS)
            raise RuntimeError("parser broke")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_bad_suffix_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.parquet or \.csv"):
        BackgroundRecordWriter(tmp_path / "x.json")
