"""Camera frames through the fused preprocess kernel, straight into the input tensor."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import IMAGES, PHOTOS

from edgeloop.runtime import kernels


def rgb_to_yuv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BT.601 limited range, the inverse of the kernels' conversion (for making test frames)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return tuple(np.clip(np.round(c), 0, 255).astype(np.uint8) for c in (y, u, v))


def to_yuyv(rgb: np.ndarray) -> np.ndarray:
    y, u, v = rgb_to_yuv(rgb[:, : rgb.shape[1] // 2 * 2])
    out = np.empty((y.shape[0], y.shape[1] * 2), np.uint8)
    out[:, 0::2] = y
    out[:, 1::4] = u[:, 0::2]
    out[:, 3::4] = v[:, 0::2]
    return out


def to_nv12(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]
    y, u, v = rgb_to_yuv(rgb)
    uv = np.empty((y.shape[0] // 2, y.shape[1]), np.uint8)
    uv[:, 0::2] = u[0::2, 0::2]
    uv[:, 1::2] = v[0::2, 0::2]
    return np.concatenate([y, uv])


def pillow_input(path, size: int) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))[None]


@pytest.mark.parametrize("name", ["mobilenet_v1_025", "mobilenet_v2"])
def test_fused_preprocess_gives_pillows_top1(engine, name):
    """Antialiased (area) resize in the kernel against Pillow's antialiasing bilinear resize.

    The kernel's bilinear (TensorFlow's, no antialiasing) also agrees on mobilenet_v2; on the
    128-pixel model it reads cat.bmp as 283 "tiger cat" instead of 286 "Egyptian cat", a
    near tie (0.12 vs 0.13) that a 4x downscale without antialiasing tips, as Pillow's own
    box filter does. The conformance tests hold every photo to its right classes.
    """
    model = engine.load(name)
    size = model.inputs[0].shape[1]
    for photo in PHOTOS:
        frame = np.asarray(Image.open(IMAGES / photo).convert("RGB"))
        ours = np.empty(model.inputs[0].shape, np.uint8)
        kernels.preprocess(frame, "RGB", ours, resize="area")
        theirs = pillow_input(IMAGES / photo, size)
        top1 = [model.decode(model.run(x), top_k=1).best.index for x in (ours, theirs)]
        assert top1[0] == top1[1], photo
        if name == "mobilenet_v2":
            assert model.classify(IMAGES / photo, top_k=1).best.index == top1[1], photo  # default bilinear


def test_camera_formats_classify_like_rgb(engine):
    model = engine.load("mobilenet_v2")
    for photo in ("parrot.jpg", "cat.bmp", "bird.bmp"):
        rgb = np.asarray(Image.open(IMAGES / photo).convert("RGB"))
        expected = model.classify(IMAGES / photo, top_k=1).best.index
        frames = {"RGB": rgb, "BGR": np.ascontiguousarray(rgb[..., ::-1]),
                  "RGBA": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
                  "YUYV": to_yuyv(rgb), "NV12": to_nv12(rgb)}
        for fmt, frame in frames.items():
            result = model.decode(model.run_frame(frame, fmt), top_k=1)
            assert result.best.index == expected, (photo, fmt)


def test_frame_roi_crops_before_resizing(engine):
    """The parrot photo's region of interest classifies as a macaw; a crop of sky-free
    background does not have to — but the crop must equal preprocessing the cropped frame."""
    model = engine.load("mobilenet_v2")
    rgb = np.asarray(Image.open(IMAGES / "parrot.jpg").convert("RGB"))
    roi = (40, 120, 400, 500)
    via_roi = model.run_frame(rgb, "RGB", roi=roi)
    via_crop = model.run_frame(np.ascontiguousarray(rgb[120:620, 40:440]), "RGB")
    assert np.array_equal(via_roi[0], via_crop[0])
    assert model.decode(via_roi, top_k=1).best.index == 89


def test_bad_frames_are_input_errors_and_the_model_keeps_serving(engine):
    from edgeloop.runtime.errors import InputError

    model = engine.load("mobilenet_v1_025")
    with pytest.raises(InputError, match=r"cannot preprocess this frame: src: dtype float32, expected uint8"):
        model.run_frame(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(InputError, match=r"roi: \(0, 0, 20, 20\) is empty or outside the 10x10 image"):
        model.run_frame(np.zeros((10, 10, 3), np.uint8), roi=(0, 0, 20, 20))
    with pytest.raises(InputError, match=r"src: shape \(10, 10\); NV12 needs"):
        model.run_frame(np.zeros((10, 10), np.uint8), "NV12")
    assert model.classify(IMAGES / "parrot.jpg").best.index == 89
