"""``--engine dask`` gives exactly what the local engine gives, on the whole reference corpus, against a real
scheduler with two worker processes started here (``dask scheduler`` / ``dask worker`` on loopback) and against a
``LocalCluster``: records as a multiset, the replay summary and located problems, and the features per client
and window (float columns to 1e-12 relative: a client's rows meet in another order after the shuffle, so a mean
may be summed in another order).

Large-file splitting is forced with a small ``split_bytes`` (logs in byte ranges, captures in byte spans routed to
two flow shares), so the range and routing paths run on real files too.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("distributed", reason="the dask extra is not installed (pip install 'stormguard[dask]')")

from dask_cluster import dask_processes  # noqa: E402
from distributed import Client  # noqa: E402
from stormguard.features.clients.windows import client_features, read_features  # noqa: E402
from stormguard.features.distributed.cluster import dask_client  # noqa: E402
from stormguard.features.distributed.replay import replay_dask  # noqa: E402
from stormguard.features.distributed.windows import features_dask  # noqa: E402
from stormguard.features.replay import replay_to_file  # noqa: E402
from stormguard.models.train import features_from_records, load_model  # noqa: E402

from stormguard.report import ReplayStats  # noqa: E402
from stormguard.schema import read_records  # noqa: E402

#: Small enough that the corpus's larger logs (0.5-2.6 MB) come in several ranges and its larger captures
#: (0.3-2 MB) in several spans.
SPLIT_BYTES = 256 << 10
#: (key, window) runs compared here; the CLI test adds a composite key over the whole input.
FEATURE_RUNS = (("src_ip", 300.0),)


def _multiset(frame: pd.DataFrame) -> collections.Counter[str]:
    clean = frame.astype(object).where(frame.notna(), None)
    return collections.Counter(map(repr, clean.itertuples(index=False, name=None)))


def _sorted_features(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["key", "window_start"], kind="stable").reset_index(drop=True)


def _comparable(frame: pd.DataFrame, *more_keys: str) -> pd.DataFrame:
    """Text-like columns (categoricals included: a dataset's parts each have their own categories) as strings,
    rows in (key, window, ...) order."""
    out = frame.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(out[col]):
            out[col] = out[col].astype("string")
    return out.sort_values(["key", "window_start", *more_keys], kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def local(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The local engine's output on the whole corpus (one process)."""
    out = tmp_path_factory.mktemp("local") / "records.parquet"
    stats = ReplayStats()
    replay_to_file([corpus], out, stats, show_progress=False, background=False, jobs=1)
    records = read_records(out)
    return {"stats": stats, "records": records,
            "features": {run: _sorted_features(client_features(records, key=run[0], window=run[1]))
                         for run in FEATURE_RUNS}}


@pytest.fixture(scope="module")
def scheduler_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``dask scheduler`` process and two ``dask worker`` processes (one thread each) on 127.0.0.1."""
    with dask_processes(tmp_path_factory.mktemp("dask")) as address:
        yield address


@pytest.fixture(scope="module", params=["dask-processes", "local-cluster"])
def client(request: pytest.FixtureRequest) -> Iterator[Client]:
    """A client of two single-threaded worker processes: separate ``dask scheduler``/``dask worker`` processes,
    or the ``LocalCluster`` the CLI starts without ``--scheduler``."""
    if request.param == "dask-processes":
        with Client(request.getfixturevalue("scheduler_address"), timeout=60) as c:
            yield c
    else:
        with dask_client(None, n_workers=2, dashboard="127.0.0.1:0", report=False) as c:
            yield c


def test_dask_engine_equals_local_engine_on_the_corpus(corpus: Path, local: dict[str, Any], client: Client,
                                                        tmp_path: Path) -> None:
    assert len(client.scheduler_info()["workers"]) == 2
    out = tmp_path / "records.parquet"
    stats = ReplayStats()
    rows = replay_dask(client, [corpus], out, stats, split_bytes=SPLIT_BYTES, capture_shares=2,
                       show_progress=False)
    parts = sorted(out.glob("part-*.parquet"))
    assert out.is_dir() and len(parts) > 100  # a partitioned dataset: a part per task that had records
    records = read_records(out)
    assert rows == len(records) == len(local["records"]) > 20000
    assert _multiset(records) == _multiset(local["records"])
    # the same counts, skip reasons and located problems (file, line/offset), in the same order
    assert stats.summary() == local["stats"].summary()
    assert [str(p) for p in stats.problems] == [str(p) for p in local["stats"].problems]

    for key, window in FEATURE_RUNS:
        fout = tmp_path / f"features-{key}.parquet"
        n = features_dask(client, out, fout, key=key, window=window, show_progress=False)
        got = _sorted_features(read_features(fout))
        want = local["features"][(key, window)]
        assert n == len(got) == len(want) > 100
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12, atol=0)


def test_damaged_inputs_are_reported_as_locally(corpus: Path, client: Client, tmp_path: Path) -> None:
    """A log read in many byte ranges: its bad lines are reported with their line numbers in the whole file and
    counted as the local engine counts them; a capture cut mid-packet (read in spans routed to two flow shares) is reported
    once, with its byte offset, and its packets before the damage are kept."""
    src = tmp_path / "in"
    src.mkdir()
    good = '203.0.113.{n} - - [10/Oct/2024:13:55:{s:02d} +0000] "GET /a?{n} HTTP/1.1" 200 12 "-" "curl/8.0"\n'
    lines = [good.format(n=i % 200, s=i % 60) for i in range(3000)]
    for bad in (7, 1500, 2999):
        lines[bad] = "this is not an access-log line\n"
    (src / "access.log").write_text("".join(lines))
    whole = (corpus / "pcap" / "foxio-ja4" / "tls-handshake.pcapng").read_bytes()
    (src / "cut.pcapng").write_bytes(whole[: len(whole) * 2 // 3])
    (src / "notes.txt").write_text("not an input\n")
    stats_local = ReplayStats()
    replay_to_file([src], tmp_path / "local.parquet", stats_local, show_progress=False, background=False, jobs=1)
    stats = ReplayStats()
    out = tmp_path / "dask.parquet"
    replay_dask(client, [src], out, stats, split_bytes=8 << 10, capture_shares=2, show_progress=False)
    assert stats.skipped["log line unparseable (skipped)"] == 3
    assert [p.line for p in stats.problems if p.file == "access.log"] == [8, 1501, 3000]
    assert stats.skipped["truncated capture"] == 1 and stats.files_refused == 1
    assert any(p.file == "cut.pcapng" and p.offset for p in stats.problems)
    assert stats.summary() == stats_local.summary()
    assert [str(p) for p in stats.problems] == [str(p) for p in stats_local.problems]
    records = read_records(out)
    assert (records["source"] == "cut.pcapng").sum() > 0
    assert _multiset(records) == _multiset(read_records(tmp_path / "local.parquet"))


def test_cli_replay_features_score_on_a_scheduler(corpus: Path, scheduler_address: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``stormguard replay|features|score --engine dask --scheduler ADDRESS``: the scheduler and dashboard are
    named, the summary printed; the feature dataset equals the local engine's features of the same records (which
    the local engine reads from the dataset folder), and the score dataset the local engine's scores."""
    from stormguard.cli import main

    records = tmp_path / "records.parquet"
    dask_opts = ["--engine", "dask", "--scheduler", scheduler_address]
    assert main(["replay", str(corpus / "logs"), str(corpus / "pcap"), *dask_opts, "--split-mb", "0.5",
                 "--no-progress", "-o", str(records)]) == 0
    err = capsys.readouterr().err
    assert f"dask: scheduler {scheduler_address}, 2 worker(s), dashboard: http://127.0.0.1:" in err
    assert "files: 112 read, 4 refused" in err and "records written:" in err and f"to {records}" in err
    features = tmp_path / "features.parquet"
    assert main(["features", str(records), *dask_opts, "--key", "ip_ja4", "--window", "0",
                 "-o", str(features)]) == 0
    assert "feature vectors to the dataset" in capsys.readouterr().err
    assert main(["features", str(records), "--key", "ip_ja4", "--window", "0",
                 "-o", str(tmp_path / "local.parquet")]) == 0
    got, want = read_features(features), read_features(tmp_path / "local.parquet")
    assert len(want) > 50
    pd.testing.assert_frame_equal(_sorted_features(got), _sorted_features(want), check_exact=False, rtol=1e-12)
    # scores: the bundled model, its key and window; equal to the local engine's, row for row
    model_path = Path(__file__).resolve().parent.parent / "data" / "default-model.skops"
    scores = tmp_path / "scores.parquet"
    assert main(["score", str(model_path), str(records), *dask_opts, "-o", str(scores)]) == 0
    assert "(dataset)" in capsys.readouterr().out
    model, bundle = load_model(model_path)
    want = model.score_frame(features_from_records(read_records(records), key=bundle.metrics["key"],
                                                   window=bundle.metrics.get("window") or None))
    got = pd.read_parquet(scores)
    assert len(want) > 50
    pd.testing.assert_frame_equal(_comparable(got, "source_kind"), _comparable(want, "source_kind"),
                                  check_exact=False, rtol=1e-12)
    # a dataset is a folder of Parquet parts: CSV is refused, and so is replacing a folder that is not a dataset
    assert main(["replay", str(corpus / "logs"), *dask_opts, "-o", str(tmp_path / "r.csv")]) == 2
    assert "must end in .parquet" in capsys.readouterr().err
    (tmp_path / "other.parquet").mkdir()
    (tmp_path / "other.parquet" / "keep.txt").write_text("mine")
    assert main(["features", str(records), *dask_opts, "-o", str(tmp_path / "other.parquet")]) == 2
    assert (tmp_path / "other.parquet" / "keep.txt").exists()
    with pytest.raises(SystemExit):
        main(["features", str(records), "--scheduler", scheduler_address, "-o", str(tmp_path / "x.parquet")])


def _pipeline_view(out: str, out_dir: Path) -> list[str]:
    """The pipeline's report lines, with its output folder and the dataset markers taken out."""
    return [line.replace(str(out_dir), "OUT").replace(" (dataset)", "") for line in out.splitlines()
            if not line.startswith("dask: ")]


def test_pipeline_on_a_scheduler_equals_the_local_pipeline(corpus: Path, scheduler_address: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``stormguard pipeline --engine dask``: replay (the Apache log in byte ranges), features, the bundled model's
    scores and the live rules into the store, with the store filled from the datasets part by part; the report
    (counts, top features, tiers, the lowest-scored clients with their reasons) and every output equal the local
    pipeline's."""
    from stormguard.cli import main

    inputs = [str(corpus / "logs" / "elastic-examples-apache_logs.log"), str(corpus / "pcap" / "salesforce-ja3")]
    local, dist = tmp_path / "local", tmp_path / "dask"
    assert main(["pipeline", *inputs, "--out-dir", str(local), "--show", "40"]) == 0
    want = capsys.readouterr()
    assert main(["pipeline", *inputs, "--out-dir", str(dist), "--show", "40", "--engine", "dask",
                 "--scheduler", scheduler_address, "--split-mb", "0.5", "--no-progress"]) == 0
    got = capsys.readouterr()
    assert f"dask: scheduler {scheduler_address}, 2 worker(s)" in got.err
    report = _pipeline_view(got.out, dist)
    assert report == _pipeline_view(want.out, local)
    tiers = next(line for line in report if line.startswith("tiers:"))
    assert "blocked" in tiers and "neutral" in tiers  # a real mix, not an empty table
    header = next(i for i, line in enumerate(report) if "tier (X-IP-Rating)" in line)
    assert len(report) - header - 1 == 40 and sum("model:" in line for line in report[header:]) > 10
    records = read_records(dist / "records.parquet")
    assert len(records) > 10_000
    assert _multiset(records) == _multiset(read_records(local / "records.parquet"))
    pd.testing.assert_frame_equal(_sorted_features(read_features(dist / "features.parquet")),
                                  _sorted_features(read_features(local / "features.parquet")),
                                  check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(_comparable(pd.read_parquet(dist / "scores.parquet"), "source_kind"),
                                  _comparable(pd.read_parquet(local / "scores.parquet"), "source_kind"),
                                  check_exact=False, rtol=1e-12)
    # the local run's single files are never replaced by datasets
    assert main(["pipeline", *inputs, "--out-dir", str(local), "--engine", "dask",
                 "--scheduler", scheduler_address]) == 2
    assert "is not a dataset written by the dask engine" in capsys.readouterr().err
    assert (local / "records.parquet").is_file()


def test_training_sample_on_a_scheduler(corpus: Path, scheduler_address: str, tmp_path: Path) -> None:
    """``train --engine dask``: the training features computed on the cluster are the local engine's; a sample
    that holds them all is "all rows"; a smaller one is stratified by source kind (each kind its proportional
    share), repeatable with the same seed, and made of the local engine's rows."""
    from stormguard.models.distributed import _strata, stratified_training_sample

    records = tmp_path / "records.parquet"
    replay_to_file([corpus / "logs", corpus / "pcap" / "foxio-ja4"], records, ReplayStats(), show_progress=False,
                   background=False, jobs=1)
    want = features_from_records(read_records(records), key="src_ip", window=None)
    with Client(scheduler_address, timeout=60) as client:
        whole, info = stratified_training_sample(client, records, tmp_path / "f1.parquet", size=10**6,
                                                 show_progress=False)
        assert info["training_set"] == "all rows" and info["population_rows"] == len(want) == len(whole) > 500
        pd.testing.assert_frame_equal(_comparable(whole, "source_kind"), _comparable(want, "source_kind"),
                                      check_exact=False, rtol=1e-12)
        sample, info = stratified_training_sample(client, records, tmp_path / "f2.parquet", size=200, seed=7,
                                                  show_progress=False)
    assert info["training_set"] == "stratified sample" and 195 <= len(sample) <= 205
    kinds = want["source_kind"].value_counts()
    assert set(info["strata"]) == set(kinds.index) and len(kinds) >= 2
    for kind, n in kinds.items():
        share = info["strata"][kind]
        assert share["population"] == n and share["sample"] == max(1, round(200 * n / len(want)))
        assert (sample["source_kind"] == kind).sum() == share["sample"]
    # the draw is fixed by key, window and seed, whatever partition a row is in: the same sample every time
    draws = _strata(want, None, 7)["_draw"]
    halves = pd.concat([_strata(want.iloc[:300], None, 7), _strata(want.iloc[300:], None, 7)])["_draw"]
    assert draws.tolist() == halves.tolist() and draws.between(0, 1).all() and draws.nunique() > 0.99 * len(want)
    assert _strata(want, None, 8)["_draw"].tolist() != draws.tolist()
    rows = _comparable(want, "source_kind").set_index(["key", "window_start", "source_kind"])
    picked = _comparable(sample, "source_kind").set_index(["key", "window_start", "source_kind"])
    assert picked.index.isin(rows.index).all()


def test_a_failed_task_is_reported_and_the_rest_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task that fails on its worker (here: its reader raises MemoryError, as a worker out of memory would) is
    reported with its file and counted; the other files' records are written. (An in-process cluster, so the
    failure can be injected.)"""
    import stormguard.features.replay as local_replay
    from distributed import LocalCluster

    line = '198.51.100.{n} - - [10/Oct/2024:13:55:{s:02d} +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8.0"\n'
    for name in ("a.log", "b.log"):
        (tmp_path / name).write_text("".join(line.format(n=i, s=i % 60) for i in range(50)))
    real = local_replay.iter_chunks

    def failing(inputs: list[str], *args: Any, **kw: Any) -> Any:
        if str(inputs[0]).endswith("b.log"):
            raise MemoryError("injected: worker out of memory")
        return real(inputs, *args, **kw)

    monkeypatch.setattr(local_replay, "iter_chunks", failing)
    stats = ReplayStats()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as c:
        rows = replay_dask(c, [tmp_path / "a.log", tmp_path / "b.log"], tmp_path / "out.parquet", stats,
                           show_progress=False)
    assert rows == 50 == len(read_records(tmp_path / "out.parquet"))
    assert stats.skipped["dask task failed"] == 1
    [problem] = [p for p in stats.problems if "dask task" in p.message]
    assert problem.file.endswith("b.log") and "MemoryError" in problem.message and "missing" in problem.message
