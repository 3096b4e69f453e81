"""The durable outbox: what the device decided to send, kept in SQLite until the regional store
has committed it.

- ``enqueue`` returns only once the record is durable (WAL, ``synchronous=FULL`` by default).
  Concurrent enqueues are group-committed by one writer thread: one transaction, one sync,
  many records. ``synchronous="NORMAL"`` is faster but a power cut may lose the last
  transactions that returned (the database itself stays consistent).
- Streams have a priority, a TTL and row/byte caps. Over a cap, expired records go first,
  then the lowest priority, oldest first; every eviction is counted per stream and reason,
  persisted, and logged — never silent. A full disk raises ``OutboxFull`` after evicting by
  the same rule; the next enqueue simply tries again.
- A record handed out by ``next_batch`` is in flight; once the broker has it (PUBACK) the link
  marks it sent (``mark_sent``): it awaits the regional commit and is not sent again unless
  ``resend_due`` finds it waited too long. Records leave only through ``ack``, when the regional
  store's commit acknowledgement names them.
- Each file has an epoch (an id made when the file is); seqs are never reused: a file made
  after a damaged one continues after the damaged one's highest seq, under a new epoch.
- On open, an integrity check: a corrupt file is renamed aside (kept), every row a lookup can
  still read with a valid checksum is salvaged into a fresh file, and the outbox carries on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple

import apsw

from edgeloop.runtime.errors import ConfigError, EdgeloopError
from edgeloop.runtime.sqlite_files import bound_wal, integrity_problem, quarantine, time_limit

from .codec import MAX_BATCH_BYTES, encode_body

if TYPE_CHECKING:
    from .outbox_writer import SharedWriter

log = logging.getLogger("edgeloop.outbox")

SCHEMA_VERSION = 3
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    stream TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    size INTEGER NOT NULL,
    trace TEXT,
    body BLOB NOT NULL,
    crc INTEGER NOT NULL,
    epoch TEXT  -- NULL: this file's epoch; a salvaged record keeps the epoch it was numbered in
);
CREATE INDEX IF NOT EXISTS records_evict ON records (stream, priority, seq);
CREATE INDEX IF NOT EXISTS records_expires ON records (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS evictions (
    stream TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (stream, reason));
"""
# Migrations from version N to N+1, applied in order on open.
_MIGRATIONS: dict[int, str] = {
    # 1 -> 2: expired records are found through an index instead of a scan per batch.
    1: "CREATE INDEX IF NOT EXISTS records_expires ON records (expires) WHERE expires IS NOT NULL",
    # 2 -> 3: records carry the epoch they were numbered in (salvage moves them to a new file).
    2: "ALTER TABLE records ADD COLUMN epoch TEXT",
}
_COLUMNS = "seq, id, stream, priority, created, expires, size, trace, body, crc, epoch"
# Text columns are read as bytes: a flipped bit in one must not stop a whole query.
_SELECT = ("seq, CAST(id AS BLOB), CAST(stream AS BLOB), priority, created, expires, size, CAST(trace AS BLOB), "
           "body, crc, CAST(epoch AS BLOB)")
RESERVE_BYTES = 256 * 1024  # kept free on disk so eviction can still commit when the disk is full
SALVAGE_SECONDS = 60.0  # at most this long reading a damaged file; what is not read by then is lost
CHECK_SECONDS = 60.0  # the integrity check on open
GATHER_S = 0.001  # at most this long waiting for more writers to join a group commit


def record_crc(rid: str, stream: str, body: bytes) -> int:
    """What a record's row must still hash to: SQLite checks its pages, not the data in them."""
    return zlib.crc32(body, zlib.crc32(f"{rid}\0{stream}".encode()))


class OutboxError(EdgeloopError):
    """The outbox cannot take or give records."""


class OutboxFull(OutboxError):
    """The disk is full even after evicting by the streams' rules."""


@dataclass(frozen=True)
class StreamPolicy:
    """``priority``: higher is kept longer. ``ttl_s``: records older than this are dropped
    (and counted). ``max_rows``/``max_bytes``: caps that trigger eviction."""

    priority: int = 0
    ttl_s: float | None = None
    max_rows: int | None = None
    max_bytes: int | None = None


class Enqueued(NamedTuple):
    """A stored record: its idempotency key, its per-device sequence number, its stream."""

    id: str
    seq: int
    stream: str


def new_ids(n: int) -> list[str]:
    """Idempotency keys: 48 bits of milliseconds then 80 random bits each, as in UUIDv7.
    Time-ordered keys land at the end of the unique index instead of all over it, which keeps
    inserts cheap as the outbox grows (random keys cost 2-5x more per row at 20k rows)."""
    ms = f"{time.time_ns() // 1_000_000:012x}"
    rnd = os.urandom(10 * n).hex()
    return [ms + rnd[20 * i:20 * i + 20] for i in range(n)]


@dataclass(slots=True)
class _Pending:
    stream: str
    body: bytes
    priority: int
    expires: float | None
    trace: str | None
    created: float
    id: str = ""  # assigned with seq by the writer
    seq: int = 0


class _Ticket:
    """One caller's records, waiting for the commit that carries them: a thread waits on
    ``event``; a coroutine on ``future``, settled in its own loop once per commit; or
    ``callback`` is called on the writer thread."""

    __slots__ = ("items", "event", "loop", "future", "error", "callback")

    def __init__(self, items: list[_Pending], loop: asyncio.AbstractEventLoop | None = None,
                 callback: Callable[["_Ticket"], None] | None = None) -> None:
        self.items = items
        self.loop = loop
        self.callback = callback
        self.event = threading.Event() if loop is None and callback is None else None
        self.future = None if loop is None else loop.create_future()
        self.error: BaseException | None = None

    def results(self) -> list[Enqueued]:
        if self.error is not None:
            raise self.error
        return [Enqueued(item.id, item.seq, item.stream) for item in self.items]


def _settle(tickets: list[_Ticket]) -> None:
    """In the callers' event loop: hand each coroutine its result."""
    for ticket in tickets:
        if ticket.future.done():  # cancelled: the records are stored all the same
            continue
        try:
            ticket.future.set_result(ticket.results())
        except BaseException as exc:
            ticket.future.set_exception(exc)


def _checked(row: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """A row read with ``_SELECT``, text decoded, if its checksum still holds; else None."""
    seq, rid, stream, priority, created, expires, size, trace, body, crc, epoch = row
    try:
        rid, stream = rid.decode(), stream.decode()
        trace = trace.decode() if trace is not None else None
    except (AttributeError, UnicodeDecodeError):
        return None
    if not isinstance(seq, int) or not isinstance(body, bytes) or size != len(body) \
            or record_crc(rid, stream, body) != crc:
        return None
    try:  # not covered by the checksum: a damaged epoch reads as this file's
        epoch = epoch.decode() if isinstance(epoch, bytes) else None
    except UnicodeDecodeError:
        epoch = None
    return seq, rid, stream, priority, created, expires, size, trace, body, crc, epoch


@dataclass
class Salvage:
    """What was read from a damaged file: ``salvaged`` rows copied; ``lost`` rows known to exist
    (the table or one of its indexes names their seq) that no lookup could read with a valid
    checksum; ``high_seq`` the highest seq the file had used, which the new file continues after."""

    salvaged: int = 0
    lost: int = 0
    high_seq: int = 0
    epoch: str | None = None
    timed_out: bool = False


def _read(old: apsw.Connection, sql: str, args: tuple[Any, ...] = (), seconds: float = 1.0) -> list[tuple[Any, ...]]:
    """Rows of one query on the damaged file, as many as could be read before an error."""
    rows: list[tuple[Any, ...]] = []
    try:
        with time_limit(old, seconds):
            for row in old.execute(sql, args):
                rows.append(row)
    except (apsw.Error, ValueError):
        pass
    return rows


def _salvage(aside: Path, db: apsw.Connection, give_up: float) -> Salvage:
    """Copy every intact record of the damaged file, in three passes: forward through the table
    by key (probing past unreadable stretches), then the seqs its indexes still name, then a
    point lookup of every seq between the lowest and highest known that is not copied yet. A
    lookup reaches rows whose neighbours' pages are gone, which a scan cannot step over."""
    result = Salvage()
    try:
        old = apsw.Connection(str(aside), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error as exc:
        log.error("outbox: nothing can be read from %s (%s)", aside, exc)
        return result
    meta = _read(old, "SELECT CAST(value AS BLOB) FROM meta WHERE key='epoch'")
    try:
        result.epoch = meta[0][0].decode() if meta and isinstance(meta[0][0], bytes) else None
    except UnicodeDecodeError:
        result.epoch = None
    high = _read(old, "SELECT seq FROM sqlite_sequence WHERE name='records'")
    result.high_seq = high[0][0] if high and isinstance(high[0][0], int) else 0
    copied: set[int] = set()
    known: set[int] = set()

    def keep(raws: list[tuple[Any, ...]]) -> None:
        intact = []
        for raw in raws:
            if isinstance(raw[0], int):
                known.add(raw[0])
            row = _checked(raw)
            if row is not None and row[0] not in copied:
                copied.add(row[0])
                intact.append(row[:10] + (row[10] or result.epoch,))
        if intact:
            with db:
                db.executemany(f"INSERT OR IGNORE INTO records ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", intact)

    # 1. Forward by key, 256 rows at a time; past an error, probe ahead with growing steps (a
    # corrupt page can claim any key, even a huge one), a bounded number of times.
    after, step, misses = 0, 256, 0
    while misses < 48 and time.monotonic() < give_up:
        try:
            with time_limit(old, 1.0):
                rows = old.execute(f"SELECT {_SELECT} FROM records WHERE seq > ? ORDER BY seq LIMIT 256",
                                   (after,)).fetchall()
        except (apsw.Error, ValueError):
            misses += 1
            after, step = after + step, step * 2
            continue
        if not rows:
            break
        keep(rows)
        last = max((r[0] for r in rows if isinstance(r[0], int)), default=after)
        if last <= after:
            misses += 1
            after, step = after + step, step * 2
        else:
            after, step = last, 256
    # 2. The seqs the indexes name (each carries the rowid), read without the table's pages.
    for index in ("records_evict", "records_expires", "sqlite_autoindex_records_1"):
        for (seq,) in _read(old, f"SELECT seq FROM records INDEXED BY {index}", seconds=5.0):
            if isinstance(seq, int) and 0 < seq < 1 << 62:
                known.add(seq)
    # 3. A point lookup of each seq not copied yet, from the lowest known to the highest used.
    if known or result.high_seq:
        top = max(result.high_seq, max(known, default=0))
        low = min(known, default=1)
        batch: list[tuple[Any, ...]] = []
        for seq in range(low, top + 1):
            if seq in copied:
                continue
            if time.monotonic() >= give_up:
                result.timed_out = True
                break
            try:
                with time_limit(old, 0.2):
                    row = old.execute(f"SELECT {_SELECT} FROM records WHERE seq = ?", (seq,)).fetchone()
            except (apsw.Error, ValueError):
                continue
            if row is not None:
                batch.append(row)
                if len(batch) >= 256:
                    keep(batch)
                    batch = []
        keep(batch)
    if time.monotonic() >= give_up:
        result.timed_out = True
    old.close()
    result.salvaged = len(copied)
    result.lost = len(known - copied)
    result.high_seq = max(result.high_seq, max(known, default=0))
    return result


class Outbox:
    """One device's outbox file. Thread-safe; call ``close()`` when done."""

    def __init__(self, path: str | Path, device: str, streams: dict[str, StreamPolicy] | None = None,
                 default_policy: StreamPolicy = StreamPolicy(), synchronous: str = "FULL",
                 writer: "SharedWriter | None" = None) -> None:
        """``writer``: commit on a ``SharedWriter``'s thread (one for many outboxes: a gateway
        with many devices, the fleet simulator) instead of a writer thread of this outbox's own."""
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ConfigError(f"synchronous: '{synchronous}' is not FULL, EXTRA or NORMAL",
                              "use FULL (durable) or NORMAL (faster; a power cut may lose the last commits)")
        self.path = Path(path)
        self.device = device
        self.streams = dict(streams or {})
        self.default_policy = default_policy
        self.salvage: dict[str, Any] | None = None
        self._synchronous = synchronous.upper()
        self._db = self._open(self._synchronous)
        self._lock = threading.RLock()  # one connection, one user at a time
        self._counts = self._load_counts()
        self._soonest_expiry = self._load_soonest_expiry()
        # Handed out by next_batch, in flight or awaiting the commit: seq -> (stream, size, epoch),
        # what an acknowledged delete needs to keep the counts without reading the rows back.
        self._inflight: dict[int, tuple[str, int, str | None]] = {}
        self._awaiting: dict[int, float] = {}  # broker has them (PUBACK): seq -> when, awaiting the commit
        self._gone: list[int] = []  # seqs deleted by the open transaction
        self._waiting_since: float | None = None  # wall time since which records await a commit with none acked
        self.resent = 0  # records sent again because their commit did not come in time
        self._cursor = 0  # records at or below this seq were handed out by next_batch (or are gone)
        self._evicted: list[tuple[str, str, int]] = []
        self._reserve = Path(str(self.path) + ".reserve")
        self._keep_reserve()
        self._pending: deque[_Ticket] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._listeners: list[Callable[[], None]] = []  # told after each commit of new records
        self._waiting = 0  # records in self._pending
        self._wanted = 1  # wake the writer once this many records wait
        self._commits = self._committed = 0  # group commits made and the records they carried (this process)
        self._flushing = threading.Lock()  # held from taking the pending enqueues to their commit
        self._shared = writer
        self._writer: threading.Thread | None = None
        if writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="outbox-writer", daemon=True)
            self._writer.start()

    # -- opening, checking, salvaging ------------------------------------------------------

    def _connect(self, synchronous: str) -> apsw.Connection:
        db = apsw.Connection(str(self.path))
        db.setbusytimeout(5000)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        bound_wal(db)
        return db

    def _open(self, synchronous: str, problem: str | None = None) -> apsw.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if problem is None:
            try:
                db = self._connect(synchronous)
                problem = integrity_problem(db, CHECK_SECONDS)
                if problem is not None:
                    db.close()
            except apsw.Error as exc:
                problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            self.epoch = self._migrate(db)
            return db
        aside = quarantine(self.path, problem)
        db = self._connect(synchronous)
        self.epoch = self._migrate(db)
        found = _salvage(aside, db, time.monotonic() + SALVAGE_SECONDS)
        with db:  # seqs go on after the damaged file's highest: none is ever used twice
            top = max(found.high_seq, db.execute("SELECT coalesce(max(seq), 0) FROM records").fetchone()[0])
            db.execute("DELETE FROM sqlite_sequence WHERE name = 'records'")
            db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('records', ?)", (top,))
        self.salvage = {"quarantined": str(aside), "reason": problem, "salvaged": found.salvaged,
                        "lost": found.lost, "high_seq": found.high_seq, "old_epoch": found.epoch,
                        "epoch": self.epoch, "timed_out": found.timed_out}
        log.error("outbox: salvaged %d records from %s; %d known records lost%s; new epoch %s continues after seq %d",
                  found.salvaged, aside, found.lost,
                  f" (gave up after {SALVAGE_SECONDS:.0f} s: more may be)" if found.timed_out else "",
                  self.epoch, found.high_seq)
        return db

    def _recover(self, exc: BaseException) -> None:
        """Corruption found after open (what the integrity check could not see): quarantine,
        salvage into a fresh file, carry on. Records in flight are sent again."""
        log.error("outbox: %s while in use: %s", self.path, exc)
        self._db.close()
        self._db = self._open(self._synchronous, problem=f"{type(exc).__name__}: {exc}")
        self._counts = self._load_counts()
        self._soonest_expiry = self._load_soonest_expiry()
        self._inflight.clear()
        self._awaiting.clear()
        self._cursor = 0

    def _load_soonest_expiry(self) -> float | None:
        """When the first record expires (None: none has a ttl), so a drain without ttls never
        sweeps for expired records (a transaction per batch, about a fifth of a small batch's cost)."""
        return self._db.execute("SELECT min(expires) FROM records WHERE expires IS NOT NULL").fetchone()[0]

    def _load_counts(self) -> dict[str, list[int]]:
        rows = self._db.execute("SELECT CAST(stream AS BLOB), count(*), sum(size) FROM records GROUP BY 1")
        return {stream.decode(errors="replace"): [n, size or 0] for stream, n, size in rows}

    def _guarded(self, operation: Any) -> Any:
        """Run ``operation`` under the lock; on corruption recover once and run it again."""
        with self._lock:
            try:
                return operation()
            except apsw.CorruptError as exc:
                self._recover(exc)
                return operation()

    @staticmethod
    def _migrate(db: apsw.Connection) -> str:
        """Bring the schema up to date; returns the file's epoch (made with a new file)."""
        with db:
            db.execute(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            version = int(row[0]) if row else SCHEMA_VERSION
            if version > SCHEMA_VERSION:
                raise OutboxError(f"outbox schema {version} is newer than this edgeloop's {SCHEMA_VERSION}",
                                  "upgrade edgeloop, or move the file aside")
            while version < SCHEMA_VERSION:
                db.execute(_MIGRATIONS[version])
                version += 1
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(version),))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (new_ids(1)[0][-16:],))
            return db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0]

    # -- transactions and the disk reserve -------------------------------------------------

    @contextmanager
    def _txn(self) -> Any:
        """One transaction; the in-memory counts roll back with it, the deleted seqs leave the
        in-flight state only once it is committed (not copied per transaction: with a long
        backlog awaiting its commit, that copy cost more than the delete), and evictions are
        logged only once they are committed."""
        counts = {k: v[:] for k, v in self._counts.items()}
        self._evicted, self._gone = [], []
        try:
            with self._db:
                yield
        except BaseException:
            self._counts, self._evicted, self._gone = counts, [], []
            raise
        for seq in self._gone:
            self._inflight.pop(seq, None)
            self._awaiting.pop(seq, None)
        self._gone = []
        for stream, reason, n in self._evicted:
            log.warning("outbox: evicted %d record(s) from stream '%s' (%s)", n, stream, reason)

    def _keep_reserve(self) -> None:
        if self._reserve.exists():
            return
        try:
            with open(self._reserve, "wb") as f:
                f.write(b"\0" * RESERVE_BYTES)
        except OSError:
            self._reserve.unlink(missing_ok=True)  # no room yet; try again after the next write

    # -- enqueue (group commit) ------------------------------------------------------------

    def policy(self, stream: str) -> StreamPolicy:
        return self.streams.get(stream, self.default_policy)

    def enqueue(self, stream: str, body: Any, *, priority: int | None = None, ttl_s: float | None = None,
                trace: str | None = None) -> Enqueued:
        """Store one record durably; returns once it is on disk."""
        return self.enqueue_many([(stream, body)], priority=priority, ttl_s=ttl_s, trace=trace)[0]

    def enqueue_many(self, items: Iterable[tuple[str, Any]], *, priority: int | None = None,
                     ttl_s: float | None = None, trace: str | None = None) -> list[Enqueued]:
        """Store records durably in one transaction with whatever else is waiting."""
        ticket = self._submit(_Ticket(self._records(items, priority, ttl_s, trace)))
        ticket.event.wait()  # type: ignore[union-attr]
        return ticket.results()

    async def enqueue_async(self, stream: str, body: Any, *, priority: int | None = None,
                            ttl_s: float | None = None, trace: str | None = None) -> Enqueued:
        """``enqueue`` for coroutines: the loop keeps running while the commit is made, and
        all the coroutines waiting on one commit are woken together (no thread per caller)."""
        ticket = _Ticket(self._records([(stream, body)], priority, ttl_s, trace), asyncio.get_running_loop())
        return (await self._submit(ticket).future)[0]  # type: ignore[misc]

    def enqueue_then(self, items: Iterable[tuple[str, Any]], done: Callable[[list[Enqueued] | BaseException], None],
                     *, priority: int | None = None, ttl_s: float | None = None, trace: str | None = None) -> None:
        """``enqueue_many`` without waiting: ``done`` gets the stored records (or the error)
        on the writer thread once they are durable. For a server that answers many callers
        from one thread; ``done`` must be quick."""

        def settle(ticket: _Ticket) -> None:
            try:
                result: list[Enqueued] | BaseException = ticket.results()
            except BaseException as exc:
                result = exc
            done(result)

        self._submit(_Ticket(self._records(items, priority, ttl_s, trace), callback=settle))

    def _records(self, items: Iterable[tuple[str, Any]], priority: int | None, ttl_s: float | None,
                 trace: str | None) -> list[_Pending]:
        now = time.time()
        records = []
        for item in items:  # (stream, body) or (stream, body, trace): a trace of its own
            stream, body = item[0], item[1]
            item_trace = item[2] if len(item) > 2 else trace
            if not isinstance(stream, str) or not stream:
                raise ConfigError(f"stream: {stream!r} is not a stream name", "name the stream, e.g. 'vibration'")
            policy = self.policy(stream)
            ttl = ttl_s if ttl_s is not None else policy.ttl_s
            records.append(_Pending(stream, encode_body(body), policy.priority if priority is None else priority,
                                    None if ttl is None else now + ttl, item_trace, now))
        return records

    def _submit(self, ticket: _Ticket) -> _Ticket:
        with self._cond:
            if self._closing:
                raise OutboxError("the outbox is closed", "open it again")
            self._pending.append(ticket)
            self._waiting += len(ticket.items)
            if self._waiting >= self._wanted:  # the writer is waiting for this many
                self._cond.notify()
        if self._shared is not None:
            self._shared.ready(self)
        return ticket

    def _write_loop(self) -> None:
        last = 1  # records in the previous commit: about how many writers are active
        while True:
            with self._cond:
                self._wanted = 1
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending and self._closing:
                    return
                # Group commit: when fewer records wait than the last commit carried, the
                # other writers are on their way; a moment's wait lets one sync serve them all.
                self._wanted = last
                deadline = time.monotonic() + GATHER_S
                while self._waiting < last and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                self._wanted = sys.maxsize  # busy writing; it looks again before it waits
                last = max(1, self._waiting)
            self._flush()

    def _flush(self) -> None:
        """Commit what is pending (the writer's work: this outbox's thread or a shared one)."""
        with self._flushing:
            with self._cond:
                tickets = list(self._pending)
                self._pending.clear()
                self._waiting = 0
            if not tickets:
                return
            try:
                batch = [item for ticket in tickets for item in ticket.items]
                self._write(batch)
                self._commits += 1
                self._committed += len(batch)
            except BaseException as exc:  # every waiter hears about it
                for ticket in tickets:
                    ticket.error = exc
            finally:
                self._wake(tickets)
            for listener in self._listeners if tickets[0].error is None else ():
                try:
                    listener()
                except Exception:  # a listener's bug must not stop the writer
                    log.exception("outbox: a new-records listener failed")

    def on_stored(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the writer thread; it must be quick) after each commit of new
        records: the link drains at once instead of polling for them."""
        self._listeners.append(listener)

    @staticmethod
    def _wake(tickets: list[_Ticket]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Ticket]] = {}
        for ticket in tickets:
            if ticket.callback is not None:
                try:
                    ticket.callback(ticket)
                except Exception:  # one caller's bug must not stop the writer
                    log.exception("outbox: an enqueue_then callback failed")
            elif ticket.loop is None:
                ticket.event.set()  # type: ignore[union-attr]
            else:
                by_loop.setdefault(ticket.loop, []).append(ticket)
        for loop, waiting in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, waiting)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _write(self, batch: list[_Pending]) -> None:
        with self._lock:
            try:
                self._guarded(lambda: self._insert(batch))
            except apsw.FullError as exc:
                # The caller must know these records were not stored; eviction by the streams'
                # rules makes room for the next ones.
                freed = self._evict_for_space()
                raise OutboxFull(f"the disk holding {self.path} is full; {len(batch)} record(s) not stored, "
                                 f"{freed} evicted by the streams' rules to make room",
                                 "retry: enqueue resumes by itself once there is room") from exc
            self._keep_reserve()

    def _insert(self, batch: list[_Pending]) -> None:
        with self._txn():
            # seq is assigned here (the writer is the only inserter) so that one executemany
            # stores the whole commit; AUTOINCREMENT's counter never goes back.
            seq = self._db.execute(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name='records'), 0), "
                "coalesce((SELECT max(seq) FROM records), 0))").fetchone()[0]
            for item, rid in zip(batch, new_ids(len(batch))):
                seq += 1
                item.seq, item.id = seq, rid
            self._db.executemany(
                "INSERT INTO records (seq, id, stream, priority, created, expires, size, trace, body, crc) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",  # epoch NULL: this file's
                [(item.seq, item.id, item.stream, item.priority, item.created, item.expires, len(item.body),
                  item.trace, item.body, record_crc(item.id, item.stream, item.body)) for item in batch])
            for item in batch:
                c = self._counts.setdefault(item.stream, [0, 0])
                c[0] += 1
                c[1] += len(item.body)
                if item.expires is not None and (self._soonest_expiry is None or item.expires < self._soonest_expiry):
                    self._soonest_expiry = item.expires
            for stream in {item.stream for item in batch}:
                self._enforce_caps(stream)

    # -- eviction --------------------------------------------------------------------------

    def _delete_seqs(self, seqs: list[int], reason: str) -> int:
        """Evict records by seq, 500 at a time (SQLite's parameter limit)."""
        removed = 0
        for chunk in range(0, len(seqs), 500):
            part = seqs[chunk:chunk + 500]
            removed += self._delete(f"seq IN ({','.join('?' * len(part))})", tuple(part), reason)
        return removed

    def _delete(self, where: str, args: tuple[Any, ...], reason: str) -> int:
        """Evict matching records for ``reason``: the counts kept, the eviction counted and logged."""
        rows = self._db.execute(f"DELETE FROM records WHERE {where} RETURNING stream, size, seq", args).fetchall()
        by_stream: dict[str, int] = {}
        for s, size, seq in rows:
            self._counts[s][0] -= 1
            self._counts[s][1] -= size
            self._gone.append(seq)  # out of the in-flight state once committed (see _txn)
            by_stream[s] = by_stream.get(s, 0) + 1
        for s, n in by_stream.items():
            self._db.execute("INSERT INTO evictions VALUES (?,?,?) ON CONFLICT (stream, reason) "
                             "DO UPDATE SET count = count + excluded.count", (s, reason, n))
            self._evicted.append((s, reason, n))
        return len(rows)

    def _enforce_caps(self, stream: str) -> None:
        policy = self.policy(stream)
        if policy.max_rows is None and policy.max_bytes is None:
            return
        rows, size = self._counts[stream]
        if (policy.max_rows is None or rows <= policy.max_rows) and (policy.max_bytes is None or size <= policy.max_bytes):
            return
        self._delete("stream = ? AND expires IS NOT NULL AND expires < ?", (stream, time.time()), "expired")
        rows, size = self._counts[stream]
        excess_rows = rows - policy.max_rows if policy.max_rows is not None else 0
        excess_bytes = size - policy.max_bytes if policy.max_bytes is not None else 0
        if excess_rows <= 0 and excess_bytes <= 0:
            return
        # The lowest priority, oldest first, until both caps hold.
        victims, freed = [], 0
        for seq, rsize in self._db.execute(
                "SELECT seq, size FROM records WHERE stream = ? ORDER BY priority, seq", (stream,)):
            if len(victims) >= excess_rows and freed >= excess_bytes:
                break
            victims.append(seq)
            freed += rsize
        self._delete_seqs(victims, "row cap" if excess_rows > 0 else "byte cap")

    def _evict_for_space(self) -> int:
        """Disk full: give back the reserve so the eviction itself can commit, drop expired
        records anywhere, then the lowest priority oldest, a slice at a time, and shrink the WAL."""
        self._reserve.unlink(missing_ok=True)
        try:
            with self._txn():
                n = self._delete("expires IS NOT NULL AND expires < ?", (time.time(),), "expired (disk full)")
                total = sum(c[0] for c in self._counts.values())
                n += self._delete("seq IN (SELECT seq FROM records ORDER BY priority, seq LIMIT ?)",
                                  (max(1, total // 20),), "disk full")
            self._db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
            return n
        except apsw.FullError:
            return 0

    # -- draining --------------------------------------------------------------------------

    def next_batch(self, max_bytes: int = MAX_BATCH_BYTES // 2, max_records: int = 500,
                   live_share: float = 0.25) -> list[dict[str, Any]]:
        """Records to send next, not already in flight: mostly the oldest (in order), with
        ``live_share`` of the batch taken from the newest so fresh data is not stuck behind
        a backlog. Expired records are dropped (and counted) instead of sent."""
        return self._guarded(lambda: self._next_batch(max_bytes, max_records, live_share))

    def _next_batch(self, max_bytes: int, max_records: int, live_share: float) -> list[dict[str, Any]]:
        now = time.time()
        if self._soonest_expiry is not None and self._soonest_expiry < now:
            with self._txn():
                self._delete("expires IS NOT NULL AND expires < ?", (now,), "expired")
            self._soonest_expiry = self._load_soonest_expiry()
        live_n = int(max_records * live_share) if live_share > 0 else 0
        picked: list[dict[str, Any]] = []
        seen: dict[int, tuple[str, int, str | None]] = {}
        corrupt: list[int] = []
        size = 0
        # The backlog is read from just past the oldest-end cursor (every seq at or below it is
        # in flight or gone), so a full in-flight window is not rescanned for every batch.
        queries = []
        if live_n:
            # Seqs first: in a long drain the newest are in flight already, and reading their
            # bodies for every batch only to skip them is wasted (about 5% of a batch, measured).
            fresh = [s for (s,) in self._db.execute("SELECT seq FROM records ORDER BY seq DESC LIMIT ?", (live_n,))
                     if s not in self._inflight]
            if fresh:
                queries.append((f"SELECT {_SELECT} FROM records WHERE seq IN ({','.join('?' * len(fresh))}) "
                                "ORDER BY seq DESC", tuple(fresh), False))
        queries.append((f"SELECT {_SELECT} FROM records WHERE seq > ? ORDER BY seq", (self._cursor,), True))
        for sql, args, oldest_end in queries:
            for raw in self._db.execute(sql, args):
                seq = raw[0]
                if seq in self._inflight or seq in seen:
                    if oldest_end:
                        self._cursor = seq
                    continue
                if len(picked) >= max_records or (picked and size + raw[6] > max_bytes):
                    break
                if oldest_end:
                    self._cursor = seq
                row = _checked(raw)
                if row is None:
                    corrupt.append(seq)
                    continue
                size += row[6]
                # A literal, not dict(zip(...)): this is per record on the drain's hot path.
                seq, rid, stream, priority, created, expires, rsize, trace, body, crc, epoch = row
                seen[seq] = (stream, rsize, epoch)
                picked.append({"seq": seq, "id": rid, "stream": stream, "priority": priority, "created": created,
                               "expires": expires, "size": rsize, "trace": trace, "body": body, "crc": crc,
                               "epoch": epoch or self.epoch, "ts": created})
        if corrupt:  # a flipped bit SQLite's own checks cannot see: dropped and counted
            with self._txn():
                self._delete_seqs(corrupt, "corrupt")
        self._inflight.update(seen)
        picked.sort(key=lambda r: r["seq"])
        return picked

    def mark_sent(self, seqs: Iterable[int]) -> None:
        """The broker has the message carrying these (PUBACK): they await the regional commit.
        Memory only: after a restart they are simply sent again (the store dedupes)."""
        now = time.monotonic()
        with self._lock:
            for seq in seqs:
                if seq in self._inflight:
                    self._awaiting[seq] = now
            if self._awaiting and self._waiting_since is None:
                self._waiting_since = time.time()

    def ack(self, seqs: Iterable[int], epoch: str | None = None) -> int:
        """The regional store committed these records (of ``epoch``; None: of any): delete them.
        Only seqs this outbox handed out are taken, so a stale ack, or one for another epoch's
        seqs, deletes nothing that was not sent."""
        seqs = list(seqs)
        return self._guarded(lambda: self._ack(seqs, epoch))

    def _ack(self, seqs: list[int], epoch: str | None) -> int:
        inflight = self._inflight
        mine = self.epoch
        seqs = sorted({s for s in seqs if s in inflight and (epoch is None or (inflight[s][2] or mine) == epoch)})
        if not seqs:
            return 0
        # Without the fsync: a delete a power cut loses only sends the records again (the store
        # dedupes), and the next durable commit syncs the WAL with it in order. A tenth of an
        # ack's cost on this machine's disk (measured); an fsync on an SD card costs far more.
        relaxed = self._synchronous != "NORMAL"
        if relaxed:
            self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._txn():
                removed = self._delete_runs(seqs)
        finally:
            if relaxed:
                self._db.execute(f"PRAGMA synchronous={self._synchronous}")
        if removed:
            self._waiting_since = time.time() if self._awaiting else None
        return removed

    def _delete_runs(self, seqs: list[int]) -> int:
        """Delete in-flight records (sorted seqs) a run of consecutive seqs at a time: a range
        delete, with the counts kept from the in-flight state instead of rows read back (1.6x
        the rate of a delete by a list of seqs returning its rows, measured). An in-flight
        record is in the file until a committed delete takes it out of the in-flight state."""
        removed, start, recount = 0, 0, False
        for end in range(1, len(seqs) + 1):
            if end < len(seqs) and seqs[end] == seqs[end - 1] + 1:
                continue
            lo, hi = seqs[start], seqs[end - 1]
            self._db.execute("DELETE FROM records WHERE seq BETWEEN ? AND ?", (lo, hi))
            changed = self._db.changes()
            if changed != hi - lo + 1:  # not expected; the counts are then taken from the file
                log.warning("outbox: an acknowledged delete of seqs %d-%d removed %d rows, expected %d; recounting",
                            lo, hi, changed, hi - lo + 1)
                recount = True
            elif not recount:
                for seq in seqs[start:end]:
                    stream, size, _ = self._inflight[seq]
                    count = self._counts[stream]
                    count[0] -= 1
                    count[1] -= size
            self._gone.extend(seqs[start:end])
            removed += changed
            start = end
        if recount:
            self._counts = self._load_counts()
        return removed

    def resend_due(self, timeout_s: float) -> int:
        """Records whose commit has not come ``timeout_s`` after the broker took them go back to
        be sent again; returns how many."""
        cutoff = time.monotonic() - timeout_s
        with self._lock:
            due = [seq for seq, when in self._awaiting.items() if when <= cutoff]
        if due:
            self.release(due)
            self.resent += len(due)
        return len(due)

    def awaiting(self) -> int:
        """Records the broker has that the regional store has not acknowledged yet."""
        return len(self._awaiting)

    def release(self, seqs: Iterable[int] | None = None) -> None:
        """These records (default: all) were not acknowledged: send them again later."""
        with self._lock:
            if seqs is None:
                self._inflight.clear()
                self._awaiting.clear()
                self._cursor = 0
            else:
                seqs = list(seqs)
                for seq in seqs:
                    self._inflight.pop(seq, None)
                    self._awaiting.pop(seq, None)
                self._cursor = min([self._cursor, *(s - 1 for s in seqs)])

    # -- reporting -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return self._guarded(self._stats)

    def _stats(self) -> dict[str, Any]:
        streams: dict[str, dict[str, Any]] = {}
        for stream, rows, size, oldest in self._db.execute(
                "SELECT CAST(stream AS BLOB), count(*), sum(size), min(created) FROM records GROUP BY 1"):
            streams[stream.decode(errors="replace")] = {"rows": rows, "bytes": size or 0, "oldest": oldest,
                                                        "evictions": {}}
        for stream, reason, count in self._db.execute("SELECT stream, reason, count FROM evictions"):
            streams.setdefault(stream, {"rows": 0, "bytes": 0, "oldest": None, "evictions": {}})
            streams[stream]["evictions"][reason] = count
        waiting = self._waiting_since if self._awaiting or self._inflight else None
        return {"path": str(self.path), "device": self.device, "epoch": self.epoch, "streams": streams,
                "inflight": len(self._inflight), "awaiting_commit": len(self._awaiting),
                "awaiting_commit_s": round(time.time() - waiting, 1) if waiting is not None else 0.0,
                "resent": self.resent, "salvage": self.salvage,
                "commits": self._commits, "committed_records": self._committed}

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._writer is not None:
            self._writer.join()
        else:
            self._flush()  # what the shared writer has not taken yet, here and now
        with self._flushing, self._lock:
            self._db.close()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
