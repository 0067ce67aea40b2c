"""Many inputs (captures, logs, folders) → one table of connection records.

Files are recognised by content (:mod:`.sniff`), never by name, so a capture called ``access.log`` is still read
as a capture. Every reader reports what it skipped to one :class:`~stormguard.report.ReplayStats`; nothing here
raises on bad input: a file that cannot be read is refused with a reason and the run goes on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from stormguard.report import ReplayStats
from stormguard.schema import HEADER_NAME_SEP, records_frame

from .headers import header_entropy, header_order_fingerprint
from .sniff import describe_refusal, sniff

Progress = Callable[[int], None]


def expand_inputs(inputs: Iterable[str | Path], stats: ReplayStats) -> list[Path]:
    """Files named directly plus every regular file under named folders (recursively, sorted, hidden skipped)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            stats.files_refused += 1
            stats.warn(str(path), "no such file or folder", reason="input not found")
    return files


def read_file(path: Path, stats: ReplayStats, *, log_format: str = "auto",
              log_fields: Mapping[str, str] | None = None, progress: Progress | None = None
              ) -> Iterator[dict[str, Any]]:
    """Yield the records of one file, whatever its kind; refuse (with a reason) what is not an input."""
    try:
        kind = sniff(path)
    except OSError as exc:
        stats.files_refused += 1
        stats.warn(str(path), f"cannot read: {exc.strerror or exc}", reason="unreadable file")
        return
    if kind is None:
        stats.files_refused += 1
        stats.warn(str(path), f"refused: {describe_refusal(path)}", reason="not a capture or log")
        return
    stats.files += 1
    if kind in ("pcap", "pcapng"):
        from .capture import read_capture

        rows = read_capture(path, stats, progress=progress)
    elif kind == "har":
        from .har import read_har

        rows = read_har(path, stats, progress=progress)
    else:
        from .logs import read_log

        fmt = "jsonl" if kind == "jsonl" and log_format == "auto" else log_format
        rows = read_log(path, stats, fmt=fmt, fields=log_fields, progress=progress)
    for row in rows:
        yield finish_row(row)


def finish_row(row: dict[str, Any]) -> dict[str, Any]:
    """Derive the header columns every source shares, so each is defined in one place."""
    names = row.get("header_names")
    if names:
        split = names.split(HEADER_NAME_SEP) if isinstance(names, str) else list(names)
        row["header_names"] = HEADER_NAME_SEP.join(split)
        if row.get("header_entropy") is None:
            row["header_entropy"] = header_entropy(split)
        if row.get("header_order") is None:
            row["header_order"] = header_order_fingerprint(split)
    return row


def replay(inputs: Iterable[str | Path], stats: ReplayStats | None = None, *, log_format: str = "auto",
           log_fields: Mapping[str, str] | None = None, show_progress: bool | None = None) -> pd.DataFrame:
    """Read every input into one record DataFrame (schema :data:`stormguard.schema.RECORD_COLUMNS`)."""
    stats = stats if stats is not None else ReplayStats()
    files = expand_inputs(inputs, stats)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    total = 0
    for f in files:
        try:
            total += f.stat().st_size
        except OSError:
            pass
    bar = None
    if show_progress and total > 8 * 1024 * 1024:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc="replay", file=sys.stderr, leave=False)
    rows: list[dict[str, Any]] = []
    try:
        for path in files:
            rows.extend(read_file(path, stats, log_format=log_format, log_fields=log_fields,
                                  progress=bar.update if bar is not None else None))
    finally:
        if bar is not None:
            bar.close()
    frame = records_frame(rows)
    if len(frame):
        frame = frame.sort_values(["ts", "source", "frame", "line"], kind="stable", na_position="last")
        frame = frame.reset_index(drop=True)
    stats.records = len(frame)
    return frame
