"""Encoders for categorical fingerprints (JA3/JA4 hashes, header-order fingerprints, User-Agents).

A fingerprint is a label, not a number, and there are too many of them (and new ones every day) for one-hot
columns. Two encodings carry what matters to a reputation model:

- :class:`FrequencyEncoder` — *how common* the value was among the training clients, as a rarity in decades:
  ``rarity = -log10((count + 1) / (n + 1))``. A fingerprint shared by half the clients is ~0.3, one seen once among
  a million is ~6, an unseen one is ``log10(n + 1)`` (the rarest possible). Missing values (no TLS in a log, no
  headers) are a category of their own, so "no fingerprint" is as common as it was in training.
- :class:`KnownListEncoder` — membership in reference lists the operator configures (e.g. abuse.ch SSLBL for
  malware JA3s, salesforce/trisul lists of JA3 → application). The lists are *read from the configured paths at fit
  time* and kept as fitted state (sets of hashes), so a saved bundle carries the lists it was trained with and no
  list file is ever copied into the project.

Both follow scikit-learn conventions: parameters in ``__init__``, learned state ending in ``_``, a DataFrame in and
a float64 array out, ``get_feature_names_out`` for the column names.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

__all__ = ["FrequencyEncoder", "KnownListEncoder", "MISSING", "load_ja3_list"]

#: The category every null value becomes (never a real fingerprint: it holds a control character).
MISSING = "\x00missing"

_MD5 = re.compile(r"^[0-9a-f]{32}$")
#: Descriptions in mixed JA3 → application lists that mark an entry as a malicious client.
DEFAULT_BAD_PATTERN = (r"malware|trojan|botnet|\brat\b|ransom|emotet|trickbot|dridex|tofsee|cobalt ?strike|"
                       r"\bc2\b|backdoor|stealer|keylogger|miner")


def _as_frame(X: Any, columns: Sequence[str]) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return X
    if isinstance(X, dict):
        return pd.DataFrame(X)
    frame = pd.DataFrame(X)
    if frame.shape[1] == len(columns):
        frame.columns = list(columns)
    return frame


def _values(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A column as an object array of strings, nulls (and absent columns) as :data:`MISSING`."""
    if column not in frame.columns:
        return np.full(len(frame), MISSING, dtype=object)
    series = frame[column]
    out = series.astype("object").to_numpy(dtype=object, copy=True)
    out[series.isna().to_numpy()] = MISSING
    return out


def _factorized(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, Any]:
    """Codes (-1 = null or absent column) and distinct values, without turning Arrow strings into Python objects
    row by row (only the distinct values are)."""
    if column not in frame.columns:
        return np.full(len(frame), -1, dtype=np.int64), []
    codes, uniques = pd.factorize(frame[column], use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), list(uniques)


class FrequencyEncoder(TransformerMixin, BaseEstimator):
    """Rarity of each categorical value among the training rows, in decades (see module docstring).

    ``max_categories`` bounds the fitted table (the most frequent values are kept; the rest are treated as
    unseen, i.e. maximally rare), so a bundle stays small however many fingerprints training saw.
    """

    def __init__(self, columns: Sequence[str] = ("ja3_mode", "ja4_mode", "header_order_mode", "ua_mode"),
                 max_categories: int = 100_000) -> None:
        self.columns = columns
        self.max_categories = max_categories

    def fit(self, X: Any, y: Any = None) -> FrequencyEncoder:
        frame = _as_frame(X, self.columns)
        self.n_rows_ = int(len(frame))
        self.counts_: dict[str, dict[str, int]] = {}
        for col in self.columns:
            counts = pd.Series(_values(frame, col)).value_counts(sort=True)
            counts = counts.iloc[: self.max_categories]
            self.counts_[col] = {str(k): int(v) for k, v in counts.items()}
        self.n_features_in_ = len(self.columns)
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "counts_")
        frame = _as_frame(X, self.columns)
        out = np.empty((len(frame), len(self.columns)), dtype=np.float64)
        denom = math.log10(self.n_rows_ + 1)
        for j, col in enumerate(self.columns):
            codes, uniques = _factorized(frame, col)
            table = self.counts_[col]
            # once per distinct value; the last slot is the missing category (code -1)
            counts = np.array([table.get(str(u), 0) for u in uniques] + [table.get(MISSING, 0)], dtype=np.float64)
            rarity = denom - np.log10(counts + 1.0)
            out[:, j] = rarity[codes] if len(codes) else np.empty(0)
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray([f"rarity_{c}" for c in self.columns], dtype=object)


def load_ja3_list(path: str | Path, bad_pattern: str = DEFAULT_BAD_PATTERN) -> tuple[dict[str, str], set[str]]:
    """``({ja3_md5: description}, {ja3_md5 marked bad})`` from one list file.

    Understood formats (by content, not by name): abuse.ch SSLBL CSV (``# ja3_md5,Firstseen,Lastseen,
    Listingreason`` — every entry is bad), two-column CSV ``md5,application`` (salesforce), JSON lines or a JSON
    array of objects with ``ja3_hash`` and ``desc`` (trisulnsm). An entry whose description matches
    ``bad_pattern`` is bad too. Lines that hold no MD5 are skipped.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    pattern = re.compile(bad_pattern, re.I)
    known: dict[str, str] = {}
    bad: set[str] = set()
    all_bad = "sslbl" in text[:2000].lower() or "listingreason" in text[:2000].lower()
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        objs: Iterable[Any]
        try:
            loaded = json.loads(stripped)
            objs = loaded if isinstance(loaded, list) else [loaded]
        except json.JSONDecodeError:
            objs = []
            for line in stripped.splitlines():
                try:
                    objs.append(json.loads(line))  # type: ignore[union-attr]
                except json.JSONDecodeError:
                    continue
        for obj in objs:
            if not isinstance(obj, dict):
                continue
            md5 = str(obj.get("ja3_hash") or obj.get("ja3") or obj.get("md5") or "").strip().lower()
            if _MD5.match(md5):
                desc = str(obj.get("desc") or obj.get("application") or "")
                known[md5] = desc
                if all_bad or pattern.search(desc):
                    bad.add(md5)
        return known, bad
    for row in csv.reader(io.StringIO(text)):
        if not row or row[0].lstrip().startswith("#"):
            continue
        md5 = row[0].strip().lower()
        if not _MD5.match(md5):
            continue
        desc = ",".join(row[1:]).strip()
        known[md5] = desc
        if all_bad or pattern.search(desc):
            bad.add(md5)
    return known, bad


class KnownListEncoder(TransformerMixin, BaseEstimator):
    """Two 0/1 columns per row: the JA3 is on a *bad* list, the JA3 is on *any* configured list.

    ``bad_paths`` are lists whose every entry is bad (SSLBL); ``known_paths`` lists of JA3 → application, whose
    entries count as bad only when their description matches ``bad_pattern``. The lists are read at ``fit`` and
    kept in ``bad_`` / ``known_`` (the bundle carries them; the files need not exist where the model is used).
    """

    def __init__(self, column: str = "ja3_mode", bad_paths: Sequence[str] = (), known_paths: Sequence[str] = (),
                 bad_pattern: str = DEFAULT_BAD_PATTERN) -> None:
        self.column = column
        self.bad_paths = bad_paths
        self.known_paths = known_paths
        self.bad_pattern = bad_pattern

    def fit(self, X: Any = None, y: Any = None) -> KnownListEncoder:
        known: dict[str, str] = {}
        bad: set[str] = set()
        for p in self.bad_paths:
            k, _ = load_ja3_list(p, self.bad_pattern)
            known.update(k)
            bad.update(k)
        for p in self.known_paths:
            k, b = load_ja3_list(p, self.bad_pattern)
            known.update(k)
            bad.update(b)
        # dict of str -> str/int only: what skops stores without custom types
        self.known_: dict[str, str] = dict(sorted(known.items()))
        self.bad_: dict[str, int] = {h: 1 for h in sorted(bad)}
        self.n_features_in_ = 1
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "known_")
        frame = _as_frame(X, [self.column])
        codes, uniques = _factorized(frame, self.column)
        low = [str(u).lower() for u in uniques]
        is_bad = np.array([u in self.bad_ for u in low] + [False], dtype=np.float64)
        is_known = np.array([u in self.known_ for u in low] + [False], dtype=np.float64)
        if not len(codes):
            return np.empty((0, 2))
        return np.column_stack([is_bad[codes], is_known[codes]])

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(["ja3_listed_bad", "ja3_listed_known"], dtype=object)
