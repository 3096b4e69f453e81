"""Images to input tensors: decode, colour order, resize, normalize, quantize.

Follows the manifest's input spec; for an unregistered model the documented
default is: resize (bilinear) to the input's height and width, RGB (or grey
for one channel or an NHW input), and pixels fed as-is to uint8 inputs,
shifted by -128 for int8 inputs, and scaled to [-1, 1] for float inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.models.manifest import InputSpec

from .errors import InputError
from .tensors import TensorSpec, quantize

_RESAMPLE = {"bilinear": "BILINEAR", "nearest": "NEAREST", "area": "BOX"}


def load_image(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read image {path}: {exc}",
                         "give a PNG, JPEG or BMP file, or a .npy array shaped like the input tensor") from exc
    return image


def geometry(spec: TensorSpec, input_spec: InputSpec) -> tuple[int, int, int]:
    """(height, width, channels) the model's image input expects."""
    shape = spec.shape
    if input_spec.layout == "NHW" or len(shape) == 3:
        if len(shape) != 3:
            raise InputError(f"layout NHW needs a 3-d input, the model's is {list(shape)}", "fix input.layout")
        return shape[1], shape[2], 0
    if len(shape) != 4:
        raise InputError(f"an image cannot feed a {len(shape)}-d input {list(shape)}",
                         "give a .npy array shaped like the input tensor")
    if input_spec.layout == "NCHW":
        return shape[2], shape[3], shape[1]
    return shape[1], shape[2], shape[3]


def image_to_input(image: Any, spec: TensorSpec, input_spec: InputSpec = InputSpec()) -> np.ndarray:
    """An array ready for ``set_input``: the model's shape and dtype."""
    from PIL import Image

    height, width, channels = geometry(spec, input_spec)
    grey = channels in (0, 1) or input_spec.color == "GRAY"
    image = image.convert("L" if grey else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), getattr(Image.Resampling, _RESAMPLE[input_spec.resize]))
    pixels = np.asarray(image, dtype=np.uint8)
    if input_spec.color == "BGR" and not grey:
        pixels = pixels[..., ::-1]
    if grey and channels == 3:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    elif channels == 1:
        pixels = pixels[..., None]
    if input_spec.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return normalize(pixels[None], spec, input_spec)


def normalize(pixels: np.ndarray, spec: TensorSpec, input_spec: InputSpec) -> np.ndarray:
    """uint8 pixels to the model's dtype by ``(p - mean) / std`` and its quantization."""
    dtype = spec.dtype
    quant = spec.quantization
    mean, std = input_spec.mean, input_spec.std
    if mean is None or std is None:
        if dtype == np.uint8:
            return np.ascontiguousarray(pixels)
        if dtype == np.int8:
            return (pixels.astype(np.int16) - 128).astype(np.int8)
        mean, std = 127.5, 127.5
    if quant is not None and dtype.kind in "iu":
        # Pixels land on the quantized grid exactly: skip the float round trip.
        if abs(quant.scale * std - 1.0) < 1e-5 and abs(mean - quant.zero_point) < 1e-5 and dtype == np.uint8:
            return np.ascontiguousarray(pixels)
        return quantize((pixels.astype(np.float32) - mean) / std, quant, dtype)
    if dtype.kind != "f":
        raise InputError(f"input '{spec.name}' is {dtype.name} without quantization parameters",
                         "feed a .npy array in the model's own units")
    return ((pixels.astype(np.float32) - mean) / std).astype(dtype)
