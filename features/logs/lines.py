"""Reading a log as lines: text decoding, byte ranges on line boundaries, progress, and field unescaping
shared by every line format."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from stormguard.report import ReplayStats

_ESCAPE = re.compile(r'\\(["\\]|x[0-9a-fA-F]{2}|[nrt])')

_PROGRESS_EVERY = 65536


def _unescape(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        s = m.group(1)
        if s[0] == "x":
            return chr(int(s[1:], 16))
        return {"n": "\n", "r": "\r", "t": "\t"}.get(s, s)

    return _ESCAPE.sub(repl, text)


def unwrap_quoted(line: str) -> str | None:
    """The line inside an extra pair of double quotes (``"host - - [time] "GET / HTTP/1.1" ... "ua""``: a whole
    log line exported as one CSV/JSON string, as in some published logs), or None when ``line`` is not wrapped so.
    Readers try it only on lines their format did not match, so well-formed logs pay nothing."""
    text = line.rstrip("\r\n")
    if len(text) < 4 or text[0] != '"' or text[1] == '"' or not text.endswith('""'):
        return None
    return text[1:-1] + line[len(text):]


def _field(text: str | None) -> str | None:
    """Log field → value: ``-``/empty → None, escapes decoded."""
    if text is None or text == "-" or text == "":
        return None
    return _unescape(text) if "\\" in text else text


def open_lines(path: Path, span: tuple[int, int] | None = None) -> IO[str]:
    """The log as a text stream (UTF-8, a leading BOM dropped, undecodable bytes as U+FFFD, universal newlines);
    with ``span``, only bytes ``start:end`` of it (read at once: spans are a few megabytes)."""
    if span is None:
        return open(path, encoding="utf-8-sig", errors="replace")
    start, end = span
    with open(path, "rb") as raw:
        raw.seek(start)
        data = raw.read(max(0, end - start))
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig" if start == 0 else "utf-8", errors="replace")


def line_spans(path: Path, size: int) -> list[tuple[int, int]]:
    """Byte ranges of about ``size`` bytes that cover the file, each ending just after a ``\\n`` (or at the end of
    the file), so that every line lies in exactly one range and reading them in order reads the file."""
    total = path.stat().st_size
    spans: list[tuple[int, int]] = []
    start = 0
    with open(path, "rb") as fh:
        while start < total:
            target = start + max(1, size)
            if target >= total:
                spans.append((start, total))
                break
            fh.seek(target - 1)
            fh.readline()  # to just after the next newline (the byte before target may be one itself)
            end = min(fh.tell(), total)
            spans.append((start, end))
            start = end
    return spans


class _Progress:
    """Reports bytes consumed (``progress(n)`` with n bytes since the previous call, like the capture reader),
    read from the binary buffer under the text stream, so no per-line byte counting is needed."""

    __slots__ = ("callback", "fh", "sent", "total")

    def __init__(self, callback: Callable[[int], None] | None, path: Path) -> None:
        self.callback = callback
        self.fh: Any = None
        self.sent = 0
        try:
            self.total = path.stat().st_size
        except OSError:
            self.total = 0

    def tick(self) -> None:
        if self.callback is not None and self.fh is not None:
            try:
                pos = self.fh.buffer.tell()
            except (OSError, ValueError, AttributeError):
                return
            if pos > self.sent:
                self.callback(pos - self.sent)
                self.sent = pos

    def finish(self) -> None:
        if self.callback is not None and self.total > self.sent:
            self.callback(self.total - self.sent)
            self.sent = self.total


def _bulk(stats: ReplayStats, lines: int, requests: int, progress: _Progress) -> None:
    stats.lines += lines
    stats.http_requests += requests
    progress.tick()


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
