"""Counters and warnings a replay run accumulates, so that nothing skipped goes unreported.

Readers never raise on bad input: they call :meth:`ReplayStats.skip` (a counted reason) or
:meth:`ReplayStats.warn` (a located message: file plus packet offset or line number) and carry on.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TextIO


@dataclass
class Problem:
    """One located problem in an input: ``file`` and where in it (``offset`` in bytes or ``line``)."""

    file: str
    message: str
    offset: int | None = None
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.offset is not None:
            where += f" @ byte {self.offset}"
        if self.field:
            where += f" [{self.field}]"
        return f"{where}: {self.message}"


@dataclass
class ReplayStats:
    """Totals for one replay run (all files)."""

    files: int = 0
    files_refused: int = 0
    packets: int = 0
    lines: int = 0
    connections: int = 0
    client_hellos: int = 0
    http_requests: int = 0
    records: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    max_problems: int = 1000  # keep the first N located problems; the counters keep counting

    def skip(self, reason: str, n: int = 1) -> None:
        """Count ``n`` skipped items (packets, lines, ...) under ``reason``."""
        self.skipped[reason] += n

    def warn(self, file: str, message: str, *, offset: int | None = None, line: int | None = None,
             field: str | None = None, reason: str | None = None) -> None:
        """Record a located problem (and count it under ``reason`` when given)."""
        if reason:
            self.skipped[reason] += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(Problem(file, message, offset, line, field))
        else:
            self.skipped["problems not listed (limit reached)"] += 1

    def merge(self, other: ReplayStats, *, line_offset: int = 0) -> None:
        """Add ``other``'s counts and problems (from a worker that read part of a file); its line numbers are
        shifted by ``line_offset``, the lines of the file before its part."""
        for name in ("files", "files_refused", "packets", "lines", "connections", "client_hellos",
                     "http_requests", "records"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.skipped.update(other.skipped)
        for p in other.problems:
            if len(self.problems) < self.max_problems:
                self.problems.append(p if p.line is None or not line_offset
                                     else replace(p, line=p.line + line_offset))
            else:
                self.skipped["problems not listed (limit reached)"] += 1

    def summary(self) -> str:
        parts = [
            f"files: {self.files} read, {self.files_refused} refused",
            f"packets: {self.packets}",
            f"log lines: {self.lines}",
            f"connections: {self.connections}",
            f"ClientHellos: {self.client_hellos}",
            f"HTTP requests: {self.http_requests}",
            f"records written: {self.records}",
        ]
        if self.skipped:
            parts.append("skipped:")
            parts.extend(f"  {n:>9}  {reason}" for reason, n in self.skipped.most_common())
        else:
            parts.append("skipped: nothing")
        return "\n".join(parts)

    def print_problems(self, stream: TextIO = sys.stderr, limit: int = 20) -> None:
        for problem in self.problems[:limit]:
            print(f"warning: {problem}", file=stream)
        if len(self.problems) > limit:
            print(f"warning: ... and {len(self.problems) - limit} more problem(s)", file=stream)
