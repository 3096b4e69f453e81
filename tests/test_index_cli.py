"""``edgeloop index`` run as a user runs it: imprint photos with the shared embedding model,
classify, look at stats, export a delta and import it elsewhere, and the typed refusals."""

from __future__ import annotations

import json

import numpy as np

from conftest import IMAGES
from test_cli import edgeloop


def test_add_query_stats_export_import(tmp_path, coral_manifest):
    db, other = str(tmp_path / "index.db"), str(tmp_path / "regional.db")
    m = ("--model", "embedder", "--manifest", str(coral_manifest))
    edgeloop("index", "add", "--db", db, "photos", *m, "--label", "cat", str(IMAGES / "cat.bmp"))
    edgeloop("index", "add", "--db", db, "photos", *m, "--label", "bird", str(IMAGES / "bird.bmp"),
             str(IMAGES / "parrot.jpg"))
    out = json.loads(edgeloop("index", "query", "--db", db, "photos", *m, str(IMAGES / "cat.bmp"), "-k", "2",
                              "--classify", "--json").stdout)
    assert out["neighbours"][0]["label"] == "cat" and out["neighbours"][0]["distance"] < 1e-4
    assert out["decision"]["label"] == "cat"
    unknown = json.loads(edgeloop("index", "query", "--db", db, "photos", *m, str(IMAGES / "sunflower.bmp"),
                                  "--classify", "--json").stdout)
    assert unknown["decision"]["label"] == "unknown"
    stats = json.loads(edgeloop("index", "stats", "--db", db, "--json").stdout)["collections"]["photos"]
    assert stats["items"] == 3 and stats["labels"] == {"cat": 1, "bird": 2} and stats["with_sources"] == 3
    assert stats["model"] == "embedder" and stats["dim"] == 1024
    delta = tmp_path / "photos.delta"
    edgeloop("index", "export", "--db", db, "photos", "--out", str(delta))
    assert (IMAGES / "cat.bmp").read_bytes()[1000:1100] not in delta.read_bytes()  # no pixels leave
    edgeloop("index", "import", "--db", other, str(delta))
    there = json.loads(edgeloop("index", "stats", "--db", other, "--json").stdout)["collections"]["photos"]
    assert there["items"] == 3 and there["with_sources"] == 0 and there["model_version"] == stats["model_version"]


def test_refusals_are_typed_and_name_the_fix(tmp_path, coral_manifest):
    db = str(tmp_path / "index.db")
    vec = tmp_path / "v.npy"
    np.save(vec, np.ones(8, np.float32))
    edgeloop("index", "add", "--db", db, "vectors", str(vec), "--label", "one")
    wrong = tmp_path / "w.npy"
    np.save(wrong, np.ones(9, np.float32))
    p = edgeloop("index", "query", "--db", db, "vectors", str(wrong), ok=False)
    assert p.returncode != 0 and "BadVector: vector has 9 dimensions, the collection has 8" in p.stderr
    p = edgeloop("index", "query", "--db", db, "nope", str(vec), ok=False)
    assert "UnknownCollection: no collection 'nope'" in p.stderr and "collections here: vectors" in p.stderr
    p = edgeloop("index", "query", "--db", db, "vectors", str(vec), "-k", "0", ok=False)
    assert "BadQuery: k = 0 is out of range: use 1 to 4096" in p.stderr
    m = ("--model", "embedder", "--manifest", str(coral_manifest))
    p = edgeloop("index", "query", "--db", db, "vectors", *m, str(IMAGES / "cat.bmp"), ok=False)
    assert "ModelVersionMismatch: collection 'vectors' was built by vectors given as they are (no model), not embedder 1" in p.stderr
    bad = tmp_path / "bad.delta"
    bad.write_bytes(b"not a delta")
    p = edgeloop("index", "import", "--db", db, str(bad), ok=False)
    assert "BadDelta" in p.stderr
