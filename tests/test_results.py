"""Decoding output tensors into typed results (pure functions, no interpreter)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeloop.runtime.errors import InputError
from edgeloop.runtime.results import classify, detect, embed, read_labels
from edgeloop.runtime.tensors import Quantization, TensorSpec


def spec(shape, dtype=np.uint8, scale=None, zero=0) -> TensorSpec:
    q = None if scale is None else Quantization(np.array([scale], np.float32), np.array([zero], np.int64))
    return TensorSpec(0, "t", tuple(shape), np.dtype(dtype), q)


def test_classify_dequantizes_sorts_and_breaks_ties_by_index():
    out = np.array([[10, 200, 50, 200, 0]], np.uint8)
    result = classify(out, spec(out.shape, scale=1 / 256), ["a", "b", "c", "d", "e"], top_k=3)
    assert [(c.index, c.label) for c in result.top] == [(1, "b"), (3, "d"), (2, "c")]
    assert result.best.score == pytest.approx(200 / 256)
    assert len(classify(out, spec(out.shape), None, top_k=99).top) == 5
    assert classify(out, spec(out.shape), ["a"], top_k=2).top[1].label is None  # no label for index 3


def test_embed_is_unit_length_and_handles_zero():
    out = np.array([[[[3, 4]]]], np.uint8)
    e = embed(out, spec(out.shape, scale=0.5, zero=1))
    assert np.allclose(e.vector, np.array([2, 3]) / np.sqrt(13)) and e.vector.shape == (2,)
    assert embed(np.zeros((1, 4), np.float32), spec((1, 4), np.float32)).vector.tolist() == [0, 0, 0, 0]


def test_detect_reads_postprocess_outputs():
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0, 0, 0, 0]]], np.float32)
    classes = np.array([[2, 0, 0]], np.float32)
    scores = np.array([[0.9, 0.3, 0.0]], np.float32)
    count = np.array([2], np.float32)
    specs = [spec(a.shape, np.float32) for a in (boxes, classes, scores, count)]
    found = detect([boxes, classes, scores, count], specs, ["person", "bike", "car"], min_score=0.5)
    assert len(found.items) == 1
    d = found.items[0]
    assert d.label == "car" and d.index == 2 and d.box == pytest.approx((0.1, 0.2, 0.5, 0.6))
    assert len(detect([boxes, classes, scores, count], specs, None).items) == 2  # count, not 3 rows
    with pytest.raises(InputError, match="detection decoding needs 4 outputs"):
        detect([boxes], specs[:1], None)


def test_labels_plain_and_indexed(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("background\ncat\ndog\n")
    assert read_labels(plain) == ["background", "cat", "dog"]
    indexed = tmp_path / "indexed.txt"
    indexed.write_text("0 person\n2 car\n")
    assert read_labels(indexed) == ["person", "1", "car"]
    with pytest.raises(InputError, match="cannot read labels"):
        read_labels(tmp_path / "missing.txt")
