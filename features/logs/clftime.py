"""CLF timestamps (``10/Oct/2000:13:55:36 -0700``) → epoch seconds: a fixed-layout parser and a per-file cache.

A log has a few dates and at most 86,400 clock values, so each line's time is two dict lookups (see
:class:`_TimeCache`); :func:`parse_clf_time` is the fallback for anything unusual (fractions, odd zones)."""

from __future__ import annotations

import calendar
import re
from datetime import datetime

_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                        "Nov", "Dec"), start=1)}
_CLF_TIME = re.compile(r"^(\d{2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))? ([+-])(\d{2})(\d{2})$")


def parse_clf_time(text: str) -> float | None:
    """``10/Oct/2000:13:55:36 -0700`` → epoch seconds (float), or ``None`` if it is not that layout."""
    m = _CLF_TIME.match(text)
    if m is None:
        return None
    day, mon, year, hh, mm, ss, frac, sign, oh, om = m.groups()
    month = _MONTHS.get(mon)
    if month is None:
        return None
    try:
        epoch = calendar.timegm((int(year), month, int(day), int(hh), int(mm), int(ss), 0, 0, 0))
        datetime(int(year), month, int(day))  # rejects 31/Feb
    except ValueError:
        return None
    if int(hh) > 23 or int(mm) > 59 or int(ss) > 60:
        return None
    offset = int(oh) * 3600 + int(om) * 60
    value = float(epoch - offset if sign == "+" else epoch + offset)
    if frac:
        value += float("0." + frac)
    return value


class _TimeCache:
    """CLF time string → epoch seconds, as :func:`parse_clf_time` gives, without parsing each distinct string.

    The usual ``dd/Mon/yyyy:HH:MM:SS +zzzz`` layout is split at fixed positions into the date with its zone
    (``days``: ``"dd/Mon/yyyy:" + " +zzzz"`` → epoch of that local midnight, at most a few per log) and the clock
    (``clocks``: ``"HH:MM:SS"`` → seconds since midnight, at most 87,840 keys). Only valid keys are stored, and a
    valid day key pins the whole layout (11 date characters, ``:``, 8 clock characters, zone), so two hits give
    exactly :func:`parse_clf_time`'s value; readers inline those two lookups. Anything else (fractions, odd
    widths, non-ASCII digits, out-of-range values) goes through :meth:`learn` to :func:`parse_clf_time` (whole
    strings cached in ``other``, bounded so that a pathological log cannot grow it forever)."""

    __slots__ = ("clocks", "days", "other")

    def __init__(self) -> None:
        self.days: dict[str, float] = {}
        self.clocks: dict[str, int] = {}
        self.other: dict[str, float | None] = {}

    def __call__(self, text: str) -> float | None:
        day = self.days.get(text[:12] + text[20:])
        seconds = self.clocks.get(text[12:20])
        if day is None or seconds is None:
            return self.learn(text)
        return day + seconds

    def learn(self, text: str) -> float | None:
        """The slow path: store the day and clock keys of ``text`` when valid, else parse it whole."""
        key, clock = text[:12] + text[20:], text[12:20]
        day = self.days.get(key)
        if day is None and len(text) == 26:
            day = parse_clf_time(key[:12] + "00:00:00" + key[12:])
            if day is not None:
                if len(self.days) > 100_000:
                    self.days.clear()
                self.days[key] = day
        seconds = self.clocks.get(clock)
        if seconds is None:
            seconds = _clock_seconds(clock)
            if seconds is not None:
                self.clocks[clock] = seconds
        if day is not None and seconds is not None:
            return day + seconds
        value = self.other.get(text, -1.0)
        if value == -1.0:
            value = parse_clf_time(text)
            if len(self.other) > 10_000:
                self.other.clear()
            self.other[text] = value
        return value


def _clock_seconds(clock: str) -> int | None:
    """``HH:MM:SS`` (ASCII digits, in range as :func:`parse_clf_time` accepts) → seconds, else None."""
    if len(clock) != 8 or clock[2] != ":" or clock[5] != ":" or not clock.isascii():
        return None
    hh, mm, ss = clock[0:2], clock[3:5], clock[6:8]
    if not (hh.isdigit() and mm.isdigit() and ss.isdigit()):
        return None
    h, m, s = int(hh), int(mm), int(ss)
    if h > 23 or m > 59 or s > 60:
        return None
    return h * 3600 + m * 60 + s
