"""Profile names for behaviour clusters, from their median traits."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from stormguard.models.frames import numeric_column


def name_profiles(traits: pd.DataFrame, overall: Mapping[str, float], informative: Mapping[str, bool]) -> list[str]:
    """Name each cluster from its median traits (one row per cluster), by this rule, first match wins:

    1. **scraper** — automated-looking (median ``ua_browser_share`` < 0.5, or median UA bot probability ≥ 0.5;
       a cluster without UAs, e.g. TLS-only captures, is not) and at least as many connections as the median
       client;
    2. **flapping reconnector** — when connection durations are informative in this population (they vary;
       in access logs every request "ends" when it starts, so they do not): median short-lived share ≥ 0.5 and
       reconnect share ≥ 0.5;
    3. **burst** — connection rate ≥ 4 × the median client's and reconnect share ≥ 0.5;
    4. **steady subscriber** — everything else.
    """
    names = []
    for _, t in traits.iterrows():
        bot = t.get("ua_bot_probability", np.nan)
        browser = t["ua_browser_share"]  # NaN when the cluster's clients sent no UA (TLS only): not evidence
        automated = (not np.isnan(browser) and browser < 0.5) or (not np.isnan(bot) and bot >= 0.5)
        if automated and t["n_conn"] >= overall["n_conn"]:
            names.append("scraper")
        elif informative.get("short_lived_share", False) and t["short_lived_share"] >= 0.5 \
                and t["reconnect_share"] >= 0.5:
            names.append("flapping reconnector")
        elif t["conn_rate_per_min"] >= 4 * overall["conn_rate_per_min"] and t["reconnect_share"] >= 0.5:
            names.append("burst")
        else:
            names.append("steady subscriber")
    return names


def cluster_traits(X: pd.DataFrame) -> pd.DataFrame:
    n_conn = numeric_column(X, "n_conn")
    n_closed = numeric_column(X, "n_closed")
    with np.errstate(divide="ignore", invalid="ignore"):
        out = pd.DataFrame({
            "n_conn": n_conn,
            "conn_rate_per_min": numeric_column(X, "conn_rate_per_min"),
            "reconnect_share": np.where(n_conn > 0, numeric_column(X, "reconnects_10s") / n_conn, np.nan),
            "short_lived_share": np.where(n_closed > 0, numeric_column(X, "short_lived_2s") / n_closed, np.nan),
            "ua_browser_share": numeric_column(X, "ua_browser_share"),
            "ua_bot_probability": numeric_column(X, "ua_bot_probability"),
            "error_share": numeric_column(X, "error_share"),
        })
    return out

