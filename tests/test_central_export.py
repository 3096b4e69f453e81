"""The central export on real regional stores (an SQLite file, PostgreSQL): keyed-hash device
ids, time buckets, k-suppression, one Parquet file per region and window, idempotent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import msgpack
import pyarrow.parquet as pq
import pytest

from edgeloop.runtime.errors import ConfigError
from edgeloop.sync.central_export import device_key, export_window, read_secret
from edgeloop.sync.codec import encode_batch
from edgeloop.sync.store import open_store

T0 = 1_699_999_200.0  # a window boundary (a multiple of 3600), in the past
SECRET = b"0123456789abcdef0123456789abcdef"


def batch(device: str, rows: list[tuple[float, str, dict]], first_seq: int = 1) -> tuple[str, bytes]:
    records = [{"seq": first_seq + n, "id": f"{device}-{first_seq + n}", "ts": ts, "stream": stream, "trace": None,
                "epoch": "e1", "body": msgpack.packb(body)} for n, (ts, stream, body) in enumerate(rows)]
    return f"edgeloop/v1/f1/{device}/data/x", encode_batch(device, records)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    target = str(tmp_path / "regional.db") if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    s = open_store(target)
    s.target = target
    yield s
    s.close()


def fill(store) -> None:
    messages = [batch(f"cam-{n}", [(T0 + 10 + n, "inferences", {"label": "cat", "score": 0.9}),
                                   (T0 + 20 + n, "inferences", {"label": "cat"})]) for n in range(6)]
    messages += [batch(f"cam-{n}", [(T0 + 30, "inferences", {"label": "dog"})], first_seq=10) for n in range(2)]
    messages += [batch("cam-0", [(T0 + 3600 + 5, "inferences", {"label": "cat"}),  # the next window
                                 (T0 - 1, "inferences", {"label": "cat"})], first_seq=20)]  # the one before
    store.commit(messages)


def test_an_export_keeps_k_devices_groups_hashes_ids_buckets_times_and_is_idempotent(store, tmp_path):
    fill(store)
    now = T0 + 3600 + 301
    done = export_window(store, tmp_path / "out", "eu-1", SECRET, T0, k=5, now=now)
    assert (done.outcome, done.rows, done.records) == ("written", 6, 12)
    assert (done.suppressed_groups, done.suppressed_records) == (1, 2)  # the dogs: 2 devices < k
    table = pq.read_table(done.path)
    rows = table.to_pylist()
    assert {r["device_key"] for r in rows} == {device_key(SECRET, f"cam-{n}") for n in range(6)}
    assert not any("cam-" in str(v) for r in rows for v in r.values())  # no device id leaves
    assert {(r["bucket_start"], r["label"], r["records"]) for r in rows} == {(T0, "cat", 2)}
    assert table.schema.metadata[b"suppressed_records"] == b"2" and table.schema.metadata[b"k"] == b"5"
    first = done.path.read_bytes()
    again = export_window(store, tmp_path / "out", "eu-1", SECRET, T0, k=5, now=now)
    assert again.outcome == "unchanged" and done.path.read_bytes() == first
    store.commit([batch("cam-5", [(T0 + 40, "inferences", {"label": "cat"})], first_seq=30)])  # late
    late = export_window(store, tmp_path / "out", "eu-1", SECRET, T0, k=5, now=now)
    assert late.outcome == "replaced" and late.records == 13
    assert sorted(os.listdir(tmp_path / "out" / "eu-1")) == [f"{T0:.0f}-{T0 + 3600:.0f}.parquet"]
    other = export_window(store, tmp_path / "out2", "eu-1", b"another secret of 32 bytes......", T0, now=now)
    assert not {r["device_key"] for r in pq.read_table(other.path).to_pylist()} & {r["device_key"] for r in rows}


def test_bad_exports_are_refused_with_the_fix(store, tmp_path):
    with pytest.raises(ConfigError, match="has not closed"):
        export_window(store, tmp_path, "eu-1", SECRET, T0, now=T0 + 3600 + 10)
    with pytest.raises(ConfigError, match="boundary"):
        export_window(store, tmp_path, "eu-1", SECRET, T0 + 5, now=T0 + 9000)
    with pytest.raises(ConfigError, match="identifies it"):
        export_window(store, tmp_path, "eu-1", SECRET, T0, k=1, now=T0 + 9000)
    with pytest.raises(ConfigError, match="region"):
        export_window(store, tmp_path, "../up", SECRET, T0, now=T0 + 9000)
    loose = tmp_path / "secret"
    loose.write_bytes(SECRET)
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secret(loose)


def test_the_export_command(tmp_path):
    store = open_store(str(tmp_path / "regional.db"))
    fill(store)
    store.close()
    secret = tmp_path / "regional.secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    argv = [sys.executable, "-m", "edgeloop.tools.cli", "regional", "export", "--db", str(tmp_path / "regional.db"),
            "--out", str(tmp_path / "out"), "--region", "eu-1", "--secret-file", str(secret),
            "--window-start", f"{T0:.0f}", "--k", "5", "--json"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert figures["outcome"] == "written" and figures["rows"] == 6 and figures["suppressed_records"] == 2
    without = [a for a in argv if a not in ("--secret-file", str(secret))]
    bad = subprocess.run(without, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--secret-file is required" in bad.stderr
