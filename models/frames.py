"""Feature-table column helpers shared by the behaviour models and the content model (no model code here, so both
can import it without importing each other)."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["numeric_column"]


def numeric_column(frame: pd.DataFrame, col: str) -> np.ndarray:
    """``frame[col]`` as float64 (NaN for nulls and unparseable values; all-NaN when the column is absent)."""
    if col not in frame.columns:
        return np.full(len(frame), np.nan)
    s = frame[col]
    if s.dtype == np.float64:
        return s.to_numpy(copy=False)
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return s.to_numpy(dtype=np.float64, na_value=np.nan)  # Int64 & co: no per-value parsing
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)

