"""The UA model's small-batch path (models/ua_fast.py) computes what the fitted pipelines compute.

``UAModel.transform`` takes the fast path for batches of at most ``FAST_MAX`` UAs (live micro-batches) and the
scikit-learn pipelines for larger ones; the two must give the same cluster, distance and bot probability for the
same UA, including hostile ones, for a model fitted with and without labels, and after a refit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stormguard.models.combined import DEFAULT_UA_PARAMS
from stormguard.models.ua import UAModel, as_bot_labels, normalize_ua
from stormguard.models.ua_fast import FAST_MAX, fast_transform
from test_ua_model import synthetic

HOSTILE = ["", None, "x" * 5000, "Mozilla/5.0 \x00\u202e ${jndi:ldap://a/b} <script>", b"\xff\xfe curl/8", 12345]


def _both_paths(model: UAModel, uas: list[object]) -> tuple[np.ndarray, np.ndarray]:
    """Pipelines (one batch larger than FAST_MAX) and fast path (chunks of FAST_MAX) over the same UAs."""
    padded = list(uas) + ["pad"] * max(0, FAST_MAX + 1 - len(uas))
    slow = model.transform(padded)[: len(uas)]
    fast = np.vstack([model.transform(uas[i:i + FAST_MAX]) for i in range(0, len(uas), FAST_MAX)])
    return slow, fast


def _agree(slow: np.ndarray, fast: np.ndarray) -> None:
    np.testing.assert_array_equal(slow[:, 0], fast[:, 0])       # cluster
    np.testing.assert_array_equal(slow[:, 1], fast[:, 1])       # distance, bit for bit (batch = live)
    np.testing.assert_allclose(slow[:, 2], fast[:, 2], rtol=0, atol=1e-12)  # probability (summation order)


def test_fast_path_agrees_with_pipelines() -> None:
    frame = synthetic()
    uas = frame["user_agent"].tolist() + HOSTILE
    model = UAModel(random_state=0, **DEFAULT_UA_PARAMS).fit(frame["user_agent"].tolist(), frame["label"])
    assert fast_transform(model, uas[:3], normalize_ua) is not None  # the fast path really runs for this layout
    _agree(*_both_paths(model, uas))
    unlabelled = UAModel(random_state=0, **DEFAULT_UA_PARAMS).fit(frame["user_agent"].tolist())
    slow, fast = _both_paths(unlabelled, uas)
    assert np.isnan(fast[:, 2]).all() and np.isnan(slow[:, 2]).all()
    _agree(np.nan_to_num(slow), np.nan_to_num(fast))


def test_refit_is_seen_by_the_fast_path() -> None:
    frame = synthetic()
    model = UAModel(random_state=0, n_clusters=4, n_components=4, n_features=2**10)
    model.fit(frame["user_agent"].tolist(), frame["label"])
    before = model.transform(["curl/8.4.0"])
    other = synthetic(seed=5).iloc[::2]
    flipped = other["label"].map({"bot": "browser", "browser": "bot"})  # a different model: labels swapped
    model.fit(other["user_agent"].tolist(), flipped)
    after = model.transform(["curl/8.4.0"])
    assert after[0, 2] != before[0, 2]
    _agree(*_both_paths(model, frame["user_agent"].tolist()[:100]))


@pytest.mark.corpus
def test_fast_path_on_ua_dev(corpus: Path) -> None:
    frame = pd.read_csv(corpus / "ua" / "ua_dev.csv", dtype=str, keep_default_na=False)
    model = UAModel(random_state=0, **DEFAULT_UA_PARAMS).fit(frame["user_agent"].tolist(),
                                                             as_bot_labels(frame["label"]))
    _agree(*_both_paths(model, frame["user_agent"].tolist()[::5]))
