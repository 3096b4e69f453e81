"""The agent's sync worker: the outbox, link and index in a child process, on real files and
a real Mosquitto."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import wait_for

from edgeloop.sync.worker import SyncSettings, SyncWorker
from edgeloop.runtime.errors import ConfigError
from edgeloop.runtime.retrieval import VectorIndex
from edgeloop.sync.outbox import Outbox, OutboxError


def test_records_are_durable_when_enqueue_returns_and_drain_to_the_broker(tmp_path, broker, regional):
    worker = SyncWorker(SyncSettings(str(tmp_path), "sw-1", "f1", broker=f"127.0.0.1:{broker.port}"))
    try:
        ids = {e.id for e in worker.enqueue_many([("events", {"n": n}) for n in range(500)])}
        ids.add(worker.enqueue("telemetry", {"one": 1}, trace="abc").id)
        wait_for(lambda: regional.ids() >= ids, what="every record at the regional edge")
        wait_for(lambda: worker.stats()["streams"] == {}, what="an empty outbox")
        assert worker.stats()["link"]["state"] == "online"
    finally:
        worker.close()


def test_bad_input_gets_the_typed_error_and_the_worker_keeps_serving(tmp_path):
    worker = SyncWorker(SyncSettings(str(tmp_path), "sw-2", "f"))
    try:
        with pytest.raises(ConfigError, match="stream"):
            worker.enqueue("", {"n": 1})
        assert worker.enqueue("events", {"n": 2}).seq >= 1
    finally:
        worker.close()
    with Outbox(tmp_path / "outbox.db", "sw-2") as box:
        assert box.stats()["streams"]["events"]["rows"] == 1


def test_a_killed_worker_is_replaced_and_nothing_acknowledged_is_lost(tmp_path):
    worker = SyncWorker(SyncSettings(str(tmp_path), "sw-3", "f"))
    try:
        stored = worker.enqueue_many([("events", {"n": n}) for n in range(200)])
        os.kill(worker.pid, signal.SIGKILL)
        wait_for(lambda: not worker.alive, what="the worker gone")
        more = worker.enqueue("events", {"n": "after"})  # a new worker on the same files
        assert worker.restarts == 1 and worker.stats()["worker_restarts"] == 1
        assert worker.stats()["streams"]["events"]["rows"] == 201
        assert more.seq > max(e.seq for e in stored)
    finally:
        worker.close()


def test_when_the_agent_dies_the_worker_stores_what_it_was_sent_and_exits(tmp_path):
    script = textwrap.dedent(f"""
        import os
        from edgeloop.sync.worker import SyncSettings, SyncWorker
        if True:  # no __main__ guard needed: the worker is its own interpreter
            w = SyncWorker(SyncSettings({str(tmp_path)!r}, "sw-4", "f"))
            w.enqueue_many([("events", {{"n": n}}) for n in range(300)])
            w.index_add("frames", "m", "1", ["a", "b"], [[1, 0, 0], [0, 1, 0]], ["x", "y"])
            print(w.pid, flush=True)
            os._exit(9)  # no close(): as if killed
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    child = int(out.stdout.split()[0])
    wait_for(lambda: not os.path.exists(f"/proc/{child}") or "Z" in open(f"/proc/{child}/stat").read().split()[2],
             what="the orphaned worker to finish")
    with Outbox(tmp_path / "outbox.db", "sw-4") as box:
        assert box.salvage is None and box.stats()["streams"]["events"]["rows"] == 300
    index = VectorIndex(tmp_path / "index.db")
    try:
        c = index.collection("frames", model="m", model_version="1")
        assert len(c) == 2 and c.get("b")["label"] == "y"
    finally:
        index.close()


def test_index_writes_are_batched_and_the_collection_stays_bounded(tmp_path):
    worker = SyncWorker(SyncSettings(str(tmp_path), "sw-5", "f", index_max_items=300))
    try:
        rng = np.random.default_rng(1)
        for k in range(10):
            worker.index_add("frames", "m", "1", [f"{k}-{i}" for i in range(50)], rng.random((50, 8)))
        assert worker.stats()["index"] == {"frames": 300}
        # Another version of the model (a rollout): its own collection beside the first's.
        worker.index_add("frames", "m", "2", ["z"], rng.random((1, 8)))
        assert worker.stats()["index"] == {"frames": 300, "frames_v2": 1} and worker.stats()["index_errors"] == 0
        worker.index_add("frames", "m2", "1", ["y"], rng.random((1, 8)))  # another model: refused
        assert worker.stats()["index_errors"] == 1
    finally:
        worker.close()
    index = VectorIndex(tmp_path / "index.db")
    try:
        c = index.collection("frames")
        assert c.get("0-0") is None and c.get("9-49") is not None  # the oldest went first
    finally:
        index.close()


def test_calls_after_close_are_refused(tmp_path):
    worker = SyncWorker(SyncSettings(str(tmp_path), "sw-6", "f"))
    worker.close()
    with pytest.raises(OutboxError, match="closed"):
        worker.enqueue("events", {})
