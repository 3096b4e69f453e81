"""The regional store in one SQLite file: the embedded default for a single site
(``edgeloop regional run --db FILE``). Several receivers on one host may share the file."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import apsw

from .store import Committed, StoreUnavailable, device_stats, sort_messages

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY, device TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,
    stream TEXT NOT NULL, trace TEXT, body BLOB NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS duplicates (device TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS malformed (received REAL NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL,
                                      payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS spoofed (received REAL NOT NULL, topic TEXT NOT NULL, sender TEXT NOT NULL,
                                    claimed TEXT NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# The epoch column, added to new files and to files made before epochs alike (their records
# belong to the empty epoch).
_EPOCH = "ALTER TABLE records ADD COLUMN epoch TEXT NOT NULL DEFAULT ''"
_INDEX = "CREATE INDEX IF NOT EXISTS records_device_epoch ON records (device, epoch, seq)"


class SqliteStore:
    """Records by id (the dedupe), duplicates, malformed payloads and spoofed envelopes."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.db = apsw.Connection(self.path)
        self.db.setbusytimeout(10_000)  # several receivers may share one file
        self.db.execute("PRAGMA journal_mode=WAL")
        with self.db:
            self.db.execute(_SCHEMA)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(records)")}
            if "epoch" not in columns:
                self.db.execute(_EPOCH)
            self.db.execute("DROP INDEX IF EXISTS records_device")
            self.db.execute(_INDEX)
        self._lock = threading.Lock()

    def commit(self, messages: Sequence[tuple[str, bytes]]) -> Committed:
        intake = sort_messages(messages)
        new = 0
        dups: dict[str, int] = {}
        try:
            with self._lock, self.db:
                for row in intake.rows:
                    self.db.execute("INSERT OR IGNORE INTO records (id, device, epoch, seq, ts, stream, trace, body, "
                                    "received) VALUES (?,?,?,?,?,?,?,?,?)", row)
                    if self.db.changes():
                        new += 1
                    else:
                        dups[row[1]] = dups.get(row[1], 0) + 1
                self.db.executemany("INSERT INTO duplicates VALUES (?, ?) ON CONFLICT (device) "
                                    "DO UPDATE SET count = count + excluded.count", list(dups.items()))
                self.db.executemany("INSERT INTO malformed VALUES (?,?,?,?)", intake.malformed)
                self.db.executemany("INSERT INTO spoofed VALUES (?,?,?,?,?)", intake.spoofed)
        except (apsw.BusyError, apsw.FullError, apsw.IOError) as exc:
            raise StoreUnavailable(f"the regional database {self.path} cannot commit: {exc}",
                                   "free disk space or end what holds the file locked; the batch is tried again") from exc
        return Committed(new, sum(dups.values()), len(intake.spoofed), len(intake.malformed), intake.acks)

    def keep_aside(self, topic: str, payload: bytes, reason: str) -> None:
        with self._lock, self.db:
            self.db.execute("INSERT INTO malformed VALUES (?,?,?,?)", (time.time(), topic, reason, bytes(payload)))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            rows = self.db.execute(
                "SELECT device, epoch, count(*), min(seq), max(seq) FROM records GROUP BY device, epoch").fetchall()
            duplicates = dict(self.db.execute("SELECT device, count FROM duplicates").fetchall())
            spoofed = dict(self.db.execute("SELECT sender, count(*) FROM spoofed GROUP BY sender").fetchall())
            malformed = self.db.execute("SELECT count(*) FROM malformed").fetchone()[0]
        return {"devices": device_stats(rows, duplicates, spoofed), "malformed": malformed,
                "spoofed": sum(spoofed.values())}

    def ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self.db.execute("SELECT id FROM records")}

    def records_between(self, start: float, end: float) -> Iterator[tuple[str, str, float, bytes]]:
        last = 0
        while True:  # in chunks, so a long window does not hold the receiver's lock for long
            with self._lock:
                chunk = self.db.execute("SELECT rowid, device, stream, ts, body FROM records WHERE ts >= ? AND ts < ? "
                                        "AND rowid > ? ORDER BY rowid LIMIT 10000", (start, end, last)).fetchall()
            if not chunk:
                return
            last = chunk[-1][0]
            for _, device, stream, ts, body in chunk:
                yield device, stream, ts, bytes(body)

    def close(self) -> None:
        self.db.close()
