"""Batch scoring that fills the reputation store: a score table (``stormguard score``) → ``store.load_scores``.

A client key can have several rows in a score table (one per window, or per source kind when a key occurs in
both captures and logs). The store keeps one score per key, so the rows of a key are reduced first: the **latest
window** counts (reputation is about now), and among rows of that window the **lowest** score (the most
suspicious view wins, as the store's own rules only ever subtract). Keys are then grouped by their profile so
each group goes to the store in one pipelined ``load_scores`` call with the reason ``model:<profile>`` (the
store API takes one reason per call; Redis sends it in chunks of 1,000 keys, 8 script calls per round trip).
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

__all__ = ["fill_store", "reduce_per_key"]


def reduce_per_key(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per ``key``: latest ``window_start`` (when present), then lowest ``score``."""
    if not len(scores):
        return scores
    frame = scores
    sort_cols, ascending = ["key"], [True]
    if "window_start" in frame.columns:
        frame = frame.assign(_w=frame["window_start"].fillna(float("-inf")))
        sort_cols.append("_w")
        ascending.append(False)
    sort_cols.append("score")
    ascending.append(True)
    frame = frame.sort_values(sort_cols, ascending=ascending, kind="stable")
    out = frame.drop_duplicates("key", keep="first")
    return out.drop(columns=["_w"], errors="ignore").reset_index(drop=True)


def fill_store(scores: pd.DataFrame, store: Any, *, now: float | None = None, reason_prefix: str = "model") -> int:
    """Load a score table into ``store`` (a :class:`~stormguard.scoring.stores.sync.SyncStore` or an async
    store run on its own loop by the caller); returns how many keys were written."""
    import asyncio

    from stormguard.scoring.stores.sync import SyncStore

    per_key = reduce_per_key(scores)
    if not len(per_key):
        return 0
    now = time.time() if now is None else now
    profiles = per_key["profile"].astype(str) if "profile" in per_key.columns else pd.Series(["score"] * len(per_key))
    written = 0
    for profile, rows in per_key.groupby(profiles.to_numpy(), sort=True):
        pairs = list(zip(rows["key"].astype(str).tolist(), rows["score"].astype(float).tolist(), strict=True))
        reason = f"{reason_prefix}:{profile}"
        if isinstance(store, SyncStore):
            written += store.load_scores(pairs, now=now, reason=reason)
        else:
            written += asyncio.run(store.load_scores(pairs, now=now, reason=reason))
    return written
