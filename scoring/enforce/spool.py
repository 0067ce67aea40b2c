"""A bounded on-disk queue of blocks waiting to be pushed (SQLite, from the standard library).

One row per client key: a block queued again replaces its earlier row (the newest block is what CrowdSec should
enforce), so an address blocked many times during an outage costs one row. The queue is bounded by ``max_rows``;
past it the rows whose blocks end soonest are dropped first, counted in :attr:`Spool.dropped` and logged — the
only way anything queued is lost, and it is said. Rows survive a restart of the process (the file is the queue).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger("stormguard.crowdsec")


class Spool:
    def __init__(self, path: str | Path, max_rows: int = 100_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max(1, int(max_rows))
        self.dropped = 0
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS queue (key TEXT PRIMARY KEY, until REAL NOT NULL, "
                             "reason TEXT NOT NULL, source TEXT NOT NULL, queued REAL NOT NULL)")
        except sqlite3.DatabaseError as exc:
            raise OSError(f"{self.path}: not a usable queue file ({exc}); move it away to start an empty queue") \
                from None

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM queue").fetchone()[0])

    def put(self, rows: list[tuple[str, float, str, str]], now: float) -> None:
        """Queue ``(key, until, reason, source)`` rows (one transaction), then enforce the bound."""
        if not rows:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO queue (key, until, reason, source, queued) VALUES (?, ?, ?, ?, ?) "
                                 "ON CONFLICT(key) DO UPDATE SET until=excluded.until, reason=excluded.reason, "
                                 "source=excluded.source, queued=excluded.queued",
                                 [(k, u, r, s, now) for k, u, r, s in rows])
            over = len(self) - self.max_rows
            if over > 0:
                self._db.execute("DELETE FROM queue WHERE key IN (SELECT key FROM queue ORDER BY until LIMIT ?)",
                                 (over,))
                self.dropped += over
                log.error("crowdsec export: queue %s is full (%d rows): dropped the %d blocks that end soonest",
                          self.path, self.max_rows, over)

    def peek(self, n: int) -> list[tuple[str, float, str, str, float]]:
        """The ``n`` oldest queued rows ``(key, until, reason, source, queued)``."""
        return self._db.execute("SELECT key, until, reason, source, queued FROM queue ORDER BY queued, key "
                                "LIMIT ?", (n,)).fetchall()

    def done(self, rows: list[tuple[str, float, str, str, float]]) -> None:
        """Remove pushed rows — unless a row was queued again since it was peeked (then the newer one stays)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM queue WHERE key = ? AND queued = ? AND until = ?",
                                 [(r[0], r[4], r[1]) for r in rows])

    def expire(self, now: float) -> int:
        """Drop rows whose block has ended (nothing left to enforce); returns how many."""
        cur = self._db.execute("DELETE FROM queue WHERE until <= ?", (now,))
        return int(cur.rowcount or 0)

    def close(self) -> None:
        self._db.close()
