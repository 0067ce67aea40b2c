"""Training the behaviour scorer: inputs (raw captures/logs, record files, feature files) → feature table → bundle.

The functions here are what ``stormguard train|evaluate|score`` and ``bench/train.py`` share:

- :func:`load_feature_table` reads any mix of inputs into one feature table with a ``source_kind`` column. Raw
  captures and logs are replayed first (:func:`stormguard.features.replay.replay`); records (from replays or
  files) are split by source family (:func:`~stormguard.models.behaviour.source_family`) and each family gets its
  own :func:`~stormguard.features.clients.windows.client_features` table, because a log line is a request and a capture
  row a connection.
- :func:`read_labels` reads ``key label`` pairs (the Iliou annotation format, or a CSV with ``key``/``label``).
- :func:`train_model` fits a :class:`~stormguard.models.behaviour.ReputationModel` and :func:`save_model` /
  :func:`load_model` write and read its bundle (kind ``behaviour``, schema :data:`SCHEMA_VERSION`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .behaviour import BEHAVIOUR_SCHEMA_VERSION, BehaviourModel, ReputationModel, source_family
from .mapping import ReputationMapping

__all__ = ["SCHEMA_VERSION", "BUNDLE_KIND", "as_labels", "features_from_records", "load_feature_table",
           "load_model", "read_labels", "reputation_template", "save_model", "train_model"]

BUNDLE_KIND = "behaviour"


def _schema_version() -> str:
    from stormguard.features.clients.vector import FEATURE_SCHEMA_VERSION as VECTOR

    from .ua import FEATURE_SCHEMA_VERSION as UA

    return f"{BEHAVIOUR_SCHEMA_VERSION};client-features/{VECTOR};{UA}"


#: What a behaviour bundle must have been saved with: behaviour features, client features and UA features.
SCHEMA_VERSION = _schema_version()

Progress = Callable[[str], None]


def features_from_records(records: pd.DataFrame, key: str = "src_ip", window: float | None = None) -> pd.DataFrame:
    """Per source family, :func:`client_features` of that family's records, with a ``source_kind`` column."""
    from stormguard.features.clients.windows import client_features, features_frame

    if not len(records):
        return features_frame([]).assign(source_kind=pd.Series([], dtype="string"))
    kinds = records["source_kind"] if "source_kind" in records.columns else pd.Series([None] * len(records))
    families = np.array([source_family(k) for k in kinds.astype("object").to_numpy()], dtype=object)
    parts = []
    for fam in sorted(set(families)):
        part = records.loc[families == fam] if len(set(families)) > 1 else records
        feats = client_features(part, key=key, window=window)
        parts.append(feats.assign(source_kind=fam))
    return pd.concat(parts, ignore_index=True)


def _kind_of_table(path: Path) -> str | None:
    """``features`` or ``records`` for a table file we can read, else None (a raw capture/log)."""
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        import pyarrow.parquet as pq

        names = set(pq.read_schema(path).names)
    elif suffix == ".csv":
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            names = {c.strip() for c in fh.readline().split(",")}
    else:
        return None
    if {"key", "n_conn", "conn_rate_per_min"} <= names:
        return "features"
    if {"ts", "src_ip"} <= names:
        return "records"
    return None


def load_feature_table(inputs: Sequence[str | Path], *, key: str = "src_ip", window: float | None = None,
                       log_format: str = "auto", log_fields: Mapping[str, str] | None = None,
                       source_kind: str = "other", progress: Progress | None = None,
                       show_progress: bool | None = None) -> pd.DataFrame:
    """Feature files are read as they are (their ``source_kind`` column, else ``source_kind``); record files and
    raw inputs (replayed together) are turned into features with ``key`` and ``window`` (None = whole input)."""
    from stormguard.features.clients.windows import read_features

    from stormguard.schema import read_records

    say = progress or (lambda _m: None)
    tables: list[pd.DataFrame] = []
    records: list[pd.DataFrame] = []
    raw: list[str] = []
    for item in inputs:
        path = Path(item)
        kind = _kind_of_table(path) if path.is_file() else None
        if kind == "features":
            feats = read_features(path)
            if "source_kind" not in feats.columns:
                feats = feats.assign(source_kind=source_kind)
            say(f"features: {len(feats):,} clients from {path}")
            tables.append(feats)
        elif kind == "records":
            recs = read_records(path)
            say(f"records: {len(recs):,} from {path}")
            records.append(recs)
        else:
            raw.append(str(path))
    if raw:
        from stormguard.features.replay import replay

        from stormguard.report import ReplayStats

        stats = ReplayStats()
        recs = replay(raw, stats, log_format=log_format, log_fields=log_fields, show_progress=show_progress)
        say(f"replayed {len(recs):,} records from {stats.files} file(s)")
        for reason, n in stats.skipped.most_common():  # bad input is counted and located, never silently dropped
            say(f"skipped {n:,}: {reason}")
        for problem in stats.problems[:10]:
            say(f"warning: {problem}")
        if len(stats.problems) > 10:
            say(f"warning: ... and {len(stats.problems) - 10} more problem(s)")
        records.append(recs)
    if records:
        allrec = pd.concat(records, ignore_index=True) if len(records) > 1 else records[0]
        feats = features_from_records(allrec, key=key, window=window)
        say(f"features: {len(feats):,} clients (key={key}, window={window or 'whole input'}) from "
            f"{len(allrec):,} records")
        tables.append(feats)
    if not tables:
        raise ValueError("no input gave any client")
    out = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    return out.reset_index(drop=True)


_BAD = {"bot", "bots", "crawler", "moderate_bot", "advanced_bot", "abusive", "bad", "malicious", "1", "true", "yes"}
_GOOD = {"human", "humans", "browser", "normal", "good", "benign", "0", "false", "no"}


def as_labels(values: Iterable[Any]) -> np.ndarray:
    """Labels as 1 (abusive/bot) / 0 (human/normal) / NaN (unknown or empty)."""
    out = []
    for v in values:
        s = str(v).strip().lower() if v is not None and not (isinstance(v, float) and math.isnan(v)) else ""
        out.append(1.0 if s in _BAD else 0.0 if s in _GOOD else math.nan)
    return np.asarray(out, dtype=np.float64)


def read_labels(paths: str | Path | Sequence[str | Path]) -> dict[str, float]:
    """``{key: 0/1}`` from one or more label files: lines ``key label`` (whitespace or comma separated; the Iliou
    annotations), or a CSV with a header naming ``key`` (or ``session``/``src_ip``) and ``label`` columns. A key
    labelled differently in two files is dropped."""
    if isinstance(paths, str | Path):
        paths = [paths]
    labels: dict[str, float] = {}
    conflicts: set[str] = set()
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file())
            sub = read_labels(files) if files else {}
            pairs = list(sub.items())
        else:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            head = [c.strip().lower() for c in lines[0].replace("\t", ",").split(",")] if lines else []
            pairs = []
            if "label" in head and any(c in head for c in ("key", "session", "src_ip")):
                frame = pd.read_csv(path, dtype=str, keep_default_na=False)
                frame.columns = [c.strip().lower() for c in frame.columns]
                kcol = next(c for c in ("key", "session", "src_ip") if c in frame.columns)
                pairs = list(zip(frame[kcol], as_labels(frame["label"]), strict=True))
            else:
                for line in lines:
                    parts = line.replace(",", " ").split()
                    if len(parts) >= 2 and not line.lstrip().startswith("#"):
                        pairs.append((parts[0], float(as_labels([parts[-1]])[0])))
        for k, v in pairs:
            if math.isnan(v):
                continue
            if k in labels and labels[k] != v:
                conflicts.add(k)
            labels[k] = v
    for k in conflicts:
        labels.pop(k, None)
    return labels


def label_vector(features: pd.DataFrame, labels: Mapping[str, float]) -> np.ndarray:
    """Labels aligned with the feature rows (by ``key``; NaN where unlabelled)."""
    return features["key"].astype("object").map(labels).astype("float64").to_numpy()


def train_model(features: pd.DataFrame, labels: Mapping[str, float] | None = None, *, ua_model: Any = None,
                config: Any = None, n_clusters: int = 6, n_estimators: int = 100, prior_bad: float = 0.02,
                bad_ja3_paths: Sequence[str] = (), known_ja3_paths: Sequence[str] = (), min_kind_clients: int = 30,
                random_state: int = 0, progress: Progress | None = None) -> ReputationModel:
    """Fit a :class:`ReputationModel` (mapping anchors from ``config``'s reputation section)."""
    model = reputation_template(ua_model=ua_model, config=config, n_clusters=n_clusters, n_estimators=n_estimators,
                                prior_bad=prior_bad, bad_ja3_paths=bad_ja3_paths, known_ja3_paths=known_ja3_paths,
                                min_kind_clients=min_kind_clients, random_state=random_state)
    y = label_vector(features, labels) if labels else None
    return model.fit(features, y, progress=progress)


def reputation_template(*, ua_model: Any = None, config: Any = None, n_clusters: int = 6, n_estimators: int = 100,
                        prior_bad: float = 0.02, bad_ja3_paths: Sequence[str] = (),
                        known_ja3_paths: Sequence[str] = (), min_kind_clients: int = 30, random_state: int = 0,
                        rules: bool = False, ua_inputs: bool = True) -> ReputationModel:
    """The unfitted :class:`ReputationModel` :func:`train_model` fits (``rules``: the named content rules too, as
    :func:`stormguard.models.combined.fit_combined` uses it; ``ua_inputs`` False: the UA model's outputs are not
    behaviour inputs, only the gated evidence of :meth:`~stormguard.models.mapping.ReputationMapping.combine`)."""
    behaviour = BehaviourModel(n_clusters=n_clusters, n_estimators=n_estimators, bad_ja3_paths=tuple(bad_ja3_paths),
                               known_ja3_paths=tuple(known_ja3_paths), random_state=random_state, use_ua=ua_inputs)
    mapping = ReputationMapping.from_config(config, prior_bad=prior_bad)
    return ReputationModel(behaviour=behaviour, mapping=mapping, ua_model=ua_model,
                           min_kind_clients=min_kind_clients, rules=rules)


def save_model(path: str | Path, model: ReputationModel, features: pd.DataFrame, metrics: Mapping[str, Any],
               key: bytes | None = None) -> Path:
    from .bundle import fingerprint_frame, save_bundle

    cols = [c for c in ("key", "window_start", "source_kind", "n_conn", "conn_rate_per_min", "ua_mode", "ja3_mode")
            if c in features.columns]
    fingerprint = fingerprint_frame(features, cols)
    return save_bundle(path, {"behaviour": model}, kind=BUNDLE_KIND, schema_version=SCHEMA_VERSION,
                       data_fingerprint=fingerprint, metrics=dict(metrics), key=key)


def load_model(path: str | Path, key: bytes | None = None) -> tuple[ReputationModel, Any]:
    """The model and its :class:`~stormguard.models.bundle.Bundle` (refused with a clear error when the bundle was
    modified, is of another kind, or was saved for other feature schemas)."""
    from .bundle import BundleError, load_bundle

    bundle = load_bundle(path, expected_schema=SCHEMA_VERSION, kind=BUNDLE_KIND, key=key)
    model = bundle.estimators.get("behaviour")
    if not isinstance(model, ReputationModel):
        raise BundleError(path, "it holds no behaviour model")
    return model, bundle
