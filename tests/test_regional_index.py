"""Regional retrieval, end to end on real parts: devices' index deltas through their outboxes,
a real Mosquitto and the receiver into pgvector (HNSW) on a real PostgreSQL; a device's query
that its own index cannot answer goes to the regional index over MQTT 5 and its answer is
cached by the freshness rule."""

from __future__ import annotations

import logging
import time

import msgpack
import numpy as np
import pytest

from conftest import wait_for

from edgeloop.runtime.retrieval import VectorIndex, export_delta_chunks, import_delta
from edgeloop.sync.index_share import IndexSharer, SharePolicy
from edgeloop.sync.link import LinkConfig, MqttLink
from edgeloop.sync.mqtt_client import BrokerConfig
from edgeloop.sync.offload import Offloader, Responder
from edgeloop.sync.outbox import Outbox
from edgeloop.sync.receiver import RegionalReceiver
from edgeloop.sync.regional_index import nearest_answerer
from edgeloop.sync.regional_lookup import RegionalLookup
from edgeloop.sync.store import open_store
from edgeloop.sync.topics import INDEX_STREAM

DIM = 16
rng = np.random.default_rng(7)
CENTRES = rng.normal(size=(6, DIM)).astype(np.float32)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def near(centre: int, spread: float = 0.02) -> np.ndarray:
    return unit(CENTRES[centre] + rng.normal(scale=spread, size=DIM).astype(np.float32))


def rows(box: Outbox) -> int:
    return sum(s["rows"] for s in box.stats()["streams"].values())


class Device:
    def __init__(self, tmp_path, name: str, port: int, policy: SharePolicy = SharePolicy()) -> None:
        self.index = VectorIndex(tmp_path / f"{name}-index.db")
        self.items = self.index.create("things", DIM, model="emb", model_version="1")
        self.box = Outbox(tmp_path / f"{name}-outbox.db", name)
        self.sharer = IndexSharer(self.index, self.box, tmp_path / f"{name}-shared.json", policy)
        self.link = MqttLink(self.box, LinkConfig("127.0.0.1", port, fleet="f1", device=name))
        self.link.start()

    def close(self) -> None:
        self.link.stop()
        self.box.close()
        self.index.close()


@pytest.fixture
def regional_pg(broker, pgvector_url):
    store = open_store(pgvector_url)
    receiver = RegionalReceiver(store, BrokerConfig("127.0.0.1", broker.port), fleet="f1", client_id="rx-index")
    receiver.start()
    assert receiver.subscribed.wait(10)
    yield store
    receiver.stop()
    store.close()


def test_deltas_reach_pgvector_once_and_in_order_and_only_ids_and_vectors_leave_by_default(
        tmp_path, broker, regional_pg):
    store = regional_pg
    a = Device(tmp_path, "cam-a", broker.port, SharePolicy(labels=True))
    b = Device(tmp_path, "cam-b", broker.port)  # the default policy: ids and vectors only
    try:
        a.items.upsert([f"a{n}" for n in range(4)], np.stack([near(n) for n in range(4)]),
                       labels=["bolt", "nut", "gear", "cog"], documents=["secret"] * 4)
        b.items.upsert(["b0"], near(4)[None], labels=["spring"])
        first = a.sharer.share()
        assert first.deltas == 1 and b.sharer.share().collections == {"things": b.items.spec.version}
        wait_for(lambda: rows(a.box) == 0 and rows(b.box) == 0, 20, "the deltas committed regionally")
        found = store.nearest("emb", "1", near(1), k=2)
        assert found[0]["id"] == "a1" and found[0]["device"] == "cam-a" and found[0]["label"] == "nut"
        spring = store.nearest("emb", "1", near(4), k=1)[0]
        assert (spring["id"], spring["device"], spring["label"]) == ("b0", "cam-b", None)  # no label left cam-b
        with store._connection().cursor() as cur:  # nothing but ids, vectors and what the policy allows
            tbl = cur.execute("SELECT tbl FROM index_models").fetchone()[0]
            assert "secret" not in str(cur.execute(f"SELECT * FROM {tbl}").fetchall())
        assert a.sharer.share().deltas == 0  # nothing changed: nothing sent
        old_delta = export_delta_chunks(a.items)[1][0]  # a1 alive, at the version of the first share
        a.items.delete(["a1"])
        a.sharer.share()
        wait_for(lambda: rows(a.box) == 0, 20, "the delete committed")
        assert "a1" not in [n["id"] for n in store.nearest("emb", "1", near(1), k=3)]
        a.box.enqueue(INDEX_STREAM, old_delta)  # an older delta, arriving late (a resend)
        wait_for(lambda: rows(a.box) == 0, 20, "the late delta committed")
        assert "a1" not in [n["id"] for n in store.nearest("emb", "1", near(1), k=3)]  # it changed nothing
        index = store.stats()["index"]
        assert index["models"] == {"emb 1 (16)": 4} and index["deltas_refused"] == 0
    finally:
        a.close()
        b.close()


def test_a_device_asks_the_region_when_its_own_index_has_no_close_match_and_caches_the_answer(
        tmp_path, broker, regional_pg):
    store = regional_pg
    other = Device(tmp_path, "cam-o", broker.port, SharePolicy(labels=True))
    me = Device(tmp_path, "cam-me", broker.port)
    responder = Responder(BrokerConfig("127.0.0.1", broker.port), "f1", {}, client_id="rx-nearest",
                          queries={"nearest": nearest_answerer(store)}).start()
    offloader = Offloader(BrokerConfig("127.0.0.1", broker.port), "f1", "cam-me")
    try:
        other.items.upsert(["o2"], near(2)[None], labels=["gear"])
        other.sharer.share()
        me.items.upsert(["m0"], near(0)[None], labels=["bolt"])
        wait_for(lambda: rows(other.box) == 0 and responder.connected.is_set() and offloader.online.is_set(), 20,
                 "the delta in and the responder up")
        lookup = RegionalLookup(me.items, offloader, fresh_s=0.5)
        assert lookup.nearest(near(0), k=1).source == "local"  # close enough at home: nobody asked
        asked = lookup.nearest(near(2), k=1, timeout_s=2.0)
        assert asked.source == "regional" and asked.neighbours[0]["id"] == "o2", asked
        again = lookup.nearest(near(2), k=1, timeout_s=2.0)
        assert again.source == "regional-cache" and again.neighbours == asked.neighbours
        time.sleep(0.6)  # past fresh_s: asked again
        assert lookup.nearest(near(2), k=1, timeout_s=2.0).source == "regional"
        responder.stop()
        start = time.monotonic()
        late = lookup.nearest(near(3), k=1, timeout_s=0.2)  # nobody answers: local, said, in time
        assert late.source == "local" and "did not answer" in late.note and time.monotonic() - start < 0.5
        assert lookup.stats()["asked"] == 3 and lookup.stats()["from_cache"] == 1
    finally:
        offloader.close()
        other.close()
        me.close()


def test_hostile_index_deltas_are_kept_aside_and_the_rest_is_committed(tmp_path, broker, regional_pg, caplog):
    caplog.set_level(logging.WARNING, "edgeloop.regional")
    store = regional_pg
    d = Device(tmp_path, "cam-h", broker.port)
    try:
        d.items.upsert(["h0"], near(5)[None])
        good = export_delta_chunks(d.items)[1][0]
        delta = msgpack.unpackb(good, raw=False)
        nan = dict(delta, items=[dict(delta["items"][0], vector=np.full(DIM, np.nan, np.float32).tobytes())])
        huge = dict(delta, dim=5000, items=[dict(delta["items"][0], vector=bytes(4 * 5000))])
        nameless = dict(delta, model=None)
        for body in (b"not a delta", msgpack.packb(nan), msgpack.packb(huge), msgpack.packb(nameless), good):
            d.box.enqueue(INDEX_STREAM, body)
        d.box.enqueue("s", {"plain": 1})
        wait_for(lambda: rows(d.box) == 0, 20, "every record committed")
        assert store.stats()["malformed"] == 4 and "kept aside" in caplog.text
        assert store.stats()["index"]["deltas_refused"] == 4
        assert store.nearest("emb", "1", near(5), k=1)[0]["id"] == "h0"
        assert len(store.ids()) == 6
    finally:
        d.close()


def test_without_pgvector_deltas_are_stored_and_the_receiver_says_so(tmp_path, postgres_url, caplog):
    caplog.set_level(logging.WARNING, "edgeloop.regional")
    store = open_store(postgres_url)  # Debian's PostgreSQL: no pgvector
    try:
        assert store.index is None and "has no pgvector" in caplog.text and "postgresql-16-pgvector" in caplog.text
        assert store.nearest("emb", "1", near(0), k=1) == []
        assert store.stats()["index"] == {"pgvector": False}
    finally:
        store.close()


def test_deltas_are_chunked_to_fit_an_outbox_record_and_each_chunk_imports(tmp_path):
    with VectorIndex(tmp_path / "a.db") as src, VectorIndex(tmp_path / "b.db") as dst:
        items = src.create("c", DIM, model="emb", model_version="1")
        items.upsert([f"i{n}" for n in range(300)], np.stack([near(n % 6, 0.3) for n in range(300)]),
                     labels=["x"] * 300)
        items.delete([f"i{n}" for n in range(0, 300, 3)])
        version, chunks = export_delta_chunks(items, max_bytes=8192, labels=False)
        assert version == items.spec.version and len(chunks) > 5 and max(map(len, chunks)) <= 8192
        copy = dst.create("c", DIM, model="emb", model_version="1")
        for chunk in chunks:
            import_delta(copy, chunk)
        assert copy.stats()["items"] == 200 and {n.label for n in copy.query(near(0), k=5)} == {None}


def test_the_agents_local_index_goes_up_to_the_regional_index_when_its_config_says_so(tmp_path, broker, regional_pg):
    from dataclasses import replace

    from conftest import camera_agent_config, running_agent

    config = replace(camera_agent_config(tmp_path / "data", index_every=1), broker=f"127.0.0.1:{broker.port}",
                     fleet="f1", index_share_every_s=0.3, answer_requests=False)
    with running_agent(config) as agent:
        wait_for(lambda: sum(regional_pg.stats().get("index", {}).get("models", {}).values()) >= 3, 30,
                 "the camera's vectors in the regional index")
        shared = agent.worker.stats()["index_share"]
        assert shared["errors"] == 0 and shared["shared_versions"] and shared["policy"]["labels"] is False
    with regional_pg._connection().cursor() as cur:
        tbl = cur.execute("SELECT tbl FROM index_models").fetchone()[0]
        labels = {r[0] for r in cur.execute(f"SELECT label FROM {tbl}").fetchall()}
        regional_pg._conn.commit()
    assert labels == {None}  # the default policy: ids and vectors only
