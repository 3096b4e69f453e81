"""Quantization by a model's own parameters, per tensor and per channel."""

from __future__ import annotations

import numpy as np
import pytest

from edgeloop.runtime.tensors import Quantization, TensorSpec, dequantize, quantize


def per_tensor(scale: float, zero: int) -> Quantization:
    return Quantization(np.array([scale], np.float32), np.array([zero], np.int64))


def test_round_half_away_from_zero_and_saturate():
    q = per_tensor(1.0, 0)
    got = quantize(np.array([0.5, 1.5, 2.5, -0.5, -2.5, 300.0, -300.0]), q, np.dtype(np.int8))
    assert got.tolist() == [1, 2, 3, -1, -3, 127, -128]


@pytest.mark.parametrize("dtype, scale, zero", [(np.uint8, 1 / 128, 128), (np.int8, 0.0235, -3),
                                                (np.uint8, 0.00390625, 0), (np.int16, 1e-4, 0)])
def test_round_trip_is_within_half_a_step(dtype, scale, zero):
    q = per_tensor(scale, zero)
    info = np.iinfo(dtype)
    lo, hi = (info.min - zero) * scale, (info.max - zero) * scale
    real = np.linspace(lo, hi, 1001)
    back = dequantize(quantize(real, q, np.dtype(dtype)), q)
    assert np.max(np.abs(back - real)) <= scale / 2 + 1e-6


def test_per_channel_uses_each_channels_parameters():
    q = Quantization(np.array([0.5, 2.0, 0.1], np.float32), np.array([0, 10, -5], np.int64), axis=1)
    real = np.array([[1.0, 4.0, 0.3], [-1.0, -2.0, -0.2]])
    got = quantize(real, q, np.dtype(np.int8))
    assert got.tolist() == [[2, 12, -2], [-2, 9, -7]]
    assert np.allclose(dequantize(got, q), real, atol=1e-6)
    assert q.per_channel and q.to_dict()["axis"] == 1


def test_float_tensors_pass_through_dequantize():
    x = np.arange(4, dtype=np.float32)
    assert dequantize(x, None).tolist() == [0, 1, 2, 3]


def test_spec_from_details_reads_per_channel_parameters():
    details = {"index": 3, "name": "w", "shape": np.array([8, 3]), "dtype": np.int8,
               "quantization": (0.0, 0),
               "quantization_parameters": {"scales": np.array([0.1, 0.2, 0.3], np.float32),
                                           "zero_points": np.array([0, 0, 0]), "quantized_dimension": 1}}
    spec = TensorSpec.from_details(details)
    assert spec.shape == (8, 3) and spec.dtype == np.int8
    assert spec.quantization.per_channel and spec.quantization.axis == 1
    unquantized = TensorSpec.from_details({**details, "quantization_parameters": {}, "dtype": np.float32})
    assert unquantized.quantization is None
