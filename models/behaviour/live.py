"""Micro-batch scoring for a running server (an LRU of UA outputs in front of a fitted reputation model)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from stormguard.models.behaviour.reputation import ReputationModel


class LiveScorer:
    """Micro-batch scoring for a running server: a fitted :class:`ReputationModel` plus an LRU of UA outputs
    (live clients repeat a few UAs, and the UA model is the costly step). Not saved; build one per process."""

    def __init__(self, model: ReputationModel, ua_cache_size: int = 65536) -> None:
        self.model = model
        self.cache: _LRU = _LRU(ua_cache_size)

    def score(self, vectors: pd.DataFrame | Sequence[Mapping[str, Any]], source_kind: str = "live") -> pd.DataFrame:
        frame = vectors if isinstance(vectors, pd.DataFrame) else pd.DataFrame(list(vectors))
        if "source_kind" not in frame.columns:
            frame = frame.assign(source_kind=source_kind)
        return self.model.score_frame(frame, ua_cache=self.cache)


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        if len(self) > self.size:
            self.popitem(last=False)

