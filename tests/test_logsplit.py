"""Large logs read by several processes: byte ranges on line boundaries, and exactly the records, counts and
located problems (with absolute line numbers) that one process reading the file gives."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stormguard.features.http.headers import finish_row
from stormguard.features.logs import split as logsplit
from stormguard.features.logs.lines import line_spans
from stormguard.features.logs.reader import detect_format, read_log
from stormguard.features.logs.split import read_log_parts
from stormguard.features.replay import replay, replay_to_file

from stormguard.report import ReplayStats
from stormguard.schema import ColumnBatch, read_records, records_table
from stormguard.sink import BackgroundRecordWriter

UA = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"


def combined_lines(n: int) -> list[str]:
    """Good lines with every few hundred a damaged one: cut user agent, garbage, an unreadable time, a blank
    line, a non-HTTP request, escapes."""
    out = []
    for i in range(n):
        ip = f"10.{i % 7}.{i % 13}.{i % 251}"
        t = f"{10 + i % 18:02d}/Oct/2000:13:{i % 60:02d}:{(i * 7) % 60:02d} -0700"
        line = f'{ip} - - [{t}] "GET /p/{i}?q={i % 5} HTTP/1.1" {200 + i % 3} {i * 3} "-" "{UA} {i % 9}"'
        if i % 397 == 5:
            line = line[: line.rindex('"') - 10]  # user agent cut
        elif i % 499 == 7:
            line = "this is not a log line at all"
        elif i % 601 == 9:
            line = line.replace("Oct/2000", "Foo/2000")
        elif i % 353 == 11:
            line = ""
        elif i % 211 == 13:
            line = f'{ip} - - [{t}] "\\x16\\x03\\x01" 400 0 "-" "-"'
        elif i % 307 == 17:
            line = f'{ip} - - [{t}] "GET /q\\"x HTTP/1.1" 200 5 "-" "say \\"hi\\""'
        out.append(line)
    return out


def write_log(path: Path, lines: list[str], newline: str = "\n", bom: bool = False) -> Path:
    data = newline.join(lines) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8"))
    return path


def sequential(path: Path, fmt: str = "auto") -> tuple[pa.Table, ReplayStats]:
    stats = ReplayStats()
    rows = [finish_row(r) for r in read_log(path, stats, fmt=fmt)]
    return records_table(rows), stats


def split(path: Path, jobs: int = 2, span: int = 4096, spill: Path | None = None) -> tuple[pa.Table, ReplayStats]:
    stats = ReplayStats()
    fmt = detect_format(path)
    assert fmt is not None
    parts = list(read_log_parts(path, stats, fmt=fmt, jobs=jobs, span_bytes=span, spill_dir=spill))
    tables = [p.table() for p in parts]
    return pa.concat_tables(tables), stats


def problems(stats: ReplayStats) -> list[tuple]:
    return [(p.file, p.line, p.field, p.offset, p.message) for p in stats.problems]


def assert_same(a: tuple[pa.Table, ReplayStats], b: tuple[pa.Table, ReplayStats]) -> None:
    (ta, sa), (tb, sb) = a, b
    assert ta.num_rows == tb.num_rows
    pd.testing.assert_frame_equal(ta.to_pandas(), tb.to_pandas())
    assert (sa.lines, sa.http_requests, dict(sa.skipped)) == (sb.lines, sb.http_requests, dict(sb.skipped))
    assert problems(sa) == problems(sb)


@pytest.mark.parametrize("newline,bom", [("\n", False), ("\r\n", True)], ids=["lf", "crlf-bom"])
def test_combined_split_equals_one_process(tmp_path: Path, newline: str, bom: bool) -> None:
    path = write_log(tmp_path / "access.log", combined_lines(3000), newline, bom)
    one = sequential(path)
    assert one[1].problems and one[1].skipped  # the damage is there to be merged
    assert_same(one, split(path))
    assert_same(one, split(path, jobs=3, span=777))


def test_common_and_jsonl_split_equal_one_process(tmp_path: Path) -> None:
    common = [ln.rsplit(' "-" "', 1)[0] if ln.count('"') >= 6 else ln for ln in combined_lines(1500)]
    path = write_log(tmp_path / "common.log", common)
    assert detect_format(path) == "common"
    assert_same(sequential(path), split(path, span=2048))
    lines = []
    for i in range(1500):
        rec = {"ts": 1_700_000_000 + i, "client": f"10.0.0.{i % 200}", "ua": UA, "status": 200, "path": f"/{i}"}
        lines.append("{broken json" if i % 333 == 3 else json.dumps(rec))
    jpath = write_log(tmp_path / "access.jsonl", lines)
    assert_same(sequential(jpath), split(jpath, span=3000))


def test_spill_files_are_removed_as_they_are_read(tmp_path: Path) -> None:
    path = write_log(tmp_path / "access.log", combined_lines(2000))
    spill = tmp_path / "spill"
    spill.mkdir()
    stats = ReplayStats()
    total = 0
    for part in read_log_parts(path, stats, fmt="combined", jobs=2, span_bytes=8192, spill_dir=spill):
        assert part.spill is not None and Path(part.spill).parent == spill and part.ipc is None
        total += part.table().num_rows
        assert not Path(part.spill).exists()
    assert total == sequential(path)[0].num_rows
    assert list(spill.iterdir()) == []


def test_replay_to_file_with_workers_equals_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logsplit, "MIN_BYTES", 1)
    monkeypatch.setattr(logsplit, "SPAN_BYTES", 5000)
    log = write_log(tmp_path / "access.log", combined_lines(2500))
    small = write_log(tmp_path / "other.log", combined_lines(30))
    outs = {}
    for jobs in (1, 2):
        for background in (False, True):
            stats = ReplayStats()
            out = tmp_path / f"out-{jobs}-{background}.parquet"
            n = replay_to_file([log, small], out, stats, jobs=jobs, background=background, show_progress=False)
            assert n == stats.records
            outs[jobs, background] = (read_records(out), stats.summary(), problems(stats))
    first = outs[1, False]
    for key, got in outs.items():
        pd.testing.assert_frame_equal(first[0], got[0], obj=str(key))
        assert got[1:] == first[1:], key
    frame = replay([log], ReplayStats(), jobs=2)
    assert len(frame) == len(first[0][first[0]["source"] == "access.log"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400).map(lambda b: b.replace(b"\x00", b"\n")), size=st.integers(1, 64))
def test_line_spans_cover_the_file_on_line_boundaries(tmp_path: Path, data: bytes, size: int) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(data)
    spans = line_spans(path, size)
    if not data:
        assert spans == []
        return
    assert [s for s, _ in spans] == [0] + [e for _, e in spans[:-1]]
    assert spans[-1][1] == len(data) and all(s < e for s, e in spans)
    for _, end in spans[:-1]:
        assert data[end - 1:end] == b"\n"


def test_column_batch_rows_and_table_agree() -> None:
    batch = ColumnBatch(("ts", "line", "note"), {"source": "a.log", "proto": "http"}, sparse=("note",))
    batch.columns["ts"].extend([1.0, 2.0])
    batch.columns["line"].extend([1, 2])
    batch.columns["note"].extend([None, "cut"])
    batch.add_row({"ts": 3.0, "line": 3, "source": "b.log", "session": "s1"})  # a constant differs, a new column
    rows = batch.rows()
    assert rows[0] == {"ts": 1.0, "line": 1, "source": "a.log", "proto": "http", "session": None}
    assert rows[1]["note"] == "cut" and "note" not in rows[2]
    assert rows[2]["source"] == "b.log" and rows[2]["session"] == "s1" and rows[2]["proto"] == "http"
    assert batch.table().equals(records_table(rows))


def test_background_writer_takes_columns_and_parts(tmp_path: Path) -> None:
    path = write_log(tmp_path / "access.log", combined_lines(600))
    from stormguard.features.logs.reader import read_log_chunks

    items = list(read_log_chunks(path, ReplayStats()))
    assert items and all(isinstance(i, ColumnBatch) for i in items)
    parts = list(read_log_parts(path, ReplayStats(), fmt="combined", jobs=2, span_bytes=9000))
    with BackgroundRecordWriter(tmp_path / "a.parquet") as w:
        for item in items:
            w.write_columns(item)
    with BackgroundRecordWriter(tmp_path / "b.parquet") as w:
        for part in parts:
            w.write_part(part)
    a, b = read_records(tmp_path / "a.parquet"), read_records(tmp_path / "b.parquet")
    assert len(a) == sequential(path)[0].num_rows
    pd.testing.assert_frame_equal(a, b)


def test_unwritable_spill_folder_falls_back_to_the_pipe(tmp_path: Path) -> None:
    path = write_log(tmp_path / "access.log", combined_lines(1200))
    stats = ReplayStats()
    parts = list(read_log_parts(path, stats, fmt="combined", jobs=2, span_bytes=8192,
                                spill_dir=tmp_path / "no-such-folder"))
    assert parts and all(p.spill is None and p.ipc for p in parts)
    assert_same(sequential(path), (pa.concat_tables([p.table() for p in parts]), stats))


_ROW = st.fixed_dictionaries(
    {"ts": st.floats(0, 1e9), "line": st.integers(1, 10**6)},
    optional={"note": st.none() | st.text(max_size=5), "source": st.sampled_from(["a.log", "b.log"]),
              "proto": st.sampled_from(["http", "tls"]), "session": st.none() | st.text(max_size=4),
              "status": st.none() | st.integers(100, 599)})


@settings(max_examples=80, deadline=None)
@given(plan=st.lists(st.one_of(st.tuples(st.just("fast"), st.floats(0, 1e9), st.integers(1, 10**6)),
                               st.tuples(st.just("row"), _ROW)), max_size=30))
def test_column_batch_equals_the_rows_it_was_given(plan: list[tuple]) -> None:
    """Fast appends (the reader's hot loop, padding any column a row added) mixed with add_row in any order: the
    batch's rows and table are exactly the rows given, constants included."""
    consts = {"source": "a.log", "proto": "http"}
    batch = ColumnBatch(("ts", "line", "note"), consts, sparse=("note",))
    expected: list[dict] = []
    for step in plan:
        if step[0] == "fast":
            _, ts, line = step
            batch.columns["ts"].append(ts)
            batch.columns["line"].append(line)
            batch.columns["note"].append(None)
            for name, values in batch.columns.items():  # what combined_batches does for columns rows added
                if name not in ("ts", "line", "note"):
                    values.append(consts.get(name))
            expected.append({"ts": ts, "line": line, **consts})
        else:
            row = step[1]
            batch.add_row(row)
            expected.append({**consts, **row})
    assert len(batch) == len(expected)
    got = batch.rows()
    for g, e in zip(got, expected, strict=True):
        assert {k: v for k, v in g.items() if v is not None} == {k: v for k, v in e.items() if v is not None}
    assert batch.table().equals(records_table(expected) if expected else records_table([]))
