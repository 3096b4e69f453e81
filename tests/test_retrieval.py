"""The on-device index on real SQLite files with sqlite-vec loaded through apsw: modes,
filters, partitions, persistence, typed errors (their text is part of the contract), model
versions and rebuilds, corruption, and deltas that keep raw sources on the device."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from edgeloop.runtime.retrieval import (BadDelta, BadQuery, BadVector, ModelVersionMismatch, RetrievalError,
                                        UnknownCollection, VectorIndex, export_delta, import_delta)

DIM = 32


def clustered(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 20), dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    return list(np.argsort(1 - x @ q)[:k])


@pytest.mark.parametrize("storage", ["float", "int8", "binary"])
def test_each_mode_finds_the_exact_neighbours_and_survives_a_restart(tmp_path, storage):
    x = clustered(2000)
    ids = [f"v{i}" for i in range(len(x))]
    with VectorIndex(tmp_path / "index.db") as index:
        c = index.create("things", DIM, storage=storage)
        for start in range(0, len(x), 500):
            c.upsert(ids[start:start + 500], x[start:start + 500])
    with VectorIndex(tmp_path / "index.db") as index:  # reopened: a new process would see the same
        c = index.collection("things")
        assert len(c) == 2000 and index.recovery is None
        recall = []
        for qi in range(0, 2000, 100):
            got = [n.id for n in c.query(x[qi], 10)]
            want = [ids[i] for i in exact_top(x, x[qi], 10)]
            recall.append(len(set(got) & set(want)) / 10)
            assert got[0] == ids[qi]  # itself, at distance 0
        assert np.mean(recall) >= 0.9, (storage, np.mean(recall))
        hit = c.query(x[7], 1)[0]
        assert hit.distance == pytest.approx(0.0, abs=1e-5)  # exact float distances in every mode


def test_metadata_filters_partitions_documents_and_aux(tmp_path):
    x = clustered(200)
    with VectorIndex(tmp_path / "i.db") as index:
        c = index.create("cases", DIM, metadata={"site": "text", "year": "integer", "score": "float"},
                         partition=("camera", "integer"))
        c.upsert([f"c{i}" for i in range(200)], x, labels=["ok" if i % 3 else "fault" for i in range(200)],
                 metadata=[{"site": "north" if i % 2 else "south", "year": 2020 + i % 5, "score": i / 10}
                           for i in range(200)],
                 documents=[f"case {i}: bearing noise" for i in range(200)], partitions=[i % 4 for i in range(200)],
                 aux=[{"technician": f"t{i % 7}"} for i in range(200)])
        hits = c.query(x[0], 10, where={"site": "south", "label": "fault", "camera": 0})
        assert hits and all(h.metadata["site"] == "south" and h.label == "fault" for h in hits)
        rows = {h.id: c.get(h.id) for h in hits}
        assert all(r["partition"] == 0 for r in rows.values())
        assert hits[0].document.startswith("case ") and "technician" in hits[0].aux
        assert [h.id for h in c.query(x[0], 3, where={"year": 2020, "camera": 0})][0] == "c0"


def test_upsert_replaces_and_delete_removes(tmp_path):
    x = clustered(50)
    with VectorIndex(tmp_path / "i.db") as index:
        c = index.create("s", DIM, storage="binary")
        c.upsert([f"a{i}" for i in range(50)], x)
        c.add("a1", x[2], label="moved")
        assert len(c) == 50 and c.get("a1")["label"] == "moved"
        assert {h.id for h in c.query(x[2], 2)} == {"a1", "a2"}
        assert c.delete(["a1", "a2", "nope"]) == 2 and len(c) == 48
        assert "a2" not in {h.id for h in c.query(x[2], 5)}


def test_bad_input_gets_typed_errors_that_name_the_problem(tmp_path):
    with VectorIndex(tmp_path / "i.db") as index:
        c = index.create("s", DIM, metadata={"year": "integer"})
        good = clustered(1)[0]
        with pytest.raises(BadVector) as e:
            c.add("x", np.ones(DIM + 1), metadata={"year": 1})
        assert str(e.value) == (f"vector has {DIM + 1} dimensions, the collection has {DIM}: embed with the "
                                f"collection's model, or create a collection of dimension {DIM + 1}")
        bad = good.copy()
        bad[3] = np.nan
        with pytest.raises(BadVector) as e:
            c.add("x", bad, metadata={"year": 1})
        assert str(e.value) == "vector 0 contains NaN or infinite values: check the embedding model's output; nothing was stored"
        bad[3] = np.inf
        with pytest.raises(BadVector, match="NaN or infinite"):
            c.query(bad)
        with pytest.raises(BadVector, match="all zeros"):
            c.add("x", np.zeros(DIM), metadata={"year": 1})
        c.add("ok", good, metadata={"year": 1})
        for k in (0, 4097, -1, 2.5):
            with pytest.raises(BadQuery) as e:
                c.query(good, k)
            assert str(e.value) == f"k = {k!r} is out of range: use 1 to 4096"
        with pytest.raises(BadQuery) as e:
            c.query(good, 1, where={"colour": "red"})
        assert str(e.value) == "cannot filter on 'colour': filter on one of: label, year"
        with pytest.raises(BadQuery, match="'year' is integer, not str"):
            c.query(good, 1, where={"year": "2020"})
        with pytest.raises(RetrievalError, match="metadata year missing"):
            c.add("y", good)
        with pytest.raises(UnknownCollection) as e:
            index.collection("nope")
        assert str(e.value) == f"no collection 'nope' in {tmp_path / 'i.db'}: create it first (collections here: s)"
        with pytest.raises(RetrievalError, match="name 'Bad-Name' is not allowed"):
            index.create("Bad-Name", DIM)
        with pytest.raises(RetrievalError, match="already exists"):
            index.create("s", DIM)
        assert len(c) == 1 and c.query(good, 1)[0].id == "ok"  # nothing half-stored, still serving


def test_another_model_version_is_refused_and_a_rebuild_reembeds_the_sources(tmp_path):
    rng = np.random.default_rng(3)
    raw = [rng.standard_normal(8).astype(np.float32) for _ in range(30)]

    def embed_v1(src: bytes, kind: str | None = None) -> np.ndarray:
        return np.frombuffer(src, np.float32)

    def embed_v2(src: bytes, kind: str | None = None) -> np.ndarray:  # another model: 16-d
        v = np.frombuffer(src, np.float32)
        return np.concatenate([v, -v])

    with VectorIndex(tmp_path / "i.db") as index:
        c = index.create("s", 8, model="toy", model_version="1", storage="int8")
        for i, r in enumerate(raw):
            c.add(f"s{i}", embed_v1(r.tobytes()), source=r.tobytes(), source_type="f32")
        c.add("no-source", raw[0])
        index.collection("s", model="toy", model_version="1")  # the same version opens
        with pytest.raises(ModelVersionMismatch) as e:
            index.collection("s", model="toy", model_version="2")
        assert str(e.value) == ("collection 's' was built by toy 1, not toy 2: rebuild it with the new model: "
                                "Collection.rebuild() or `edgeloop index rebuild s` re-embeds its 30 stored sources")
        report = c.rebuild(embed_v2, "toy", "2")
        assert report == {"reembedded": 30, "dropped": 1}
    with VectorIndex(tmp_path / "i.db") as index:
        c = index.collection("s", model="toy", model_version="2")
        assert c.spec.dim == 16 and len(c) == 30
        assert c.query(embed_v2(raw[4].tobytes()), 1)[0].id == "s4"


def test_a_corrupt_index_is_quarantined_and_rebuilt_from_its_items(tmp_path):
    x = clustered(3000)
    path = tmp_path / "i.db"
    with VectorIndex(path) as index:
        c = index.create("s", DIM, storage="binary", metadata={"n": "integer"})
        c.upsert([f"v{i}" for i in range(3000)], x, metadata=[{"n": i} for i in range(3000)])
    rng = random.Random(5)
    trials, recovered = 0, 0
    for trial in range(10):
        damaged = tmp_path / f"d{trial}.db"
        data = bytearray(path.read_bytes())
        for _ in range(20):  # flip bytes past the header
            data[rng.randrange(4096, len(data))] ^= 0xFF
        damaged.write_bytes(bytes(data))
        try:
            with VectorIndex(damaged) as index:  # never crashes
                trials += 1
                if index.recovery:
                    recovered += 1
                    assert any(p.name.startswith(f"d{trial}.db.corrupt-") for p in tmp_path.iterdir())
                for name in index.names():
                    c = index.collection(name)
                    if len(c):
                        c.query(x[0], 5)  # and serves
        except RetrievalError:
            trials += 1
    assert trials == 10 and recovered >= 1


def test_a_vec_table_that_disagrees_with_its_items_is_reindexed(tmp_path):
    import apsw

    from edgeloop.runtime.retrieval.index import load_sqlite_vec

    x = clustered(100)
    with VectorIndex(tmp_path / "i.db") as index:
        index.create("s", DIM).upsert([f"v{i}" for i in range(100)], x)
    db = apsw.Connection(str(tmp_path / "i.db"))
    load_sqlite_vec(db)
    db.execute("DELETE FROM vec_s WHERE rowid <= 40")  # the index lost rows its items still have
    db.close()
    with VectorIndex(tmp_path / "i.db") as index:
        assert index.recovery == {"reindexed_s": 100}
        assert index.collection("s").query(x[3], 1)[0].id == "v3"


def test_deltas_carry_vectors_labels_and_chosen_metadata_never_sources(tmp_path):
    x = clustered(40)
    secret = [os.urandom(64) + b"PRIVATE-PIXELS" for _ in range(40)]
    with VectorIndex(tmp_path / "device.db") as device, VectorIndex(tmp_path / "regional.db") as regional:
        c = device.create("faces", DIM, model="emb", model_version="7", metadata={"site": "text", "owner": "text"})
        c.upsert([f"f{i}" for i in range(40)], x, labels=[f"p{i % 4}" for i in range(40)],
                 metadata=[{"site": "gate", "owner": "alice"} for _ in range(40)],
                 documents=["private note"] * 40, sources=secret, source_types=["jpg"] * 40)
        full = export_delta(c, metadata_keys=["site"])
        for s in secret[:5]:
            assert s not in full
        assert b"PRIVATE-PIXELS" not in full and b"private note" not in full and b"alice" not in full
        r = regional.create("faces", DIM, model="emb", model_version="7", metadata={"site": "text"})
        assert import_delta(r, full) == {"upserted": 40, "deleted": 0}
        assert r.get("f3")["label"] == "p3" and r.get("f3")["source"] is None
        assert r.query(x[3], 1)[0].id == "f3"
        since = c.spec.version
        c.delete(["f0", "f1"])
        c.add("f40", x[5], label="new", metadata={"site": "gate", "owner": "bob"})
        step = export_delta(c, since=since, metadata_keys=["site"])
        assert import_delta(r, step) == {"upserted": 1, "deleted": 2}
        assert len(r) == 39 and r.get("f40")["label"] == "new"

        other = regional.create("faces2", DIM, model="emb", model_version="8", metadata={"site": "text"})
        with pytest.raises(BadDelta) as e:
            import_delta(other, full)
        assert str(e.value) == "delta is for collection 'faces', not 'faces2': import it into the collection it was exported from"
        with pytest.raises(BadDelta, match="not an edgeloop index delta"):
            import_delta(r, b"\x81\xa1a\x01")
        with pytest.raises(BadDelta, match="does not decode"):
            import_delta(r, b"\xc1garbage")


def test_a_delta_from_another_model_version_is_refused_atomically(tmp_path):
    x = clustered(10)
    with VectorIndex(tmp_path / "a.db") as a, VectorIndex(tmp_path / "b.db") as b:
        src = a.create("faces", DIM, model="emb", model_version="7")
        src.upsert([f"f{i}" for i in range(10)], x)
        dst = b.create("faces", DIM, model="emb", model_version="8")
        with pytest.raises(BadDelta) as e:
            import_delta(dst, export_delta(src))
        assert str(e.value) == ("delta was made by emb 7 (32 dimensions); 'faces' holds emb 8 (32): "
                                "rebuild one side with the same embedding model first")
        assert len(dst) == 0


@pytest.mark.parametrize("storage", ["float", "binary"])
def test_cells_search_a_few_cells_and_still_find_the_neighbours(tmp_path, storage):
    x = clustered(6000, seed=4)
    ids = [f"v{i}" for i in range(len(x))]
    with VectorIndex(tmp_path / "i.db") as index:
        c = index.create("cells", DIM, storage=storage, cells=32)
        for start in range(0, len(x), 1000):  # the cells are trained again as the collection doubles
            c.upsert(ids[start:start + 1000], x[start:start + 1000])
        assert c.spec.fitted == 4000 and len(c.spec.centroids) == 32 * DIM * 4
        recall = []
        for qi in range(0, 6000, 300):
            got = {n.id for n in c.query(x[qi], 10, probes=4)}
            recall.append(len(got & {ids[i] for i in exact_top(x, x[qi], 10)}) / 10)
        assert np.mean(recall) >= 0.9, np.mean(recall)
        assert c.query(x[11], 1)[0].id == "v11"
        with pytest.raises(RetrievalError) as e:
            index.create("both", DIM, cells=8, partition=("camera", "integer"))
        assert str(e.value) == ("cells and a partition key cannot be combined (both use vec0's partition key): "
                                "choose one")


def test_bench_index_reports_its_keys():
    from edgeloop.tools.bench.index import bench_index

    r = bench_index(n=3000, dim=64)
    for name in ("random", "clustered"):
        assert r[name]["numpy_p50_ms"] > 0
        for mode in ("float", "int8", "binary", "binary_cells"):
            row = r[name][mode]
            assert row["insert_per_s"] > 0 and row["p50_ms"] > 0 and row["p95_ms"] >= row["p50_ms"]
            assert 0 <= row["recall_at_10"] <= 1 and row["bytes_per_vector"] > 64 * 4
    assert r["clustered"]["float"]["recall_at_10"] == 1.0  # exact in vec0


def test_case_records_with_a_text_embedder_come_back_with_their_documents(tmp_path):
    """The embedding function is any callable: here a hashed bag of words for maintenance notes."""
    import hashlib

    from edgeloop.runtime.retrieval import Imprinter

    def embed_text(text: str) -> np.ndarray:
        v = np.zeros(64, np.float32)
        for word in text.lower().split():
            v[int(hashlib.sha1(word.encode()).hexdigest(), 16) % 64] += 1
        return v

    cases = {"bearing": "bearing outer race fault high frequency noise replace bearing",
             "imbalance": "rotor imbalance vibration at running speed add balance weight",
             "misalignment": "shaft misalignment axial vibration twice running speed realign coupling"}
    with VectorIndex(tmp_path / "i.db") as index:
        c = index.create("cases", 64, metadata={"machine": "text"})
        for label, note in cases.items():
            c.add(label, embed_text(note), label=label, metadata={"machine": "pump-7"}, document=note)
        hits = c.query(embed_text("noise from the bearing, high frequency"), 2)
        assert hits[0].label == "bearing" and hits[0].document == cases["bearing"]
        assert hits[0].metadata == {"machine": "pump-7"}
        decision = Imprinter(c, embed_text, k=1, threshold=0.8).classify("axial vibration at twice running speed")
        assert decision.label == "misalignment"
