"""Drift against the baseline the model builder stored in the manifest: held-out data scores
near 0; shifted inputs raise one drift event per crossing; the agent stores it in the outbox."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from conftest import camera_agent_config, running_agent, wait_for
from edgeloop.models.store import ModelStore
from edgeloop.runtime.drift import DriftMonitor, histogram, psi
from edgeloop.models.demo_data import load_holdout


def test_psi_is_small_for_the_held_out_data_and_large_for_shifted_data():
    baseline = ModelStore().get("digits").baseline
    assert set(baseline) == {"brightness", "confidence"} and abs(sum(baseline["brightness"]) - 1) < 1e-3
    images, _ = load_holdout()
    same = histogram(images.reshape(len(images), -1).mean(axis=1) / 255.0)
    assert psi(same, baseline["brightness"]) < 0.01
    shifted = histogram(1.0 - images.reshape(len(images), -1).mean(axis=1) / 255.0)  # inverted frames
    assert psi(shifted, baseline["brightness"]) > 1.0
    events = []
    monitor = DriftMonitor(baseline, window=100, on_drift=events.append)
    for v in np.linspace(0.85, 0.95, 300):
        monitor.add({"brightness": float(v), "confidence": 0.99})
    assert [e["feature"] for e in events] == ["brightness"]  # once per crossing, not per check


def test_the_agent_raises_a_drift_event_when_its_camera_sees_other_images(tmp_path):
    import apsw

    from edgeloop.runtime.agent.agent import bundled_samples

    folder = tmp_path / "inverted"
    folder.mkdir()
    for path in bundled_samples().glob("digit_*.png"):
        ImageOps.invert(Image.open(path).convert("L")).save(folder / path.name)
    config = camera_agent_config(tmp_path / "data", folder=str(folder), fps=500.0)
    with running_agent(config) as agent:
        wait_for(lambda: "brightness" in agent.drift.drifting, 20, "a brightness drift")
        assert agent.status()["drift"]["brightness"] > 0.25
    db = apsw.Connection(str(tmp_path / "data" / "outbox.db"))
    kinds = [row[0] for row in db.execute("SELECT body FROM records WHERE stream = 'events'")]
    import msgpack
    assert any(msgpack.unpackb(body).get("kind") == "drift" for body in kinds)


def test_hard_examples_carry_features_and_embeddings_and_raw_images_only_when_allowed(tmp_path):
    import apsw
    import msgpack

    for upload_raw in (False, True):
        data = tmp_path / f"raw-{upload_raw}"
        # every inference counts as hard here
        config = camera_agent_config(data, fps=200.0, hard_below=1.01, upload_raw=upload_raw)
        with running_agent(config) as agent:
            wait_for(lambda: agent.inferences >= 5, 20, "inferences")
        db = apsw.Connection(str(data / "outbox.db"))
        rows = [msgpack.unpackb(b) for (b,) in db.execute("SELECT body FROM records WHERE stream='hard-examples'")]
        priorities = {p for (p,) in db.execute("SELECT priority FROM records WHERE stream='hard-examples'")}
        assert rows and priorities == {-1}
        assert all("features" in r and len(r["embedding"]) == 64 * 2 for r in rows)
        assert all(("image" in r) == upload_raw for r in rows)
