"""The durable outbox on real SQLite files: durability, caps and eviction, TTL, live-first
batches, acknowledgement, corruption salvage, and a full disk (a tmpfs the test mounts)."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

from edgeloop.sync.codec import CodecError, decode_batch, encode_batch
from edgeloop.sync.outbox import SCHEMA_VERSION, Outbox, OutboxFull, StreamPolicy


def ids_in(path: Path) -> set[str]:
    db = apsw.Connection(str(path))
    try:
        return {row[0] for row in db.execute("SELECT id FROM records")}
    finally:
        db.close()


def test_enqueue_is_durable_and_ack_deletes(tmp_path):
    path = tmp_path / "outbox.db"
    with Outbox(path, "dev-1") as box:
        done = [box.enqueue("vib", {"n": n}) for n in range(10)]
        assert [d.seq for d in done] == sorted(d.seq for d in done) and len({d.id for d in done}) == 10
    with Outbox(path, "dev-1") as box:  # a new process would see the same
        batch = box.next_batch(max_records=4, live_share=0)
        assert [r["seq"] for r in batch] == [d.seq for d in done[:4]]
        assert box.ack(r["seq"] for r in batch) == 4
        assert box.stats()["streams"]["vib"]["rows"] == 6
    assert ids_in(path) == {d.id for d in done[4:]}


def test_concurrent_enqueues_are_group_committed(tmp_path):
    import threading

    with Outbox(tmp_path / "o.db", "d") as box:
        results: list = []

        def worker(k: int) -> None:
            for n in range(200):
                results.append(box.enqueue("s", {"k": k, "n": n}))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = box.stats()
        assert len(results) == 1600 and stats["streams"]["s"]["rows"] == 1600
        assert len({r.seq for r in results}) == 1600
        # One sync served several writers (8 threads: ideally 200 commits; one per record without grouping).
        assert stats["committed_records"] == 1600 and stats["commits"] < 1600 * 0.75, stats


def test_coroutines_enqueue_durably_and_share_commits(tmp_path):
    import asyncio

    path = tmp_path / "o.db"

    async def main(box: Outbox) -> list:
        return await asyncio.gather(*(box.enqueue_async("s", {"n": n}) for n in range(500)))

    with Outbox(path, "d") as box:
        done = asyncio.run(main(box))
        stats = box.stats()
    assert len({d.seq for d in done}) == 500 and len({d.id for d in done}) == 500
    assert stats["commits"] <= 50, stats  # 500 coroutines in one loop: a handful of commits
    assert ids_in(path) == {d.id for d in done}  # on disk when the coroutines were woken


def test_a_cancelled_coroutine_still_stored_its_record_and_errors_reach_the_caller(tmp_path):
    import asyncio

    async def main(box: Outbox) -> None:
        task = asyncio.ensure_future(box.enqueue_async("s", {"n": 1}))
        await asyncio.sleep(0)  # submitted to the writer
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(CodecError, match="cannot be serialized"):
            await box.enqueue_async("s", {"bad": object()})
        assert (await box.enqueue_async("s", {"n": 2})).seq > 0  # still serving

    path = tmp_path / "o.db"
    with Outbox(path, "d") as box:
        asyncio.run(main(box))
    assert len(ids_in(path)) == 2


def test_ids_are_time_ordered_and_unique(tmp_path):
    with Outbox(tmp_path / "o.db", "d") as box:
        first = box.enqueue_many([("s", n) for n in range(1000)])
        time.sleep(0.002)
        later = box.enqueue("s", 0)
    ids = [d.id for d in first]
    assert len(set(ids)) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert max(i[:12] for i in ids) < later.id[:12]  # the millisecond prefix orders them


def test_row_cap_evicts_expired_then_lowest_priority_oldest_and_counts(tmp_path, caplog):
    policy = {"events": StreamPolicy(priority=5, max_rows=4)}
    with Outbox(tmp_path / "o.db", "d", streams=policy) as box:
        old_low = box.enqueue("events", "low", priority=0)
        expiring = box.enqueue("events", "short-lived", ttl_s=0.01)
        keep = [box.enqueue("events", f"e{n}") for n in range(3)]
        time.sleep(0.02)
        with caplog.at_level(logging.WARNING, logger="edgeloop.outbox"):
            newest = box.enqueue("events", "newest")  # 6 rows > 4: expired first, then priority 0
            box.enqueue("events", "one more")  # then the oldest of equal priority
        left = {r["id"] for r in box.next_batch(live_share=0)}
        assert old_low.id not in left and expiring.id not in left and keep[0].id not in left
        assert {keep[1].id, keep[2].id, newest.id} <= left and len(left) == 4
        stats = box.stats()["streams"]["events"]
        assert stats["evictions"] == {"expired": 1, "row cap": 2}
        assert any("evicted 1 record(s) from stream 'events' (expired)" in r.getMessage() for r in caplog.records)


def test_byte_cap(tmp_path):
    with Outbox(tmp_path / "o.db", "d", streams={"img": StreamPolicy(max_bytes=3000)}) as box:
        for n in range(10):
            box.enqueue("img", b"x" * 1000)
        stats = box.stats()["streams"]["img"]
        assert stats["bytes"] <= 3000 and stats["rows"] == 2 and stats["evictions"] == {"byte cap": 8}


def test_ttl_records_are_dropped_not_sent(tmp_path):
    with Outbox(tmp_path / "o.db", "d", streams={"tele": StreamPolicy(ttl_s=0.01)}) as box:
        box.enqueue("tele", 1)
        kept = box.enqueue("tele", 2, ttl_s=60)
        time.sleep(0.02)
        assert [r["id"] for r in box.next_batch()] == [kept.id]
        assert box.stats()["streams"]["tele"]["evictions"] == {"expired": 1}


def test_live_share_puts_fresh_records_in_every_batch(tmp_path):
    with Outbox(tmp_path / "o.db", "d") as box:
        done = box.enqueue_many(("s", n) for n in range(1000))
        batch = box.next_batch(max_records=100, live_share=0.25)
        seqs = [r["seq"] for r in batch]
        assert len(seqs) == 100 and seqs == sorted(seqs)
        assert set(seqs) == {d.seq for d in done[:75]} | {d.seq for d in done[-25:]}
        second = box.next_batch(max_records=100, live_share=0.25)  # nothing in flight is sent twice
        assert not set(seqs) & {r["seq"] for r in second}
        box.release(seqs)  # the link dropped: those go again
        assert set(seqs) <= {r["seq"] for r in box.next_batch(max_records=1000, live_share=0)}


def test_batches_encode_to_the_envelope(tmp_path):
    with Outbox(tmp_path / "o.db", "cam-7") as box:
        box.enqueue("vib", {"rms": 1.5}, trace="t-1")
        envs = decode_batch(encode_batch("cam-7", box.next_batch()))
        assert envs[0].body == {"rms": 1.5} and envs[0].device == "cam-7" and envs[0].trace == "t-1"


def test_bad_bodies_and_streams_are_refused_at_enqueue(tmp_path):
    from edgeloop.runtime.errors import ConfigError

    with Outbox(tmp_path / "o.db", "d") as box:
        with pytest.raises(CodecError, match="body cannot be serialized"):
            box.enqueue("s", {1, 2})
        with pytest.raises(ConfigError, match="stream: '' is not a stream name"):
            box.enqueue("", 1)
        assert box.enqueue("s", 1).seq >= 1  # still serving


def test_corrupted_files_never_crash_and_salvage_what_they_can(tmp_path):
    """50 trials of random byte flips in a real outbox file."""
    rng = random.Random(1)
    base = tmp_path / "base.db"
    with Outbox(base, "d") as box:
        written = {e.id for e in box.enqueue_many(("s", {"n": n, "pad": "x" * 200}) for n in range(300))}
    pristine = base.read_bytes()
    outcomes = {"intact": 0, "salvaged": 0}
    for trial in range(50):
        path = tmp_path / f"t{trial}.db"
        data = bytearray(pristine)
        for _ in range(rng.randint(1, 40)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        with Outbox(path, "d") as box:
            if box.salvage:
                outcomes["salvaged"] += 1
                aside = Path(box.salvage["quarantined"])
                assert aside.exists()  # kept, never deleted
            else:
                outcomes["intact"] += 1
            ids = {r["id"] for r in box.next_batch(max_records=1000, max_bytes=10**8, live_share=0)}
            assert ids <= written  # whatever survived is real data
            box.enqueue("s", "after")  # and the outbox carries on
    assert outcomes["salvaged"] > 0, outcomes


def test_a_file_that_is_not_a_database_is_kept_aside(tmp_path):
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with Outbox(path, "d") as box:
        assert box.salvage["salvaged"] == 0 and "NotADB" in box.salvage["reason"]
        assert Path(box.salvage["quarantined"]).read_bytes().startswith(b"this is not sqlite")
        box.enqueue("s", 1)


def test_full_disk_raises_typed_error_evicts_and_resumes(small_disk):
    path = small_disk / "o.db"
    with Outbox(path, "d", streams={"bulk": StreamPolicy(priority=0), "alarm": StreamPolicy(priority=9)}) as box:
        alarm = box.enqueue("alarm", "keep me")
        stored = 0
        with pytest.raises(OutboxFull, match=r"the disk holding .* is full; 1 record\(s\) not stored, \d+ evicted "
                                             r"by the streams' rules to make room: retry"):
            for _ in range(5000):  # 4 MiB disk, 2 KB records: full long before this ends
                box.enqueue("bulk", os.urandom(2000))
                stored += 1
        stats = box.stats()["streams"]
        assert stored > 500 and stats["bulk"]["evictions"].get("disk full", 0) > 0  # eviction ran, by the rule
        held = {r["id"] for r in box.next_batch(max_records=10_000, max_bytes=10**9, live_share=0)}
        assert alarm.id in held  # the high-priority stream kept its record
        box.release()
        assert box.enqueue("bulk", b"after").seq > 0  # resumes by itself: eviction made room
    with Outbox(path, "d") as box:
        assert box.salvage is None  # no corruption


def test_outbox_stats_command(tmp_path):
    import json

    path = tmp_path / "o.db"
    with Outbox(path, "d", streams={"s": StreamPolicy(max_rows=2)}) as box:
        for n in range(3):
            box.enqueue("s", n)
    exe = str(Path(sys.executable).parent / "edgeloop")
    out = subprocess.run([exe, "outbox", "stats", "--db", str(path), "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    stream = json.loads(out.stdout)["streams"]["s"]
    assert stream["rows"] == 2 and stream["evictions"] == {"row cap": 1}
    missing = subprocess.run([exe, "outbox", "stats", "--db", str(tmp_path / "nope.db")], capture_output=True, text=True)
    assert missing.returncode == 2 and "--db: " in missing.stderr and "does not exist" in missing.stderr


def test_a_version_1_file_is_migrated_in_place(tmp_path):
    path = tmp_path / "v1.db"
    db = apsw.Connection(str(path))
    db.execute("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, stream TEXT NOT NULL,
            priority INTEGER NOT NULL, created REAL NOT NULL, expires REAL, size INTEGER NOT NULL, trace TEXT,
            body BLOB NOT NULL, crc INTEGER NOT NULL);
        CREATE INDEX records_evict ON records (stream, priority, seq);
        CREATE TABLE evictions (stream TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL,
            PRIMARY KEY (stream, reason));
        INSERT INTO meta VALUES ('schema', '1');""")
    from edgeloop.sync.outbox import record_crc
    body = b"\x81\xa1n\x01"
    db.execute("INSERT INTO records (id, stream, priority, created, size, body, crc) VALUES (?,?,?,?,?,?,?)",
               ("old-1", "s", 0, time.time(), len(body), body, record_crc("old-1", "s", body)))
    db.close()
    with Outbox(path, "d") as box:
        new = box.enqueue("s", {"n": 2})
        batch = box.next_batch(live_share=0)
    assert [r["id"] for r in batch] == ["old-1", new.id] and new.seq == 2
    db = apsw.Connection(str(path))
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(SCHEMA_VERSION),)
    assert db.execute("SELECT name FROM sqlite_master WHERE name='records_expires'").fetchone() == ("records_expires",)
    db.close()


def test_released_records_are_sent_again_before_newer_ones(tmp_path):
    with Outbox(tmp_path / "o.db", "d") as box:
        done = box.enqueue_many([("s", n) for n in range(30)])
        first = box.next_batch(max_records=10, live_share=0)
        second = box.next_batch(max_records=10, live_share=0)
        assert [r["seq"] for r in second] == [d.seq for d in done[10:20]]
        box.release(r["seq"] for r in first[5:])  # the message carrying these was lost
        again = box.next_batch(max_records=10, live_share=0)
        assert [r["seq"] for r in again] == [d.seq for d in done[5:10] + done[20:25]]
        box.release()  # disconnect: everything in flight goes back
        assert [r["seq"] for r in box.next_batch(max_records=30, live_share=0)] == [d.seq for d in done]


def test_a_commit_ack_deletes_without_the_fsync_and_the_file_stays_durable(tmp_path):
    """The delete on a commit ack runs at synchronous=NORMAL (a lost delete only resends);
    every other commit is back at FULL."""
    with Outbox(tmp_path / "o.db", "dev") as box:
        box.enqueue_many(("s", {"n": n}) for n in range(10))
        seqs = [r["seq"] for r in box.next_batch()]
        box.mark_sent(seqs)
        assert box.ack(seqs) == 10
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again


def test_an_ack_whose_transaction_fails_leaves_the_records_in_flight(tmp_path, monkeypatch):
    """The in-flight state changes only once the delete commits (it is no longer copied per
    transaction): a delete that rolls back leaves every record awaiting its commit."""
    with Outbox(tmp_path / "o.db", "dev") as box:
        box.enqueue_many(("s", {"n": n}) for n in range(20))
        seqs = [r["seq"] for r in box.next_batch()]
        box.mark_sent(seqs)
        real = box._delete_runs

        def delete_then_fail(*args, **kwargs):
            real(*args, **kwargs)
            raise apsw.IOError("injected")

        monkeypatch.setattr(box, "_delete_runs", delete_then_fail)
        with pytest.raises(apsw.IOError):
            box.ack(seqs)
        monkeypatch.undo()
        stats = box.stats()
        assert stats["awaiting_commit"] == 20 and stats["inflight"] == 20
        assert sum(s["rows"] for s in stats["streams"].values()) == 20
        assert box.ack(seqs) == 20 and box.stats()["inflight"] == 0


def test_acks_delete_only_their_epochs_records_in_runs_and_keep_the_counts_true(tmp_path, caplog):
    """An ack names an epoch and seq ranges; the delete goes a run of consecutive seqs at a time
    and keeps the row and byte counts (what the caps act on) from the in-flight state. Records
    salvaged from an older epoch sit among this file's; an ack for one epoch leaves the other's."""
    def counts_true() -> bool:
        return {k: v for k, v in box._counts.items() if v != [0, 0]} == box._load_counts()

    with Outbox(tmp_path / "o.db", "dev") as box:
        box.enqueue_many(("a" if n % 3 else "b", {"n": "x" * n}) for n in range(40))
        box._db.execute("UPDATE records SET epoch = 'old' WHERE seq % 7 = 0")  # as salvage leaves them
        seqs = [r["seq"] for r in box.next_batch(max_records=40, live_share=0)]
        old = [s for s in seqs if s % 7 == 0]
        assert box.ack(seqs, "not-an-epoch") == 0
        with caplog.at_level(logging.WARNING, logger="edgeloop.outbox"):
            assert box.ack([seqs[1], seqs[1], seqs[2]], box.epoch) == 2  # overlapping ranges: each seq once
        assert "recounting" not in caplog.text and counts_true()
        holes = [s for s in seqs if s % 5]  # runs broken by holes and by the other epoch's seqs
        assert box.ack(holes, box.epoch) == len([s for s in holes if s % 7 and s not in seqs[1:3]])
        assert counts_true()
        assert box.ack(seqs, "old") == len(old)
        assert counts_true()
        assert box.ack(seqs) == len([s for s in seqs if s % 5 == 0 and s % 7])
        assert counts_true() and box.stats()["inflight"] == 0
        assert not box.stats()["streams"]
        # A record gone behind the in-flight state's back (not expected): counted from the file.
        box.enqueue_many(("a", {"n": n}) for n in range(10))
        seqs = [r["seq"] for r in box.next_batch(live_share=0)]
        box._db.execute("DELETE FROM records WHERE seq = ?", (seqs[3],))
        with caplog.at_level(logging.WARNING, logger="edgeloop.outbox"):
            assert box.ack(seqs) == 9
        assert "recounting" in caplog.text and counts_true()

def test_one_shared_writer_commits_for_many_outboxes_and_a_full_disk_stays_that_outboxs_own(tmp_path, small_disk):
    """A gateway's many devices: one writer thread for all their outboxes (no thread each);
    every enqueue durable, seqs in order per outbox, one full disk an error to its own caller."""
    import threading

    from edgeloop.sync.outbox_writer import SharedWriter

    writer = SharedWriter()
    boxes = [Outbox(tmp_path / f"d{i}.db", f"d{i}", writer=writer) for i in range(12)]
    full = Outbox(small_disk / "full.db", "full", writer=writer)
    names = [t.name for t in threading.enumerate()]
    assert names.count("outbox-writer") == 0 and names.count("outbox-shared-writer") == 1, names
    results: dict[int, list] = {i: [] for i in range(len(boxes))}
    called: list = []

    def worker(k: int) -> None:
        for n in range(100):
            for i, box in enumerate(boxes):
                if i % 3 == k:
                    results[i].append(box.enqueue("s", {"n": n}))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    with pytest.raises(OutboxFull, match="is full"):
        for _ in range(5000):
            full.enqueue("bulk", os.urandom(2000))
    for t in threads:
        t.join()
    boxes[0].enqueue_then([("s", {"late": True})], called.append)  # pending when it closes
    for box in boxes + [full]:
        box.close()
    writer.stop()
    assert called and not isinstance(called[0], BaseException)
    for i in range(len(boxes)):
        seqs = [r.seq for r in results[i]]
        assert seqs == sorted(seqs) and len(set(seqs)) == 100
        expected = {r.id for r in results[i]} | ({called[0][0].id} if i == 0 else set())
        assert ids_in(tmp_path / f"d{i}.db") == expected
    assert writer.stats()["errors"] == 0 and not writer.stats()["alive"]


def test_an_outbox_whose_shared_writer_stopped_still_stores_its_enqueues(tmp_path):
    from edgeloop.sync.outbox_writer import SharedWriter

    writer = SharedWriter()
    writer.stop()
    with Outbox(tmp_path / "o.db", "d", writer=writer) as box:
        done = box.enqueue("s", {"n": 1})
    assert ids_in(tmp_path / "o.db") == {done.id}
