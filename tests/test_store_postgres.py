"""The PostgreSQL store on a real server: a batch goes straight in with one COPY; a batch that
holds records the store has (a resend) falls back to the staged dedupe, counted exactly."""

from __future__ import annotations

from edgeloop.sync.codec import encode_batch
from edgeloop.sync.outbox import Outbox
from edgeloop.sync.store import open_store


def messages(box: Outbox, n: int) -> tuple[list[tuple[str, bytes]], set[str]]:
    box.release()
    batch = box.next_batch(max_records=n, max_bytes=10**8, live_share=0)
    return [(f"edgeloop/v1/f1/{box.device}/data/s", encode_batch(box.device, batch))], {r["id"] for r in batch}


def test_a_resent_batch_is_deduped_through_the_staging_table_and_counted(tmp_path, postgres_url):
    store = open_store(postgres_url)
    try:
        with Outbox(tmp_path / "a.db", "dev-a") as a, Outbox(tmp_path / "b.db", "dev-b") as b:
            a.enqueue_many(("s", {"n": n}) for n in range(300))
            b.enqueue_many(("s", {"n": n}) for n in range(50))
            first, first_ids = messages(a, 200)
            done = store.commit(first)
            assert (done.new, done.duplicates) == (200, 0) and store._staged_until == 0.0  # the straight COPY
            again, again_ids = messages(a, 300)  # the first 200 resent, 100 new
            more, more_ids = messages(b, 50)
            done = store.commit(again + more)
            assert (done.new, done.duplicates) == (150, 200)
            assert store._staged_until > 0.0  # the straight COPY met a duplicate: staged for a while
            assert store.ids() == first_ids | again_ids | more_ids
            stats = store.stats()["devices"]
            assert stats["dev-a"]["records"] == 300 and stats["dev-a"]["duplicates_dropped"] == 200
            assert stats["dev-b"]["records"] == 50 and stats["dev-b"]["duplicates_dropped"] == 0
            # While staged, even a batch without duplicates goes through the dedupe, and it counts right.
            b.enqueue_many(("s", {"n": n}) for n in range(10))
            b.ack(range(1, 51))
            fresh, fresh_ids = messages(b, 10)
            assert store.commit(fresh).new == 10
            store._staged_until = 0.0  # the while is over
            resent = store.commit(fresh)  # the straight COPY again, which this resend aborts
            assert (resent.new, resent.duplicates) == (0, 10)
            assert len(store.ids()) == 360
    finally:
        store.close()
