"""Which feature-table columns the behaviour models read, how each is scaled, and which population a row belongs to."""

from __future__ import annotations

from typing import Any

#: Version of the behaviour feature definition; bundles record it together with the client-feature schema version
#: (:data:`stormguard.features.clients.vector.FEATURE_SCHEMA_VERSION`) and are refused when either changed.
#: 2: request-content model and rules (issue 12).
BEHAVIOUR_SCHEMA_VERSION = "behaviour-features/2"

PROFILES = ("steady subscriber", "flapping reconnector", "scraper", "burst")

#: Counts, rates and durations: heavy-tailed, so ``log1p`` before scaling.
LOG_COLUMNS = ("n_conn", "conn_rate_per_min", "reconnects_10s", "short_lived_2s", "mean_interarrival",
               "min_interarrival", "distinct_header_orders", "distinct_uas", "distinct_ja3", "distinct_ja4")
SHARE_COLUMNS = ("ua_missing_share", "ua_browser_share", "tls_library_share", "ua_tls_mismatch_share", "error_share",
                 "header_entropy_mean")
UA_COLUMNS = ("ua_bot_probability", "ua_distance")
CATEGORICAL_COLUMNS = ("ja3_mode", "ja4_mode", "header_order_mode", "ua_mode")
#: Direction in which a feature is suspicious (+1: high is suspicious, -1: low is); used only to word reasons.
LOW_IS_BAD = {"mean_interarrival", "min_interarrival", "ua_browser_share", "header_entropy_mean"}


def source_family(kind: Any) -> str:
    """Record ``source_kind`` → the population a model is fitted for: ``log`` (any access log, JSON lines),
    ``capture`` (pcap/pcapng), ``har``, ``live``; anything else is ``other``."""
    if kind is None or (isinstance(kind, float) and kind != kind):
        return "other"
    k = str(kind).lower()
    if k.startswith("log") or k == "jsonl":
        return "log"
    if k in ("pcap", "pcapng", "capture"):
        return "capture"
    if k in ("har", "live"):
        return k
    return "other"
