"""The regional store on PostgreSQL (psycopg 3), for real deployments
(``edgeloop regional run --db postgresql://USER@HOST/DB``).

A commit: the batch goes in with one binary ``COPY`` straight into ``records``, in a savepoint;
a record the store already has (a resend) aborts it, and the batch is then staged with one
``COPY`` into a temporary table (emptied by the commit), moved with ``INSERT … ON CONFLICT (id)
DO NOTHING`` (the dedupe) and its duplicates counted per device. Then the commit; only then
does the receiver acknowledge. A lost connection (a
server restart) raises StoreUnavailable and is reconnected on the next try; the batch is not
lost, it is simply not acknowledged until a commit holds it.

The only index is the primary key: every other one costs each insert (a (device, epoch, seq)
index cost about a fifth of the ingest rate, measured), and the statistics scan the table anyway.
Add the indexes your queries need; the ingest rate goes down with each.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import psycopg
from psycopg.types.string import BytesBinaryDumper

from edgeloop.runtime.logs import Throttled

from .regional_index import PgvectorMissing, RegionalIndex
from .store import ROW_FIELDS, Committed, StoreUnavailable, device_stats, sort_messages
from .topics import INDEX_STREAM

log = logging.getLogger("edgeloop.regional")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id text PRIMARY KEY, device text NOT NULL, epoch text NOT NULL DEFAULT '', seq bigint NOT NULL,
    ts double precision NOT NULL, stream text NOT NULL, trace text, body bytea NOT NULL,
    received double precision NOT NULL);
CREATE TABLE IF NOT EXISTS duplicates (device text PRIMARY KEY, count bigint NOT NULL);
CREATE TABLE IF NOT EXISTS malformed (received double precision NOT NULL, topic text NOT NULL,
                                      reason text NOT NULL, payload bytea NOT NULL);
CREATE TABLE IF NOT EXISTS spoofed (received double precision NOT NULL, topic text NOT NULL, sender text NOT NULL,
                                    claimed text NOT NULL, body bytea NOT NULL);
"""
STAGED_AFTER_DUPLICATE_S = 10.0  # after a duplicate, batches are staged (and deduped) this long
ROW_TYPES = ["text", "text", "text", "int8", "float8", "text", "text", "bytea", "float8"]
_COLUMNS = ", ".join(ROW_FIELDS)


class PostgresStore:
    """Records by id (the dedupe), duplicates, malformed payloads and spoofed envelopes."""

    def __init__(self, url: str, connect_timeout_s: float = 5.0) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._staged_until = 0.0  # monotonic: until then every batch goes through the staging table
        self.index: RegionalIndex | None = RegionalIndex()  # None: the server has no pgvector
        self._refused_log = Throttled(log)  # a device can send refused deltas at will
        self._connection()  # a wrong URL or a server that is not there fails here, at start

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = psycopg.connect(self.url, connect_timeout=max(1, int(self.connect_timeout_s)))
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(4142)")  # receivers starting together make the schema once
                conn.execute(_SCHEMA)
            # Emptied by each commit: cheaper than a TRUNCATE per batch, which makes a new file.
            conn.execute("CREATE TEMP TABLE staging (LIKE records) ON COMMIT DELETE ROWS")
            conn.commit()
            if self.index is not None:
                try:
                    self.index.ensure(conn)
                except PgvectorMissing as exc:
                    self.index = None
                    log.warning("regional: PostgreSQL at %s has no pgvector (%s): the devices' index deltas are "
                                "stored as records but not indexed, and nearest queries find nothing; install "
                                "it (Debian trixie or PGDG: postgresql-16-pgvector) and restart the receiver",
                                _safe(self.url), exc)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"PostgreSQL at {_safe(self.url)} is not reachable: {exc}".strip(),
                                   "start the server or fix --db; the receiver tries again") from exc
        # bytea by its oid is psycopg's dbapi Binary dumper, Python code per row; plain bytes
        # (all a commit sends) take the C one: 40 % less client time in the COPY, measured.
        conn.adapters.register_dumper(bytes, BytesBinaryDumper)
        self._conn = conn
        return conn

    def commit(self, messages: Sequence[tuple[str, bytes]]) -> Committed:
        intake = sort_messages(messages)
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    dups: dict[str, int] = {}
                    new = 0
                    if intake.rows:
                        new, dups = self._insert(conn, cur, intake.rows)
                        self._index(conn, cur, intake)
                    if dups:
                        cur.executemany("INSERT INTO duplicates VALUES (%s, %s) ON CONFLICT (device) "
                                        "DO UPDATE SET count = duplicates.count + excluded.count", list(dups.items()))
                    if intake.malformed:
                        cur.executemany("INSERT INTO malformed VALUES (%s, %s, %s, %s)", intake.malformed)
                    if intake.spoofed:
                        cur.executemany("INSERT INTO spoofed VALUES (%s, %s, %s, %s, %s)", intake.spoofed)
            except psycopg.OperationalError as exc:
                self._drop()
                raise StoreUnavailable(f"PostgreSQL at {_safe(self.url)} failed during a commit: {exc}".strip(),
                                       "the batch is tried again once the server answers") from exc
        return Committed(new, sum(dups.values()), len(intake.spoofed), len(intake.malformed), intake.acks)

    def _insert(self, conn: psycopg.Connection, cur: psycopg.Cursor, rows: list[tuple[Any, ...]]
                ) -> tuple[int, dict[str, int]]:
        """(records added, duplicates by device). First straight into ``records`` in a savepoint:
        most batches hold no record the store has, and then this is the bare COPY. A duplicate
        (a resend) aborts it; the batch goes through the staging table instead, and so do the
        next commits for a while, as resends come in runs."""
        if time.monotonic() >= self._staged_until:
            try:
                with conn.transaction():  # a savepoint inside the commit's transaction
                    self._copy(cur, "records", rows)
                return len(rows), {}
            except psycopg.errors.UniqueViolation:
                self._staged_until = time.monotonic() + STAGED_AFTER_DUPLICATE_S
        self._copy(cur, "staging", rows)
        cur.execute(f"""
            WITH added AS (INSERT INTO records ({_COLUMNS}) SELECT {_COLUMNS} FROM staging
                           ON CONFLICT (id) DO NOTHING RETURNING device),
                 added_by AS (SELECT device, count(*) AS n FROM added GROUP BY device),
                 sent_by AS (SELECT device, count(*) AS n FROM staging GROUP BY device)
            SELECT s.device, s.n, coalesce(a.n, 0) FROM sent_by s LEFT JOIN added_by a USING (device)""")
        new, dups = 0, {}
        for device, sent, added in cur.fetchall():
            new += added
            if sent > added:
                dups[device] = sent - added
        return new, dups

    def _index(self, conn: psycopg.Connection, cur: psycopg.Cursor, intake: Any) -> None:
        """The batch's index deltas into the regional index, each in a savepoint: one that
        cannot be applied is kept aside with the reason, and the commit goes on."""
        for rid, device, epoch, seq, ts, stream, trace, body, received in intake.rows:
            if stream != INDEX_STREAM:
                continue
            if self.index is None:
                continue  # stored as a record; said at start
            try:
                with conn.transaction():
                    problem = self.index.apply(cur, device, body, received)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                problem = f"index delta refused by PostgreSQL: {str(exc).strip()}"
            if problem:
                self._refused_log.warning("regional: %s's index delta (seq %s) kept aside: %s", device, seq, problem)
                intake.malformed.append((received, f"edgeloop/v1/?/{device}/data/{INDEX_STREAM}", problem, body))

    def nearest(self, model: str, version: str, vector: Any, k: int = 10,
                collection: str | None = None) -> list[dict[str, Any]]:
        """The regional index's ``k`` nearest items to ``vector`` (made by ``model`` ``version``)."""
        if self.index is None:
            return []
        index = self.index
        return self._read(lambda conn: index.nearest(conn, model, version, vector, k, collection))

    @staticmethod
    def _copy(cur: psycopg.Cursor, table: str, rows: list[tuple[Any, ...]]) -> None:
        with cur.copy(f"COPY {table} ({_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(ROW_TYPES)
            for row in rows:
                copy.write_row(row)

    def keep_aside(self, topic: str, payload: bytes, reason: str) -> None:
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO malformed VALUES (%s, %s, %s, %s)",
                                 (time.time(), topic.replace("\0", "?"), reason.replace("\0", "?"), bytes(payload)))
            except psycopg.OperationalError as exc:
                self._drop()
                raise StoreUnavailable(f"PostgreSQL at {_safe(self.url)} failed: {exc}".strip(),
                                       "the message is tried again once the server answers") from exc

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    def _read(self, query: Callable[[psycopg.Connection], Any]) -> Any:
        """A read; a connection the server dropped (a restart) is made again once."""
        with self._lock:
            for attempt in (1, 2):
                conn = self._connection()
                try:
                    result = query(conn)
                    conn.commit()
                    return result
                except psycopg.OperationalError as exc:
                    self._drop()
                    if attempt == 2:
                        raise StoreUnavailable(f"PostgreSQL at {_safe(self.url)} failed a read: {exc}".strip(),
                                               "start the server, then ask again") from exc

    def stats(self) -> dict[str, Any]:
        def query(conn: psycopg.Connection) -> dict[str, Any]:
            rows = conn.execute("SELECT device, epoch, count(*), min(seq), max(seq) FROM records "
                                "GROUP BY device, epoch").fetchall()
            duplicates = dict(conn.execute("SELECT device, count FROM duplicates").fetchall())
            spoofed = dict(conn.execute("SELECT sender, count(*) FROM spoofed GROUP BY sender").fetchall())
            malformed = conn.execute("SELECT count(*) FROM malformed").fetchone()[0]
            out = {"devices": device_stats(rows, duplicates, spoofed), "malformed": malformed,
                   "spoofed": sum(spoofed.values())}
            if self.index is not None:
                models = conn.execute("SELECT model, model_version, dim, tbl FROM index_models").fetchall()
                out["index"] = {"models": {f"{m} {v} ({d})": conn.execute(
                    f"SELECT count(*) FROM {t} WHERE NOT deleted").fetchone()[0] for m, v, d, t in models},
                    # from the table, not a counter: `regional stats` is another process
                    "deltas_refused": conn.execute("SELECT count(*) FROM malformed WHERE topic LIKE %s",
                                                   (f"%/data/{INDEX_STREAM}",)).fetchone()[0]}
            else:
                out["index"] = {"pgvector": False}
            return out

        return self._read(query)

    def ids(self) -> set[str]:
        return self._read(lambda conn: {r[0] for r in conn.execute("SELECT id FROM records")})

    def records_between(self, start: float, end: float) -> Iterator[tuple[str, str, float, bytes]]:
        # A connection of its own with a server-side cursor: the window streams, and the
        # receiver's commits go on meanwhile.
        with psycopg.connect(self.url, connect_timeout=max(1, int(self.connect_timeout_s))) as conn, \
                conn.cursor(name="export") as cur:
            cur.itersize = 10_000
            cur.execute("SELECT device, stream, ts, body FROM records WHERE ts >= %s AND ts < %s", (start, end))
            for device, stream, ts, body in cur:
                yield device, stream, ts, bytes(body)

    def close(self) -> None:
        with self._lock:
            self._drop()


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.split(':')[0] + '@' if at else ''}{host}"
