"""Images to input tensors by the manifest's input spec, and the documented defaults."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgeloop.models.manifest import InputSpec
from edgeloop.runtime.errors import InputError
from edgeloop.runtime.image_input import image_to_input, write_frame
from edgeloop.runtime.tensors import Quantization, TensorSpec


def spec(shape, dtype=np.uint8, scale=None, zero=0) -> TensorSpec:
    q = None if scale is None else Quantization(np.array([scale], np.float32), np.array([zero], np.int64))
    return TensorSpec(0, "in", tuple(shape), np.dtype(dtype), q)


@pytest.fixture
def rgb() -> Image.Image:
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[..., 0] = 200  # red
    pixels[..., 2] = 10
    return Image.fromarray(pixels, "RGB")


def test_default_uint8_feeds_pixels_as_is(rgb):
    x = image_to_input(rgb, spec((1, 4, 6, 3), scale=1 / 128, zero=128))
    assert x.shape == (1, 4, 6, 3) and x.dtype == np.uint8 and x[0, 0, 0].tolist() == [200, 0, 10]


def test_bgr_nchw_and_grey(rgb):
    bgr = image_to_input(rgb, spec((1, 4, 6, 3)), InputSpec(color="BGR"))
    assert bgr[0, 0, 0].tolist() == [10, 0, 200]
    nchw = image_to_input(rgb, spec((1, 3, 4, 6)), InputSpec(layout="NCHW"))
    assert nchw.shape == (1, 3, 4, 6) and nchw[0, :, 0, 0].tolist() == [200, 0, 10]
    grey = image_to_input(rgb, spec((1, 4, 6)), InputSpec(layout="NHW"))
    assert grey.shape == (1, 4, 6) and grey[0, 0, 0] == round(200 * 0.299 + 10 * 0.114)


def test_resize_to_the_models_size(rgb):
    x = image_to_input(rgb, spec((1, 8, 12, 1)), InputSpec(resize="nearest"))
    assert x.shape == (1, 8, 12, 1)


def test_mean_std_then_the_models_quantization():
    pixels = np.array([[0, 128, 255]], np.uint8)  # a 1x3 grey frame

    def fed(tensor: TensorSpec, input_spec: InputSpec) -> list:
        out = np.empty(tensor.shape, tensor.dtype)
        write_frame(pixels, "GRAY", out, tensor, input_spec)
        return out.reshape(-1).tolist()

    # int8 model, scale 1/128, zero 0: real = (p - 128) / 128 -> q = p - 128
    assert fed(spec((1, 1, 3, 1), np.int8, scale=1 / 128), InputSpec(mean=128.0, std=128.0)) == [-128, 0, 127]
    assert np.allclose(fed(spec((1, 1, 3, 1), np.float32), InputSpec()), [-1.0, 0.003921568, 1.0], atol=1e-6)
    assert fed(spec((1, 1, 3, 1), np.int8, scale=1.0), InputSpec()) == [-128, 0, 127]  # default: p - 128
    assert fed(spec((1, 1, 3, 1), np.uint8, scale=0.5, zero=9), InputSpec()) == [0, 128, 255]  # as-is


def test_integer_input_without_quantization_is_refused():
    with pytest.raises(InputError, match="without quantization parameters"):
        write_frame(np.zeros((2, 2), np.uint8), "GRAY", np.empty((1, 2, 2, 1), np.int8),
                    spec((1, 2, 2, 1), np.int8), InputSpec(mean=0.0, std=1.0))


def test_image_cannot_feed_a_vector_input(rgb):
    with pytest.raises(InputError, match=r"an image cannot feed a 2-d input \[1, 10\]"):
        image_to_input(rgb, spec((1, 10)))
