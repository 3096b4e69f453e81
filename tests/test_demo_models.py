"""The project's own demo models: committed files match the manifest and its held-out accuracy."""

from __future__ import annotations

import numpy as np

from edgeloop.models.store import ModelStore
from edgeloop.runtime.engine import Engine, EngineConfig
from edgeloop.tools.demo_data import load_holdout


def test_digits_holdout_accuracy_matches_the_manifest(backend_name):
    images, labels = load_holdout()
    assert images.shape == (360, 32, 32) and images.dtype == np.uint8
    with Engine(EngineConfig(backend=backend_name, num_threads=1), ModelStore()) as engine:
        model = engine.load("digits")
        predicted = np.array([int(model.run(img[None, ..., None])[0].argmax()) for img in images])
    accuracy = float(np.mean(predicted == labels))
    reported = model.entry.accuracy
    assert reported is not None and reported > 0.95
    # The same INT8 file on another backend may round a few borderline images differently.
    assert abs(accuracy - reported) <= 2 / len(labels), (accuracy, reported)
