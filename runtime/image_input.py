"""Images and camera frames to input tensors, by the manifest's input spec.

The pixels go through the fused preprocess kernel (crop, colour conversion,
resize, normalize, quantize in one pass), straight into the tensor when the
caller hands in the interpreter's input view. For an unregistered model the
documented default is: bilinear resize (TensorFlow's half-pixel, no antialias)
to the input's height and width, RGB (or grey for one channel or an NHW input),
pixels fed as-is to uint8 inputs, shifted by -128 for int8 inputs, and scaled to
[-1, 1] for float inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.models.manifest import InputSpec

from . import kernels
from .errors import InputError
from .tensors import TensorSpec


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
    """(height, width, channels) the model's image input expects (channels 0: no channel axis)."""
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


def kernel_options(spec: TensorSpec, input_spec: InputSpec) -> dict[str, Any]:
    """Normalization and quantization for the preprocess kernel, from the manifest and the tensor."""
    height, width, channels = geometry(spec, input_spec)
    if channels not in (0, 1, 3):
        raise InputError(f"input '{spec.name}' has {channels} channels; images give 1 or 3",
                         "feed a .npy array in the model's own layout")
    options: dict[str, Any] = {"resize": input_spec.resize,
                               "color": "GRAY" if channels in (0, 1) or input_spec.color == "GRAY"
                               else input_spec.color}
    mean, std = input_spec.mean, input_spec.std
    quant = spec.quantization
    if mean is None or std is None:
        # The documented defaults: pixels as-is (uint8), -128 (int8), [-1, 1] (float).
        defaults = {"uint8": (0.0, 1.0), "int8": (128.0, 1.0)}
        mean, std = defaults.get(spec.dtype.name, (127.5, 127.5))
        return {**options, "mean": mean, "std": std}
    if spec.dtype.kind in "iu":
        if quant is None:
            raise InputError(f"input '{spec.name}' is {spec.dtype.name} without quantization parameters, "
                             "so mean/std cannot be applied", "drop input.mean/std for this model")
        options.update(scale=quant.scale, zero_point=quant.zero_point)
    return {**options, "mean": mean, "std": std}


def write_frame(frame: np.ndarray, fmt: str, out: np.ndarray, spec: TensorSpec, input_spec: InputSpec,
                roi: tuple[int, int, int, int] | None = None) -> None:
    """Preprocess ``frame`` (a camera frame in ``fmt``) into ``out`` (NHWC/NHW, e.g. the tensor's own view)."""
    try:
        kernels.preprocess(frame, fmt, out, roi=roi, **kernel_options(spec, input_spec))
    except ValueError as exc:
        raise InputError(f"cannot preprocess this frame: {exc}", "check the frame against its format") from exc


def frame_writer(frame: np.ndarray, fmt: str, out: np.ndarray, spec: TensorSpec,
                 input_spec: InputSpec) -> Any:
    """``write_frame`` bound to ``frame``'s shape and format and ``out``'s: ``fn(frame, out)``."""
    try:
        return kernels.preprocessor(frame, fmt, out, **kernel_options(spec, input_spec))
    except ValueError as exc:
        raise InputError(f"cannot preprocess this frame: {exc}", "check the frame against its format") from exc


def image_to_input(image: Any, spec: TensorSpec, input_spec: InputSpec = InputSpec()) -> np.ndarray:
    """An array ready for ``set_input``: the model's shape and dtype."""
    _, _, channels = geometry(spec, input_spec)
    grey = channels in (0, 1) or input_spec.color == "GRAY"
    pixels = np.asarray(image.convert("L" if grey else "RGB"))
    out = np.empty(spec.shape, spec.dtype)
    if input_spec.layout == "NCHW":
        hwc = np.empty((spec.shape[2], spec.shape[3], spec.shape[1]), spec.dtype)
        write_frame(pixels, "GRAY" if grey else "RGB", hwc, spec, input_spec)
        out[0] = hwc.transpose(2, 0, 1)
        return out
    write_frame(pixels, "GRAY" if grey else "RGB", out, spec, input_spec)
    return out
