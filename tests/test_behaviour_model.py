"""The behaviour model: encoders, the calibrated mapping, profiles, anomaly, routing by source kind, bundles."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stormguard.features.clients.windows import client_features
from stormguard.models.behaviour import (
    BehaviourModel,
    LiveScorer,
    ReputationModel,
    evidence_floor_share,
    source_family,
)
from stormguard.models.bundle import MANIFEST_NAME, PAYLOAD_NAME, BundleError, load_bundle, save_bundle
from stormguard.models.encoding import FrequencyEncoder, KnownListEncoder, load_ja3_list
from stormguard.models.mapping import ReputationMapping, sbb_evidence, tier_names
from stormguard.models.train import SCHEMA_VERSION, load_model, save_model

from stormguard.schema import records_frame

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"


def synthetic_records(n_steady: int = 120, n_flap: int = 6, n_burst: int = 6, seed: int = 0) -> pd.DataFrame:
    """SSE-like connection records: steady subscribers (a long connection every few minutes), flapping
    reconnectors (a 1-s connection every 3 s), bursts (40 connections within 8 s, curl)."""
    rng = np.random.default_rng(seed)
    rows = []
    t0 = 1_700_000_000.0
    for i in range(n_steady):
        t = t0 + rng.uniform(0, 600)
        for _ in range(int(rng.integers(2, 6))):
            rows.append({"ts": t, "ts_end": t + rng.uniform(120, 900), "src_ip": f"10.0.{i // 250}.{i % 250}",
                         "user_agent": BROWSER, "status": 200, "source_kind": "pcap", "ja3": "a" * 32})
            t += rng.uniform(200, 900)
    for i in range(n_flap):
        t = t0 + rng.uniform(0, 600)
        for _ in range(60):
            rows.append({"ts": t, "ts_end": t + 0.5, "src_ip": f"10.1.0.{i}", "user_agent": BROWSER, "status": 200,
                         "source_kind": "pcap", "ja3": "a" * 32})
            t += 3.0
    for i in range(n_burst):
        t = t0 + rng.uniform(0, 600)
        for _ in range(40):
            rows.append({"ts": t, "ts_end": t + 0.1, "src_ip": f"10.2.0.{i}", "user_agent": "curl/8.4.0",
                         "status": 429, "source_kind": "pcap", "ja3": "b" * 32})
            t += 0.2
    return records_frame(rows)


@pytest.fixture(scope="module")
def feats() -> pd.DataFrame:
    return client_features(synthetic_records(), key="src_ip", window=None).assign(source_kind="capture")


@pytest.fixture(scope="module")
def model(feats: pd.DataFrame) -> ReputationModel:
    return ReputationModel(behaviour=BehaviourModel(n_clusters=4), mapping=ReputationMapping.from_config()).fit(feats)


# -- encoders ----------------------------------------------------------------------------------------------------
def test_frequency_encoder_rarity() -> None:
    train = pd.DataFrame({"ja3_mode": ["a"] * 9 + [None], "ja4_mode": [None] * 10})
    enc = FrequencyEncoder(columns=("ja3_mode", "ja4_mode")).fit(train)
    out = enc.transform(pd.DataFrame({"ja3_mode": ["a", None, "zzz"], "ja4_mode": [None, "x", None]}))
    assert out[0, 0] == pytest.approx(-math.log10(10 / 11))  # common value: near 0
    assert out[1, 0] == pytest.approx(-math.log10(2 / 11))  # missing is its own category
    assert out[2, 0] == pytest.approx(math.log10(11))  # unseen: the rarest possible
    assert out[0, 1] < out[1, 1]
    assert list(enc.get_feature_names_out()) == ["rarity_ja3_mode", "rarity_ja4_mode"]


def test_known_lists_from_corpus(corpus: Path) -> None:
    tls = corpus / "tls"
    known, bad = load_ja3_list(tls / "sslbl-ja3_fingerprints.csv")
    assert len(bad) == len(known) >= 90
    sf_known, sf_bad = load_ja3_list(tls / "salesforce-osx-nix-ja3.csv")
    assert len(sf_known) >= 150 and not sf_bad
    tr_known, _ = load_ja3_list(tls / "trisulnsm-ja3fingerprint.json")
    assert len(tr_known) >= 500
    some_bad, some_known = sorted(bad)[0], sorted(sf_known)[0]
    enc = KnownListEncoder(bad_paths=[str(tls / "sslbl-ja3_fingerprints.csv")],
                           known_paths=[str(tls / "salesforce-osx-nix-ja3.csv")]).fit()
    out = enc.transform(pd.DataFrame({"ja3_mode": [some_bad, some_known.upper(), None, "0" * 32]}))
    assert out.tolist() == [[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]


# -- mapping -----------------------------------------------------------------------------------------------------
def test_mapping_anchors_and_monotone() -> None:
    m = ReputationMapping.from_config().fit()
    logit = lambda q: math.log(q / (1 - q))  # noqa: E731
    assert m.score(np.array([logit(m.prior_bad)]))[0] == pytest.approx(0.0)
    assert m.score(np.array([logit(0.5)]))[0] == pytest.approx(-20.0)
    assert m.score(np.array([logit(0.9)]))[0] == pytest.approx(-50.0)
    assert m.score(np.array([logit(m.prior_bad) - math.log(20)]))[0] == pytest.approx(60.0)
    xs = np.linspace(-30, 30, 2001)
    ys = m.score(xs)
    assert np.all(np.diff(ys) <= 1e-12) and ys.min() == -100 and ys.max() == 100
    inside = (ys > -99) & (ys < 99)
    assert np.allclose(m.log_odds(ys[inside]), xs[inside])
    assert list(tier_names(np.array([80, 60, 0, -20, -20.5, -50, -51]), m.tiers, m.block_score)) == [
        "trusted", "trusted", "neutral", "neutral", "low", "blocked", "blocked"]


def test_sbb_evidence() -> None:
    p = np.array([1.0, 0.5, 1 / math.e, 0.05, 1e-3])
    ev = sbb_evidence(p)
    assert ev[0] == ev[1] == ev[2] == 0.0
    assert ev[3] == pytest.approx(-math.log(-math.e * 0.05 * math.log(0.05)))
    assert ev[4] > ev[3] > 0
    # the documented consequence: anomaly alone reaches q_low = 0.5 only below this p-value
    p_star = evidence_floor_share(0.02)
    assert 0.0005 < p_star < 0.002
    m = ReputationMapping().fit()
    at = m.combine(anomaly_p=np.array([p_star * 1.01, p_star * 0.99]))["score"]
    assert at[0] >= -20 > at[1]


def test_ua_evidence_is_capped_for_good() -> None:
    m = ReputationMapping().fit()
    ev = m.combine(anomaly_p=np.ones(3), ua_p=np.array([1e-6, 0.5, 0.999]), ua_base=0.7)
    assert ev["ua"][0] == pytest.approx(-math.log(3))
    assert ev["score"][0] < 60  # a browser-looking UA alone never buys the trusted tier
    assert ev["score"][2] < -20


# -- the model ---------------------------------------------------------------------------------------------------
def test_source_family() -> None:
    assert [source_family(k) for k in ("log-combined", "log-iliou", "jsonl", "pcap", "pcapng", "har", "live",
                                       None, "x")] == ["log", "log", "log", "capture", "capture", "har", "live",
                                                       "other", "other"]


def test_profiles_and_scores(model: ReputationModel, feats: pd.DataFrame) -> None:
    scores = model.score_frame(feats)
    assert list(scores.columns) == ["key", "source_kind", "score", "tier", "cluster", "profile", "anomaly",
                                    "p_value", "reasons"]
    assert scores["score"].between(-100, 100).all()
    by = scores.set_index("key")
    steady = by.loc[by.index.str.startswith("10.0.")]
    flap = by.loc[by.index.str.startswith("10.1.")]
    burst = by.loc[by.index.str.startswith("10.2.")]
    assert steady["score"].median() > flap["score"].max()
    assert steady["score"].median() > burst["score"].max()
    assert (steady["tier"].isin(["low", "blocked"])).mean() <= 0.02
    assert set(flap["profile"]) == {"flapping reconnector"}
    assert set(burst["profile"]) & {"burst", "scraper"}
    assert set(steady["profile"]) == {"steady subscriber"}
    assert (burst["reasons"].str.len() > 0).all()


def test_unseen_kind_uses_fallback_and_live(model: ReputationModel, feats: pd.DataFrame) -> None:
    mixed = feats.assign(source_kind=["capture", "never-seen"] * (len(feats) // 2) + ["capture"] * (len(feats) % 2))
    a = model.score_frame(feats)["score"].to_numpy()
    b = model.score_frame(mixed)["score"].to_numpy()
    assert np.allclose(a, b)  # one kind in training: it is also the fallback
    live = LiveScorer(model).score(feats.head(7).to_dict("records"), source_kind="capture")
    assert np.allclose(live["score"], a[:7])
    assert len(model.score_frame(feats.head(0))) == 0


def test_classifier_with_labels(feats: pd.DataFrame) -> None:
    y = np.where(feats["key"].str.startswith("10.0."), 0.0, 1.0)
    y[::5] = np.nan  # some unlabelled
    m = ReputationModel(behaviour=BehaviourModel(n_clusters=4)).fit(feats, y)
    assert m.models_["capture"].classifier_ is not None
    s = m.score_frame(feats)
    bad = ~feats["key"].str.startswith("10.0.").to_numpy()
    assert s["score"][bad].max() < s["score"][~bad].median()


def test_deterministic(feats: pd.DataFrame) -> None:
    a = ReputationModel().fit(feats).score_frame(feats)
    b = ReputationModel().fit(feats).score_frame(feats)
    pd.testing.assert_frame_equal(a, b)


# -- bundles -----------------------------------------------------------------------------------------------------
def test_bundle_fresh_process_and_refusals(tmp_path: Path, model: ReputationModel, feats: pd.DataFrame) -> None:
    path = save_model(tmp_path / "m.skops", model, feats, {"n_clients": len(feats)})
    feats.to_parquet(tmp_path / "f.parquet")
    expected = model.score_frame(feats)
    script = ("import sys, pandas as pd; from stormguard.models.train import load_model; "
              "m, b = load_model(sys.argv[1]); print(m.score_frame(pd.read_parquet(sys.argv[2]))"
              ".score.round(6).tolist())")
    proc = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "f.parquet")],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip()) == pytest.approx(expected["score"].round(6).tolist())

    # a mismatched feature schema is refused with a clear message
    other = save_bundle(tmp_path / "old.skops", {"behaviour": model}, kind="behaviour",
                        schema_version="behaviour-features/0", data_fingerprint="sha256:x")
    with pytest.raises(BundleError, match="feature schema"):
        load_model(other)
    # a UA bundle is not a behaviour bundle
    with pytest.raises(BundleError, match="expected 'ua'"):
        load_bundle(other.with_name("old.skops"), kind="ua")
    # tampered payload: refused
    tampered = tmp_path / "tampered.skops"
    with zipfile.ZipFile(path) as zf, zipfile.ZipFile(tampered, "w") as out:
        out.writestr(MANIFEST_NAME, zf.read(MANIFEST_NAME))
        payload = bytearray(zf.read(PAYLOAD_NAME))
        payload[len(payload) // 2] ^= 0xFF
        out.writestr(PAYLOAD_NAME, bytes(payload))
    with pytest.raises(BundleError, match="sha256"):
        load_model(tampered)
    assert SCHEMA_VERSION.startswith("behaviour-features/")


def test_fast_forest_equals_isolation_forest(model: ReputationModel, feats: pd.DataFrame) -> None:
    """Scoring calls each tree's ``apply`` directly (no per-tree dispatch); it must give scikit-learn's numbers,
    threaded (large batches) or not."""
    bm = model.models_["capture"]
    Z = bm.transform(feats)
    assert np.allclose(bm._anomaly(Z), -bm.isoforest_.score_samples(Z), rtol=0, atol=1e-12)
    big = np.repeat(Z, 200, axis=0)
    assert np.allclose(bm._anomaly(big), -bm.isoforest_.score_samples(big), rtol=0, atol=1e-12)
    assert ((bm.p_values(bm._anomaly(Z)) > 0) & (bm.p_values(bm._anomaly(Z)) <= 1)).all()
