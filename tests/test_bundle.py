"""Model bundles load in a fresh process, and anything tampered, mismatched or foreign is refused clearly."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.preprocessing import FunctionTransformer
from stormguard.models.bundle import (
    MANIFEST_NAME,
    PAYLOAD_NAME,
    BundleError,
    check_types,
    fingerprint_frame,
    load_bundle,
    read_manifest,
    save_bundle,
)
from stormguard.models.ua import FEATURE_SCHEMA_VERSION, UAModel

PROBE = ["curl/8.4.0", "", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
         "Mozilla/5.0 (compatible; Examplebot/1.0; +http://example.com/bot.html)", "${jndi:ldap://x/a}"]


def _training() -> pd.DataFrame:
    bots = [f"{name}bot/{v}.0 (+http://{name}.example/bot)" for name in ("alpha", "beta", "gamma", "delta")
            for v in range(1, 6)] + [f"python-requests/2.{v}.0" for v in range(10)]
    browsers = [f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 "
                "Safari/537.36" for v in range(100, 115)] + [
        f"Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0" for v in range(100, 115)]
    return pd.DataFrame({"user_agent": bots + browsers, "label": ["bot"] * len(bots) + ["browser"] * len(browsers)})


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, UAModel]:
    data = _training()
    model = UAModel(n_clusters=4, random_state=0).fit(data["user_agent"], data["label"])
    path = tmp_path_factory.mktemp("bundle") / "ua.skops"
    save_bundle(path, {"ua": model}, kind="ua", schema_version=FEATURE_SCHEMA_VERSION,
                data_fingerprint=fingerprint_frame(data, ["user_agent", "label"]),
                metrics={"roc_auc": np.float64(0.99), "folds": np.array([0.98, 1.0])})
    return path, model


def _rewrite(src: Path, dst: Path, *, manifest: dict[str, Any] | None = None, payload: bytes | None = None,
             fix_sha: bool = False) -> Path:
    """Copy a bundle, replacing its manifest and/or payload (optionally re-computing the payload digest)."""
    with zipfile.ZipFile(src) as zf:
        old_manifest = json.loads(zf.read(MANIFEST_NAME))
        old_payload = zf.read(PAYLOAD_NAME)
    new_manifest = manifest if manifest is not None else old_manifest
    new_payload = payload if payload is not None else old_payload
    if fix_sha:
        new_manifest["payload_sha256"] = hashlib.sha256(new_payload).hexdigest()
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr(MANIFEST_NAME, json.dumps(new_manifest))
        zf.writestr(PAYLOAD_NAME, new_payload)
    return dst


def test_round_trip_in_a_fresh_process(saved: tuple[Path, UAModel]) -> None:
    path, model = saved
    script = (
        "import json, sys\n"
        "from stormguard.models.bundle import load_bundle\n"
        "from stormguard.models.ua import FEATURE_SCHEMA_VERSION\n"
        "b = load_bundle(sys.argv[1], expected_schema=FEATURE_SCHEMA_VERSION, kind='ua')\n"
        "probe = json.loads(sys.argv[2])\n"
        "print(json.dumps({'out': b.estimators['ua'].transform(probe).tolist(), 'metrics': b.metrics,\n"
        "                  'fp': b.data_fingerprint, 'versions': b.versions}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path), json.dumps(PROBE)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert np.allclose(np.array(result["out"]), model.transform(PROBE), rtol=0, atol=1e-12)
    assert result["metrics"] == {"roc_auc": 0.99, "folds": [0.98, 1.0]}
    assert result["fp"] == fingerprint_frame(_training(), ["user_agent", "label"])
    assert {"python", "sklearn", "numpy", "scipy", "skops", "stormguard"} <= set(result["versions"])


def test_manifest_is_readable_without_loading(saved: tuple[Path, UAModel]) -> None:
    manifest = read_manifest(saved[0])
    assert manifest["schema_version"] == FEATURE_SCHEMA_VERSION
    assert manifest["kind"] == "ua" and manifest["estimators"] == ["ua"]
    assert manifest["data_fingerprint"].startswith("sha256:")
    assert all(t.startswith(("sklearn.", "numpy.", "scipy.", "stormguard.models.")) for t in manifest["types"])


def test_modified_payload_refused(saved: tuple[Path, UAModel], tmp_path: Path) -> None:
    path, _ = saved
    with zipfile.ZipFile(path) as zf:
        payload = bytearray(zf.read(PAYLOAD_NAME))
    payload[len(payload) // 2] ^= 0xFF
    bad = _rewrite(path, tmp_path / "edited.skops", payload=bytes(payload))
    with pytest.raises(BundleError, match="sha256 does not match") as info:
        load_bundle(bad)
    assert str(bad) in str(info.value)


def test_flipped_byte_in_file_refused(saved: tuple[Path, UAModel], tmp_path: Path) -> None:
    raw = bytearray(saved[0].read_bytes())
    for offset in (len(raw) // 3, len(raw) // 2, len(raw) - 30):
        damaged = bytearray(raw)
        damaged[offset] ^= 0x55
        bad = tmp_path / f"flip{offset}.skops"
        bad.write_bytes(bytes(damaged))
        with pytest.raises(BundleError, match=str(bad)):
            load_bundle(bad)


def test_truncated_file_refused(saved: tuple[Path, UAModel], tmp_path: Path) -> None:
    bad = tmp_path / "truncated.skops"
    bad.write_bytes(saved[0].read_bytes()[:-5000])
    with pytest.raises(BundleError, match="not a zip|unreadable|corrupt"):
        load_bundle(bad)


def test_mismatched_schema_refused(saved: tuple[Path, UAModel], tmp_path: Path) -> None:
    data = _training()
    old = save_bundle(tmp_path / "old.skops", {"ua": saved[1]}, kind="ua", schema_version="ua-features/0",
                      data_fingerprint=fingerprint_frame(data))
    with pytest.raises(BundleError, match=r"feature schema 'ua-features/0' does not match .*retrain"):
        load_bundle(old, expected_schema=FEATURE_SCHEMA_VERSION)
    assert load_bundle(old).schema_version == "ua-features/0", "without an expectation the bundle loads"
    with pytest.raises(BundleError, match="expected 'behaviour'"):
        load_bundle(saved[0], kind="behaviour")


def test_edited_manifest_refused(saved: tuple[Path, UAModel], tmp_path: Path) -> None:
    """Editing the manifest's schema to get past the check is caught by the payload's own copy."""
    path, _ = saved
    manifest = read_manifest(path)
    manifest["schema_version"] = "ua-features/999"
    bad = _rewrite(path, tmp_path / "relabelled.skops", manifest=manifest)
    with pytest.raises(BundleError, match="disagree on schema_version"):
        load_bundle(bad, expected_schema="ua-features/999")


def test_other_sklearn_major_version_refused(saved: tuple[Path, UAModel], tmp_path: Path) -> None:
    path, _ = saved
    manifest = read_manifest(path)
    manifest["versions"]["sklearn"] = "0.24.2"
    bad = _rewrite(path, tmp_path / "old-sklearn.skops", manifest=manifest)
    with pytest.raises(BundleError, match=r"scikit-learn 0\.24\.2.*major version"):
        load_bundle(bad)
    import sklearn

    manifest["versions"]["sklearn"] = sklearn.__version__.split(".")[0] + ".0.0"
    minor = _rewrite(path, tmp_path / "other-minor.skops", manifest=manifest)
    with pytest.warns(UserWarning, match="results may differ"):
        load_bundle(minor)


@pytest.mark.parametrize("content", [b"", b"not a bundle at all\n", b"PK\x03\x04 broken zip header",
                                     b"\x89PNG\r\n\x1a\n" + b"\x00" * 100])
def test_file_that_is_not_a_bundle_refused(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "junk.skops"
    bad.write_bytes(content)
    with pytest.raises(BundleError, match="junk.skops"):
        load_bundle(bad)


def test_missing_file_and_foreign_zips_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such file"):
        load_bundle(tmp_path / "missing.skops")
    bare = tmp_path / "bare.skops"
    sio.dump({"a": 1}, bare)
    with pytest.raises(BundleError, match="bare skops file"):
        load_bundle(bare)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr(MANIFEST_NAME, json.dumps({"format": "something-else"}))
    with pytest.raises(BundleError, match="does not declare format"):
        load_bundle(other)


def test_untrusted_types_refused(saved: tuple[Path, UAModel], tmp_path: Path) -> None:
    """A payload naming a function (even one from NumPy) or a foreign class is refused before skops builds it."""
    path, _ = saved
    manifest = read_manifest(path)
    for func in (os.system, np.load):
        meta = {k: manifest[k] for k in ("kind", "schema_version", "data_fingerprint", "metrics", "versions",
                                         "created")}
        payload = sio.dumps({"meta": meta, "estimators": {"ua": FunctionTransformer(func=func)}})
        bad = _rewrite(path, tmp_path / f"evil-{func.__name__}.skops", manifest=dict(manifest), payload=payload,
                       fix_sha=True)
        with pytest.raises(BundleError, match="outside the allow-list"):
            load_bundle(bad)
    with pytest.raises(BundleError, match="builtins.eval"):
        check_types(["sklearn.pipeline.Pipeline", "builtins.eval"])
    with pytest.raises(BundleError, match="numpy.load"):
        check_types(["numpy.load"])
    with pytest.raises(BundleError, match="sklearn.nonexistent.Thing"):
        check_types(["sklearn.nonexistent.Thing"])
    assert check_types(["stormguard.models.ua.UAModel", "numpy.ndarray"]) == [
        "numpy.ndarray", "stormguard.models.ua.UAModel"]


def test_saving_an_unsafe_estimator_fails(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="outside the allow-list"):
        save_bundle(tmp_path / "x.skops", {"f": FunctionTransformer(func=os.getcwd)}, kind="x",
                    schema_version="x/1", data_fingerprint="sha256:0")
    assert not list(tmp_path.iterdir()), "nothing is written when saving is refused"


def test_hmac_key(saved: tuple[Path, UAModel], tmp_path: Path) -> None:
    signed = save_bundle(tmp_path / "signed.skops", {"ua": saved[1]}, kind="ua",
                         schema_version=FEATURE_SCHEMA_VERSION, data_fingerprint="sha256:0", key=b"secret")
    assert load_bundle(signed, key=b"secret").kind == "ua"
    with pytest.raises(BundleError, match="HMAC"):
        load_bundle(signed, key=b"other")
    with pytest.raises(BundleError, match="HMAC"):
        load_bundle(saved[0], key=b"secret")  # unsigned bundle when a key is required
    manifest = read_manifest(signed)
    manifest["metrics"] = {"roc_auc": 1.0}
    with pytest.raises(BundleError, match="HMAC"):
        load_bundle(_rewrite(signed, tmp_path / "resigned.skops", manifest=manifest), key=b"secret")


def test_fingerprint_is_stable_and_sensitive() -> None:
    a = _training()
    assert fingerprint_frame(a) == fingerprint_frame(a.copy())
    b = a.copy()
    b.loc[0, "label"] = "browser"
    assert fingerprint_frame(a) != fingerprint_frame(b)
    assert fingerprint_frame(a, ["user_agent"]) != fingerprint_frame(a)
    assert fingerprint_frame(a).startswith("sha256:") and len(fingerprint_frame(a)) == 7 + 64
