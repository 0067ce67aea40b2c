"""``stormguard train|evaluate|score`` end to end on small synthetic inputs (no corpus needed), and ``ua`` intact."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stormguard.models.bundle import MANIFEST_NAME, PAYLOAD_NAME
from stormguard.models.train import read_labels
from test_behaviour_model import synthetic_records

from stormguard.cli import build_parser, main
from stormguard.schema import write_records


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("train")
    records = tmp / "records.parquet"
    write_records(synthetic_records(), records)
    labels = tmp / "labels.txt"
    keys = synthetic_records()["src_ip"].unique()
    labels.write_text("\n".join(f"{k} {'human' if k.startswith('10.0.') else 'advanced_bot'}" for k in keys) + "\n")
    model = tmp / "model.skops"
    assert main(["train", str(records), "--clusters", "4", "-o", str(model)]) == 0
    return records, labels, model


def test_subcommands_registered() -> None:
    parser = build_parser()
    for argv in (["train", "x", "-o", "m.skops"], ["evaluate", "m.skops", "x", "--labels", "l"],
                 ["score", "m.skops", "x", "-o", "s.csv"], ["ua", "train", "l.csv", "-o", "u.skops"],
                 ["ua", "score", "u.skops", "i.csv", "-o", "o.csv"]):
        assert callable(parser.parse_args(argv).func)


def test_train_summary(trained: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    records, _, _ = trained
    out = capsys.readouterr().out  # the fixture's own run may have been captured by an earlier test
    model = records.parent / "again.skops"
    assert main(["train", str(records), "--clusters", "4", "-o", str(model)]) == 0
    out = capsys.readouterr().out
    assert "profiles" in out and "flapping reconnector" in out and "training clients by tier" in out
    assert "saved" in out and model.exists()


def test_score_writes_table_and_fills_store(trained: tuple[Path, Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    records, _, model = trained
    out_csv = tmp_path / "scores.csv"
    assert main(["score", str(model), str(records), "-o", str(out_csv), "--store", "memory://"]) == 0
    text = capsys.readouterr().out
    assert "store:" in text and "keys loaded" in text
    scores = pd.read_csv(out_csv, keep_default_na=False)
    for col in ("key", "score", "tier", "cluster", "anomaly", "reasons"):
        assert col in scores.columns
    assert scores["score"].between(-100, 100).all()
    assert scores["key"].is_unique
    flap = scores[scores["key"].str.startswith("10.1.")]
    steady = scores[scores["key"].str.startswith("10.0.")]
    assert flap["score"].max() < steady["score"].median()
    parquet = tmp_path / "scores.parquet"
    assert main(["score", str(model), str(records), "-o", str(parquet)]) == 0
    assert len(pd.read_parquet(parquet)) == len(scores)


def test_fill_store_reduces_per_key() -> None:
    from stormguard.scoring.batch import fill_store, reduce_per_key
    from stormguard.scoring.stores import open_store
    from stormguard.scoring.stores.sync import SyncStore

    table = pd.DataFrame({"key": ["a", "a", "a", "b"], "window_start": [0.0, 300.0, 300.0, 0.0],
                          "score": [-90.0, -10.0, -30.0, 5.0], "profile": ["burst", "burst", "scraper", "steady"]})
    per = reduce_per_key(table)
    assert per.set_index("key")["score"].to_dict() == {"a": -30.0, "b": 5.0}
    with SyncStore(open_store("memory://")) as store:
        assert fill_store(table, store, now=1000.0) == 2
        rep = store.get("a", 1000.0)
        assert rep.score == pytest.approx(-30.0) and rep.reasons[-1] == "model:scraper"


def test_evaluate_with_labels_and_plot(trained: tuple[Path, Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    records, labels, model = trained
    plot = tmp_path / "eval.svg"
    js = tmp_path / "eval.json"
    assert main(["evaluate", str(model), str(records), "--labels", str(labels), "--plot", str(plot),
                 "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "ROC-AUC (score):" in out and "tiers x labels" in out and "per cluster" in out
    import json

    doc = json.loads(js.read_text())
    assert doc["roc_auc"] > 0.9
    assert plot.read_text().startswith("<svg")


def test_train_with_labels(trained: tuple[Path, Path, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    records, labels, _ = trained
    model = tmp_path / "sup.skops"
    assert main(["train", str(records), "--labels", str(labels), "--clusters", "4", "-o", str(model)]) == 0
    out = capsys.readouterr().out
    assert "+ classifier" in out and "training ROC-AUC" in out


def test_labels_formats(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("s1 human\ns2 moderate_bot\ns3 ???\n")
    (tmp_path / "b.csv").write_text("key,label\ns4,bot\ns1,bot\n")
    labels = read_labels([tmp_path / "a.txt", tmp_path / "b.csv"])
    assert labels == {"s2": 1.0, "s4": 1.0}  # s1 conflicts, s3 unknown


def test_tampered_bundle_refused_by_cli(trained: tuple[Path, Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    records, _, model = trained
    bad = tmp_path / "bad.skops"
    with zipfile.ZipFile(model) as zf, zipfile.ZipFile(bad, "w") as out:
        out.writestr(MANIFEST_NAME, zf.read(MANIFEST_NAME).replace(b'"kind": "behaviour"', b'"kind": "ua"'))
        out.writestr(PAYLOAD_NAME, zf.read(PAYLOAD_NAME))
    assert main(["score", str(bad), str(records), "-o", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "refused" in err
    assert main(["score", str(tmp_path / "missing.skops"), str(records), "-o", str(tmp_path / "s.csv")]) == 2


def test_score_needs_an_output(trained: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    records, _, model = trained
    assert main(["score", str(model), str(records)]) == 2
    assert "nothing to do" in capsys.readouterr().err


def test_features_file_input(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from stormguard.features.clients.windows import client_features, write_features

    records, _, model = trained
    feats = tmp_path / "features.parquet"
    write_features(client_features(synthetic_records(), key="src_ip", window=None), feats)
    out = tmp_path / "s.csv"
    assert main(["score", str(model), str(feats), "--source-kind", "capture", "-o", str(out)]) == 0
    a = pd.read_csv(out).sort_values("key")["score"].to_numpy()
    assert main(["score", str(model), str(records), "-o", str(tmp_path / "r.csv")]) == 0
    b = pd.read_csv(tmp_path / "r.csv").sort_values("key")["score"].to_numpy()
    assert np.allclose(a, b)
