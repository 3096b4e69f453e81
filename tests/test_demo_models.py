"""The project's own demo models: committed files match the manifest and its held-out accuracy."""

from __future__ import annotations

import numpy as np

from edgeloop.models.store import ModelStore
from edgeloop.runtime.engine import Engine, EngineConfig
from edgeloop.models.demo_data import load_holdout


def test_digits_models_hold_their_reported_accuracy_and_the_small_one_is_smaller(backend_name):
    images, labels = load_holdout()
    assert images.shape == (360, 32, 32) and images.dtype == np.uint8
    sizes = {}
    with Engine(EngineConfig(backend=backend_name, num_threads=1), ModelStore()) as engine:
        for name, width, floor in (("digits", 64, 0.95), ("digits_small", 32, 0.93)):
            model = engine.load(name)
            scores = model.entry.output.index
            predicted = np.array([int(model.run(img[None, ..., None])[scores].argmax()) for img in images])
            # The second output is an embedding for the retrieval index: held-out images of one
            # digit lie nearer each other than to other digits (nearest neighbour among the others).
            vectors = np.stack([model.embed(img[None, ..., None]).vector for img in images])
            accuracy = float(np.mean(predicted == labels))
            reported = model.entry.accuracy
            assert reported is not None and reported > floor, (name, reported)
            # The same INT8 file on another backend may round a few borderline images differently.
            assert abs(accuracy - reported) <= 2 / len(labels), (name, accuracy, reported)
            assert vectors.shape == (360, width) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
            similarity = vectors @ vectors.T
            np.fill_diagonal(similarity, -np.inf)
            nearest_same = float(np.mean(labels[similarity.argmax(axis=1)] == labels))
            assert nearest_same >= 0.9, (name, nearest_same)
            sizes[name] = model.artifact.file.stat().st_size
    assert sizes["digits_small"] < sizes["digits"] / 2


def test_vibration_models_hold_their_reported_accuracy_and_the_small_one_is_smaller(backend_name):
    from edgeloop.runtime.tensors import quantize
    from edgeloop.models.demo_data import load_vibration_holdout, vibration_features, vibration_windows

    windows, labels = load_vibration_holdout()
    assert windows.shape == (1000, 128) and windows.dtype == np.int16
    again, again_labels = vibration_windows(1000, seed=1)  # the generator reproduces the held-out set
    assert np.array_equal(again, windows) and np.array_equal(again_labels, labels)
    sizes = {}
    with Engine(EngineConfig(backend=backend_name, num_threads=1), ModelStore()) as engine:
        for name in ("vibration", "vibration_small"):
            model = engine.load(name)
            spec = model.inputs[0]
            x = vibration_features(windows)
            scores = model.entry.output.index
            predicted = np.array([int(model.run(quantize(w[None], spec.quantization, spec.dtype))[scores].argmax())
                                  for w in x])
            accuracy = float(np.mean(predicted == labels))
            assert abs(accuracy - model.entry.accuracy) <= 3 / len(labels), (name, accuracy, model.entry.accuracy)
            assert accuracy >= 0.95 and model.labels == ["normal", "imbalance", "misalignment", "bearing"]
            emb = model.embed(quantize(x[:1], spec.quantization, spec.dtype))
            assert emb.vector.ndim == 1 and abs(float(np.linalg.norm(emb.vector)) - 1) < 1e-5
            sizes[name] = model.artifact.file.stat().st_size
    assert sizes["vibration_small"] < sizes["vibration"]
