"""Model bundles: fitted estimators plus what is needed to trust them, in a format that runs no code on load.

A bundle is a small zip archive with two members:

- ``stormguard-manifest.json``: readable without loading any model — format, kind, feature schema version,
  training-data fingerprint (sha256), training metrics, library versions, the sha256 of the payload and, when the
  bundle was saved with a key, an HMAC-SHA256 over the manifest;
- ``payload.skops``: the estimators (and a copy of the metadata), written with ``skops.io.dump``.

Loading checks, in order, and refuses with a :class:`BundleError` naming the file and the problem: that it is a zip
with both members, the manifest's format, the zip CRCs, the payload's sha256 (and the HMAC when a key is given),
the feature schema version, the scikit-learn major version, and then the *types* inside the payload:
``skops.io.get_untrusted_types`` lists every type the payload would instantiate, and each must be a class from
scikit-learn, NumPy, SciPy or ``stormguard.models`` (functions are refused: a function reference is how a payload
would smuggle in a call). Only that checked list is passed to ``skops.io.loads`` — never ``trusted=True``.

The sha256 catches corruption and naive edits; someone who can rewrite the file can also rewrite the digest, which
is why the type allow-list (safety) and the optional key (authenticity) exist.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import json
import os
import platform
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "ALLOWED_MODULE_PREFIXES",
    "BUNDLE_FORMAT",
    "Bundle",
    "BundleError",
    "check_types",
    "fingerprint_frame",
    "library_versions",
    "load_bundle",
    "read_manifest",
    "save_bundle",
]

BUNDLE_FORMAT = "stormguard-model-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST_NAME = "stormguard-manifest.json"
PAYLOAD_NAME = "payload.skops"
#: Modules whose *classes* a payload may instantiate. Anything else (os, subprocess, builtins.eval, pandas, …)
#: makes the bundle refused before skops creates a single object.
ALLOWED_MODULE_PREFIXES: tuple[str, ...] = ("sklearn.", "numpy.", "scipy.", "stormguard.models.")
MAX_MANIFEST_BYTES = 1 << 20


class BundleError(ValueError):
    """A file that is not a usable bundle: it names the file and says what is wrong and what to do."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"model bundle {self.path} refused: {problem}")


@dataclass
class Bundle:
    """A loaded (or to-be-saved) bundle; ``estimators`` maps names (e.g. ``"ua"``) to fitted estimators."""

    estimators: dict[str, Any]
    kind: str
    schema_version: str
    data_fingerprint: str
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    path: Path | None = None


def library_versions() -> dict[str, str]:
    """Versions that decide whether a saved estimator still means the same thing when loaded."""
    import numpy
    import scipy
    import sklearn
    import skops

    try:
        from stormguard import __version__ as sg_version
    except ImportError:  # pragma: no cover - partial checkouts
        sg_version = "unknown"
    return {"python": platform.python_version(), "sklearn": sklearn.__version__, "numpy": numpy.__version__,
            "scipy": scipy.__version__, "skops": skops.__version__, "stormguard": str(sg_version)}


def fingerprint_frame(frame: Any, columns: Iterable[str] | None = None) -> str:
    """``sha256:<hex>`` of a table's columns and values in row order: the same data gives the same fingerprint
    across pandas versions and platforms (``hash_pandas_object`` promises neither), so a bundle says exactly what
    it was trained on."""
    cols = list(columns) if columns is not None else list(frame.columns)
    digest = hashlib.sha256()
    digest.update("\x1f".join(cols).encode("utf-8") + b"\x1e")
    for row in frame[cols].itertuples(index=False, name=None):
        cells = ["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in row]
        digest.update("\x1f".join(cells).encode("utf-8", errors="surrogatepass") + b"\x1e")
    return "sha256:" + digest.hexdigest()


def _jsonable(value: Any) -> Any:
    """Metrics as plain JSON values (NumPy scalars and arrays become numbers and lists; NaN stays NaN)."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _canonical(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "hmac_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode("utf-8")


def _sign(manifest: Mapping[str, Any], key: bytes) -> str:
    return hmac.new(key, _canonical(manifest), hashlib.sha256).hexdigest()


def save_bundle(
    path: str | os.PathLike[str],
    estimators: Mapping[str, Any],
    *,
    kind: str,
    schema_version: str,
    data_fingerprint: str,
    metrics: Mapping[str, Any] | None = None,
    key: bytes | None = None,
) -> Path:
    """Write a bundle atomically (temp file + rename, so a crash never leaves half a model); returns the path.

    Saving also checks the estimators' types against the allow-list, so a bundle that could not be loaded is never
    written.
    """
    import skops.io as sio

    path = Path(path)
    versions = library_versions()
    created = datetime.now(UTC).isoformat(timespec="seconds")
    meta = {"kind": kind, "schema_version": schema_version, "data_fingerprint": data_fingerprint,
            "metrics": _jsonable(dict(metrics or {})), "versions": versions, "created": created}
    payload = sio.dumps({"meta": meta, "estimators": dict(estimators)}, compression=zipfile.ZIP_DEFLATED)
    types = check_types(sio.get_untrusted_types(data=payload), path)
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION, **meta,
        "estimators": sorted(estimators), "types": types,
        "payload": PAYLOAD_NAME, "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    if key is not None:
        manifest["hmac_sha256"] = _sign(manifest, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True))
            zf.writestr(PAYLOAD_NAME, payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_types(types: Iterable[str], path: str | os.PathLike[str] = "<bundle>") -> list[str]:
    """The payload's non-default types if every one is an allowed *class*; otherwise :class:`BundleError`.

    Resolving a name imports only modules under the allowed prefixes (already-trusted libraries), never the
    module a hostile name points at.
    """
    refused: list[str] = []
    checked: list[str] = []
    for name in types:
        if not name.startswith(ALLOWED_MODULE_PREFIXES) or not _is_allowed_class(name):
            refused.append(name)
        else:
            checked.append(name)
    if refused:
        raise BundleError(path, "it holds types outside the allow-list (classes of scikit-learn, NumPy, SciPy, "
                                f"stormguard.models): {', '.join(sorted(refused))}")
    return sorted(checked)


def _is_allowed_class(name: str) -> bool:
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        if not (module_name + ".").startswith(ALLOWED_MODULE_PREFIXES):
            return False
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return isinstance(obj, type)
    return False


def _open(path: Path) -> tuple[dict[str, Any], bytes]:
    """Manifest and payload bytes of a bundle file, with the structural checks (zip, members, format, CRC)."""
    if not path.exists():
        raise BundleError(path, "no such file")
    if not zipfile.is_zipfile(path):
        raise BundleError(path, "not a zip archive, so not a stormguard bundle (truncated or overwritten?)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if MANIFEST_NAME not in names:
                hint = " (it looks like a bare skops file)" if "schema.json" in names else ""
                raise BundleError(path, f"no {MANIFEST_NAME} member: not a stormguard bundle{hint}")
            if zf.getinfo(MANIFEST_NAME).file_size > MAX_MANIFEST_BYTES:
                raise BundleError(path, "manifest is implausibly large")
            bad = zf.testzip()
            if bad is not None:
                raise BundleError(path, f"member {bad} is corrupt (CRC mismatch): the file was damaged or edited")
            try:
                manifest = json.loads(zf.read(MANIFEST_NAME).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise BundleError(path, f"manifest is not valid JSON ({exc})") from exc
            if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
                raise BundleError(path, f"manifest does not declare format {BUNDLE_FORMAT!r}")
            if int(manifest.get("format_version", 0)) > BUNDLE_FORMAT_VERSION:
                raise BundleError(path, f"bundle format version {manifest.get('format_version')} is newer than "
                                        f"this stormguard reads ({BUNDLE_FORMAT_VERSION}): upgrade stormguard")
            if PAYLOAD_NAME not in names:
                raise BundleError(path, f"no {PAYLOAD_NAME} member")
            payload = zf.read(PAYLOAD_NAME)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, KeyError) as exc:
        raise BundleError(path, f"unreadable zip archive ({exc})") from exc
    return manifest, payload


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a bundle (metrics, versions, fingerprint) without loading any estimator."""
    manifest, _ = _open(Path(path))
    return manifest


def _major(version: str) -> str:
    return str(version).split(".", 1)[0]


def _minor(version: str) -> str:
    return ".".join(str(version).split(".")[:2])


def load_bundle(
    path: str | os.PathLike[str],
    *,
    expected_schema: str | None = None,
    kind: str | None = None,
    key: bytes | None = None,
) -> Bundle:
    """Load a bundle after every check in the module docstring; :class:`BundleError` on any failure.

    ``expected_schema`` is the feature schema version the caller computes features with (e.g.
    :data:`stormguard.models.ua.FEATURE_SCHEMA_VERSION`); ``kind`` the expected bundle kind (``"ua"``); ``key``,
    when given, requires a valid HMAC. A different scikit-learn *minor* version only warns: estimators usually
    load, but their results may drift; a different major version is refused.
    """
    import skops.io as sio

    path = Path(path)
    manifest, payload = _open(path)
    if hashlib.sha256(payload).hexdigest() != manifest.get("payload_sha256"):
        raise BundleError(path, "payload sha256 does not match the manifest: the file was modified after saving")
    if key is not None:
        signature = manifest.get("hmac_sha256")
        if not isinstance(signature, str) or not hmac.compare_digest(signature, _sign(manifest, key)):
            raise BundleError(path, "HMAC signature missing or wrong for the given key: not saved by a key holder"
                                    " or modified since")
    if kind is not None and manifest.get("kind") != kind:
        raise BundleError(path, f"it holds a {manifest.get('kind')!r} model, expected {kind!r}")
    if expected_schema is not None and manifest.get("schema_version") != expected_schema:
        raise BundleError(path, f"feature schema {manifest.get('schema_version')!r} does not match this "
                                f"stormguard's {expected_schema!r}: retrain the model with this version")
    saved = dict(manifest.get("versions") or {})
    now = library_versions()
    if _major(saved.get("sklearn", "?")) != _major(now["sklearn"]):
        raise BundleError(path, f"saved with scikit-learn {saved.get('sklearn')}, running {now['sklearn']} (another "
                                "major version): retrain, or install the saving version")
    if _minor(saved.get("sklearn", "?")) != _minor(now["sklearn"]):
        warnings.warn(f"{path}: saved with scikit-learn {saved.get('sklearn')}, running {now['sklearn']}; "
                      "results may differ slightly", stacklevel=2)
    try:
        untrusted = sio.get_untrusted_types(data=payload)
    except Exception as exc:  # skops raises several kinds on malformed payloads
        raise BundleError(path, f"payload is not a readable skops file ({type(exc).__name__}: {exc})") from exc
    trusted = check_types(untrusted, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # skops' own version chatter; we checked above
            content = sio.loads(payload, trusted=trusted)
    except Exception as exc:
        raise BundleError(path, f"payload could not be loaded ({type(exc).__name__}: {exc})") from exc
    if not isinstance(content, dict) or not isinstance(content.get("estimators"), dict):
        raise BundleError(path, "payload does not hold a stormguard estimators table")
    meta = content.get("meta") or {}
    for name in ("kind", "schema_version", "data_fingerprint"):
        if meta.get(name) != manifest.get(name):
            raise BundleError(path, f"manifest and payload disagree on {name}: the manifest was edited")
    return Bundle(estimators=content["estimators"], kind=str(meta["kind"]), schema_version=str(meta["schema_version"]),
                  data_fingerprint=str(meta["data_fingerprint"]), metrics=dict(manifest.get("metrics") or {}),
                  versions=saved, created=str(manifest.get("created", "")), path=path)

