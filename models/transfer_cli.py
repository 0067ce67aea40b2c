"""``stormguard evaluate MODEL --loso CORPUS``: the leave-one-source-out headline for a saved bundle."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def evaluate_loso(model: Any, corpus: Path, json_path: str | None, say: Callable[[str], None]) -> int:
    """Build the labelled sources, run :func:`stormguard.models.transfer.loso_for_model`, print the report."""
    from stormguard.models.sources import corpus_sources
    from stormguard.models.transfer import format_report, loso_for_model

    if not corpus.is_dir():
        raise ValueError(f"{corpus}: no such corpus folder")
    table = corpus_sources(corpus, progress=say)
    for reason, n in sorted(table.skipped.items()):
        say(f"skipped {n:,}: {reason}")
    result = loso_for_model(model, table.features, progress=say)
    print(format_report(result, table.lf_table))
    if json_path:
        doc = {"metrics": result["metrics"], "metrics_origin_only": result["metrics_origin_only"],
               "bundle_knots": result["bundle_knots"], "fold_knots": result["fold_knots"],
               "metrics_bundle_knots": result.get("metrics_bundle_knots"),
               "importance_in_sample": result["importance_in_sample"],
               "importance_held_out": result.get("importance_held_out"),
               "labelling_functions": table.lf_table.to_dict("records"), "skipped": table.skipped}
        Path(json_path).write_text(json.dumps(doc, indent=2, default=float), encoding="utf-8")
    return 0
