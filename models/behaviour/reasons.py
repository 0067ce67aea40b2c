"""Reason strings: which evidence moved a client's score and which features deviated most."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from stormguard.models.behaviour.columns import LOW_IS_BAD

_TAGS = (("anomaly", 1.0, "rare behaviour"), ("ua", 1.0, "bot-like UA"), ("ja3_list", 0.5, "JA3 on a bad list"),
         ("classifier", 1.0, "classifier: abusive"))


def reason_strings(Z: np.ndarray, names: Sequence[str], ev: Mapping[str, np.ndarray], threshold: float = 2.0) -> np.ndarray:
    """Per row: the evidence that moved the score (rare behaviour, bot-like UA, listed JA3, classifier), then up
    to two features most deviating in their suspicious direction (scaled value ≥ ``threshold``). Vectorised: rows
    are coded as (evidence bits, feature 1, feature 2) and each distinct code is worded once."""
    n, f = Z.shape
    if n == 0:
        return np.empty(0, dtype=object)
    sign = np.array([-1.0 if nm in LOW_IS_BAD else 1.0 for nm in names])
    word = [f"{nm} {'low' if s < 0 else 'high'}" for nm, s in zip(names, sign, strict=True)]
    signed = Z * sign
    rows = np.arange(n)
    i1 = signed.argmax(axis=1)
    v1 = signed[rows, i1]
    signed[rows, i1] = -np.inf
    i2 = signed.argmax(axis=1) if f > 1 else i1
    v2 = signed[rows, i2] if f > 1 else np.full(n, -np.inf)
    a = np.where(v1 >= threshold, i1, -1) + 1
    b = np.where(v2 >= threshold, i2, -1) + 1
    bits = np.zeros(n, dtype=np.int64)
    for j, (key, th, _) in enumerate(_TAGS):
        if key in ev:
            bits |= (np.asarray(ev[key]) >= th).astype(np.int64) << j
    code = (bits * (f + 1) + a) * (f + 1) + b
    present = np.zeros(int(code.max()) + 1, dtype=bool)  # a dense "unique": codes are small, no sort needed
    present[code] = True
    uniq = np.flatnonzero(present)
    lookup = np.zeros(len(present), dtype=np.int64)
    lookup[uniq] = np.arange(len(uniq))
    inverse = lookup[code]
    texts = []
    for c in uniq.tolist():
        rest, bb = divmod(c, f + 1)
        bits_c, aa = divmod(rest, f + 1)
        parts = [text for j, (_, _, text) in enumerate(_TAGS) if bits_c >> j & 1]
        parts += [word[x - 1] for x in (aa, bb) if x]
        texts.append("; ".join(parts))
    return pd.Categorical.from_codes(inverse, categories=texts)  # texts are distinct: (bits, a, b) with a != b
