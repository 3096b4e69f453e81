"""Every kernel path against the numpy reference: exact for integer results.

Preprocess outputs (uint8/int8/float32) are exact on every path: the contract
fixes float32 operations and their order (see runtime/kernels/plan.py).
Floating-point postprocess results (softmax, L2 normalize) allow 1e-6: the
reference sums with numpy's pairwise order and numpy's exp.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeloop.runtime import kernels
from edgeloop.runtime.kernels import reference
from edgeloop.runtime.kernels.plan import make_plan

PATHS = kernels.available_paths()
FAST_PATHS = [p for p in PATHS if p != "numpy"]


def test_all_three_paths_are_available_here():
    # The suite must exercise C and numba, not silently only numpy.
    assert PATHS == ["c", "numba", "numpy"], kernels._reasons


def frame(fmt: str, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = {"RGB": (h, w, 3), "BGR": (h, w, 3), "RGBA": (h, w, 4), "GRAY": (h, w),
             "YUYV": (h, 2 * w), "NV12": (h * 3 // 2, w)}[fmt]
    return rng.integers(0, 256, shape, dtype=np.uint8)


def run_both(path, src, fmt, out_shape, dtype, **options):
    ours = np.full(out_shape, 77, dtype)
    kernels.preprocess(src, fmt, ours, path=path, **options)
    ref = np.full(out_shape, 33, dtype)
    reference.preprocess(src, make_plan(src, fmt, ref, **options), ref)
    return ours, ref


# (dtype, mean, std, scale, zero point): identity, the Coral models' inputs, int8, float, saturating
QUANT = [
    (np.uint8, 0.0, 1.0, 1.0, 0),
    (np.uint8, 127.5, 127.5, 0.0078125, 128),
    (np.uint8, 0.0, 255.0, 0.003921568859368563, 0),
    (np.int8, 127.5, 127.5, 0.0078125, 0),
    (np.int8, 0.0, 1.0, 0.023528477177023888, -5),
    (np.float32, 127.5, 127.5, 1.0, 0),
    (np.uint8, 0.0, 1.0, 1e-3, 3),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt", ["RGB", "BGR", "RGBA", "GRAY", "YUYV", "NV12"])
@pytest.mark.parametrize("resize", ["bilinear", "area", "nearest"])
def test_preprocess_formats_and_resizes(path, fmt, resize):
    src = frame(fmt, 38, 46)
    for out_hw in ((13, 9), (64, 80), (38, 46)):  # down, up, same
        ours, ref = run_both(path, src, fmt, (1, *out_hw, 3), np.uint8, resize=resize,
                             mean=127.5, std=127.5, scale=1 / 128, zero_point=128)
        assert np.array_equal(ours, ref), (out_hw, np.abs(ours.astype(int) - ref).max())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("quant", QUANT, ids=lambda q: f"{np.dtype(q[0]).name}-{q[3]:.4g}-{q[4]}")
def test_preprocess_quantization_parameters(path, quant):
    dtype, mean, std, scale, zero = quant
    src = frame("RGB", 31, 57, seed=1)
    for color, channels in (("RGB", 3), ("BGR", 3), ("GRAY", 1)):
        ours, ref = run_both(path, src, "RGB", (1, 17, 23, channels), dtype, resize="area", color=color,
                             mean=mean, std=std, scale=scale, zero_point=zero)
        assert np.array_equal(ours, ref), color


@pytest.mark.parametrize("path", PATHS)
def test_preprocess_odd_tiny_and_strided_sources(path):
    big = frame("RGB", 41, 67, seed=2)
    cases = {
        "one pixel": frame("RGB", 1, 1, seed=3),
        "one row": frame("RGB", 1, 9, seed=4),
        "every other row and third column": big[::2, ::3],
        "upside down": big[::-1],
        "mirrored": big[:, ::-1],
        "channels reversed": big[..., ::-1],
        "fortran order": np.asfortranarray(big),
    }
    for name, src in cases.items():
        for resize in ("bilinear", "area", "nearest"):
            ours, ref = run_both(path, src, "RGB", (5, 7, 3), np.uint8, resize=resize)
            assert np.array_equal(ours, ref), (name, resize)
    tiny_yuv = {"YUYV": frame("YUYV", 1, 2), "NV12": frame("NV12", 2, 2)}
    for fmt, src in tiny_yuv.items():
        ours, ref = run_both(path, src, fmt, (3, 3, 3), np.uint8)
        assert np.array_equal(ours, ref), fmt


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt,channels", [("GRAY", 1), ("RGB", 3), ("BGR", 3), ("YUYV", 3)])
@pytest.mark.parametrize("quant", QUANT[:4], ids=lambda q: f"{np.dtype(q[0]).name}-{q[3]:.4g}-{q[4]}")
def test_a_bound_preprocessor_equals_preprocess_and_copies_only_an_identity(path, fmt, channels, quant):
    """``preprocessor`` (a camera's plan made once) gives what ``preprocess`` gives, for every
    frame of that geometry; at the model's own size and format with no normalization it copies."""
    dtype, mean, std, scale, zp = quant
    for size in ((24, 32), (13, 9)):
        out_a = np.empty((1, *size, channels), dtype)
        out_b = np.empty_like(out_a)
        src = frame(fmt, 24, 32)
        bound = kernels.preprocessor(src, fmt, out_a, path=path, mean=mean, std=std, scale=scale, zero_point=zp)
        for seed in range(3):
            src = frame(fmt, 24, 32, seed=seed)
            bound(src, out_a)
            kernels.preprocess(src, fmt, out_b, path=path, mean=mean, std=std, scale=scale, zero_point=zp)
            assert np.array_equal(out_a, out_b), (size, seed)
    plan = kernels.make_plan(frame(fmt, 24, 32), fmt, np.empty((1, 24, 32, channels), dtype), mean=mean, std=std,
                             scale=scale, zero_point=zp)
    assert kernels._is_copy(plan) == (fmt in ("GRAY", "RGB") and quant == QUANT[0])


@pytest.mark.parametrize("path", PATHS)
def test_preprocess_roi_and_letterbox(path):
    src = frame("NV12", 48, 64, seed=5)
    for options in ({"roi": (10, 6, 30, 20)}, {"letterbox": True, "pad_value": 114},
                    {"roi": (3, 5, 21, 40), "letterbox": True, "pad_value": 0, "resize": "area"}):
        ours, ref = run_both(path, src, "NV12", (1, 24, 24, 3), np.int8, mean=128.0, std=128.0,
                             scale=1 / 128, zero_point=0, **options)
        assert np.array_equal(ours, ref), options


def test_letterbox_geometry_and_border():
    src = np.full((20, 40, 3), 200, np.uint8)  # wide: bars above and below
    out = np.zeros((10, 10, 3), np.uint8)
    plan = kernels.preprocess(src, "RGB", out, letterbox=True, pad_value=7)
    assert plan.inner == (0, 2, 10, 5)
    assert (out[:2] == 7).all() and (out[7:] == 7).all() and (out[2:7] == 200).all()


def test_yuv_conversion_of_known_colours():
    # BT.601 limited range: Y=235,U=V=128 is white; Y=16 black; (81, 90, 240) is red.
    yuyv = np.array([[235, 128, 16, 128], [81, 90, 81, 240]], np.uint8)
    rgb = reference.to_rgb(yuyv, "YUYV")
    assert np.allclose(rgb[0, 0], 255, atol=1) and np.allclose(rgb[0, 1], 0, atol=1)
    assert np.allclose(rgb[1, 0], [255, 0, 0], atol=2)  # (Y, U) from the pair, V=240


@pytest.mark.parametrize("path", PATHS)
def test_no_write_outside_the_output(path):
    """The output sits inside a canary buffer; only its own bytes may change."""
    canary = np.full(3 * 24 * 24 * 3 + 64, 0xA5, np.uint8)
    out = canary[32:32 + 24 * 24 * 3].reshape(1, 24, 24, 3)
    for fmt in ("RGB", "YUYV", "NV12", "GRAY"):
        for resize in ("bilinear", "area", "nearest"):
            kernels.preprocess(frame(fmt, 30, 50), fmt, out, path=path, resize=resize, letterbox=True)
            assert (canary[:32] == 0xA5).all() and (canary[32 + out.size:] == 0xA5).all(), (fmt, resize)


@pytest.mark.parametrize("args, message", [
    (dict(src=np.zeros((4, 4, 3), np.float32)), r"src: dtype float32, expected uint8"),
    (dict(src=np.zeros((4, 4, 4), np.uint8)), r"src: shape \(4, 4, 4\) has 4 channel\(s\); RGB needs \(H, W, 3\)"),
    (dict(src=np.zeros((0, 4, 3), np.uint8)), r"src: the image is empty"),
    (dict(roi=(2, 2, 10, 1)), r"roi: \(2, 2, 10, 1\) is empty or outside the 8x6 image"),
    (dict(roi=(-1, 0, 2, 2)), r"roi: .* is empty or outside"),
    (dict(roi=(0, 0, 0, 2)), r"roi: .* is empty or outside"),
    (dict(fmt="YUV420"), r"fmt: 'YUV420' is not a known pixel format"),
    (dict(out=np.zeros((4, 4, 2), np.uint8)), r"out: shape \(4, 4, 2\)"),
    (dict(out=np.zeros((4, 4, 3), np.int32)), r"out: dtype int32, expected uint8, int8 or float32"),
    (dict(out=np.zeros((4, 8, 3), np.uint8)[:, ::2]), r"out: must be a writeable C-contiguous array"),
    (dict(resize="bicubic"), r"resize: 'bicubic' is not one of bilinear, area, nearest"),
    (dict(std=0.0), r"std: must not be 0"),
    (dict(zero_point=300), r"zero_point: 300 is outside uint8"),
])
def test_bad_preprocess_arguments_name_the_argument(args, message):
    call = dict(src=np.zeros((6, 8, 3), np.uint8), fmt="RGB", out=np.zeros((4, 4, 3), np.uint8))
    call.update(args)
    src, fmt, out = call.pop("src"), call.pop("fmt"), call.pop("out")
    with pytest.raises(ValueError, match=message):
        kernels.preprocess(src, fmt, out, **call)


def test_yuv_shapes_are_checked():
    with pytest.raises(ValueError, match=r"YUYV width 3 must be even"):
        kernels.preprocess(np.zeros((2, 6), np.uint8), "YUYV", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"NV12 needs \(3\*H/2, W\)"):
        kernels.preprocess(np.zeros((5, 4), np.uint8), "NV12", np.zeros((2, 2, 3), np.uint8))


# -- postprocess ------------------------------------------------------------------------

def test_dequantize_softmax_topk():
    rng = np.random.default_rng(7)
    for path in kernels.paths_for("dequantize"):
        for dtype, scale, zero in ((np.uint8, 0.00390625, 0), (np.int8, 0.0235, -128), (np.uint8, 1 / 128, 128)):
            q = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max + 1, 1001).astype(dtype)
            assert np.array_equal(kernels.dequantize(q, scale, zero, path=path), reference.dequantize(q, scale, zero))
    logits = rng.standard_normal((3, 1001)).astype(np.float32) * 8
    for path in kernels.paths_for("softmax"):
        got = kernels.softmax(logits, path=path)
        assert np.allclose(got, reference.softmax(logits), rtol=1e-6, atol=1e-9)
        assert np.allclose(got.sum(axis=1), 1, atol=1e-5)
    scores = rng.integers(0, 20, 1001).astype(np.float32)  # many ties
    assert kernels.paths_for("topk") == ["c", "numpy"]
    for path in kernels.paths_for("topk"):
        for k in (1, 5, 64, 65, 1001):
            assert np.array_equal(kernels.topk(scores, k, path=path), reference.topk(scores, k)), (path, k)


def random_boxes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0, 1, (n, 2))
    size = rng.uniform(0.02, 0.3, (n, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float32)
    scores = np.round(rng.uniform(0, 1, n), 2).astype(np.float32)  # rounded: ties happen
    return boxes, scores, rng.integers(0, 5, n).astype(np.int32)


@pytest.mark.parametrize("path", [p for p in PATHS])
def test_nms_matches_reference(path):
    for seed, n in ((0, 1), (1, 50), (2, 2000)):
        boxes, scores, classes = random_boxes(n, seed)
        for cls in (None, classes):
            for iou in (0.3, 0.5, 0.0, 1.0):
                kw = dict(classes=cls, iou_threshold=iou, score_threshold=0.2, max_detections=100)
                got = kernels.nms(boxes, scores, path=path, **kw)
                want = reference.nms(boxes, scores, cls, iou, 0.2, 100)
                assert np.array_equal(got, want), (seed, cls is not None, iou)


def test_nms_semantics():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 0.9], [0.5, 0.5, 1.5, 1.5], [0, 0, 1, 1]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    assert kernels.nms(boxes, scores, iou_threshold=0.5).tolist() == [3, 2]
    assert kernels.nms(boxes, scores, classes=np.array([0, 1, 0, 1]), iou_threshold=0.5).tolist() == [3, 0, 2]
    assert kernels.nms(boxes, scores, iou_threshold=0.5, max_detections=1).tolist() == [3]
    assert kernels.nms(boxes, scores, score_threshold=0.99).tolist() == []
    with pytest.raises(ValueError, match=r"boxes: shape \(4, 3\)"):
        kernels.nms(boxes[:, :3], scores)


def test_keypoints_and_embeddings():
    rng = np.random.default_rng(9)
    heat = rng.standard_normal((17, 13, 5)).astype(np.float32)
    heat[0, 0, 1] = 50  # a peak on the border: no refinement there
    heat[8, 6, 2] = heat[8, 7, 2] = 50  # a tie: the first in row-major order wins
    for path in kernels.paths_for("keypoints"):
        got = kernels.keypoints(heat, path=path)
        assert np.array_equal(got, reference.keypoints(heat))
        assert got[1, :2].tolist() == pytest.approx([0.5 / 17, 0.5 / 13])
    v = rng.standard_normal(1024).astype(np.float32)
    for path in kernels.paths_for("l2_normalize"):
        unit = kernels.l2_normalize(v, path=path)
        assert np.allclose(unit, reference.l2_normalize(v), rtol=1e-6, atol=1e-9)
        assert abs(float(np.linalg.norm(unit)) - 1) < 1e-5
        assert kernels.l2_normalize(np.zeros(4, np.float32), path=path).tolist() == [0, 0, 0, 0]
    unit = reference.l2_normalize(v)
    assert kernels.paths_for("quantize_int8") == ["c", "numpy"]
    for path in kernels.paths_for("quantize_int8"):
        assert np.array_equal(kernels.quantize_int8(unit, path=path), reference.quantize_int8(unit))
    for path in kernels.paths_for("binarize"):
        for n in (1024, 1001, 1):
            assert np.array_equal(kernels.binarize(v[:n], path=path), reference.binarize(v[:n])), n


def test_crc_check_values():
    assert kernels.crc16_ccitt(b"123456789") == 0x29B1
    assert kernels.crc32(b"123456789") == 0xCBF43926


def test_forcing_a_path(monkeypatch):
    monkeypatch.setenv("EDGELOOP_KERNELS", "numpy")
    assert kernels.path_for("preprocess") == "numpy"
    monkeypatch.setenv("EDGELOOP_KERNELS", "numba")
    assert kernels.path_for("preprocess") == "numba"
    assert kernels.path_for("softmax") == "numpy"  # numba does not implement it: the reference serves
    monkeypatch.setenv("EDGELOOP_KERNELS", "gpu")
    with pytest.raises(ValueError, match=r"EDGELOOP_KERNELS: 'gpu' is not one of auto, c, numba, numpy"):
        kernels.path_for("preprocess")
    monkeypatch.delenv("EDGELOOP_KERNELS")
    assert kernels.path_for("preprocess") == "c"


def test_beside_the_c_extension_numba_is_never_loaded(tmp_path):
    """Kernels C lacks go to numpy then: numba (LLVM, ~60 MB) stands in only for a missing C."""
    import subprocess
    import sys

    code = ("import logging, sys, numpy as np; from edgeloop.runtime import kernels; "
            "logging.basicConfig(level=logging.INFO, format='%(message)s'); "
            "kernels.l2_normalize(np.ones((1, 8), np.float32)); "
            "print(kernels.path_for('l2_normalize'), kernels.path_for('dequantize'), kernels.path_for('preprocess'), "
            "'numba' in sys.modules)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "EDGELOOP_KERNELS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["numpy", "numpy", "c", "False"], out
    assert "kernels: " in out.stderr and "forced" not in out.stderr, out.stderr  # chosen, not forced


def test_threaded_rows_equal_one_thread(monkeypatch):
    from edgeloop.runtime.kernels import native_path

    src = frame("RGB", 300, 400, seed=11)
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(native_path, "THREADS", threads)
        for resize in ("bilinear", "area", "nearest"):
            out = np.empty((1, 97, 131, 3), np.uint8)
            kernels.preprocess(src, "RGB", out, path="c", resize=resize, letterbox=True)
            results.append((threads, resize, out))
    for threads, resize, out in results:
        assert np.array_equal(out, next(o for t, r, o in results if t == 1 and r == resize)), (threads, resize)


def test_a_missing_extension_falls_back_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setitem(kernels._loaded, "c", None)
    monkeypatch.setitem(kernels._reasons, "c", "ImportError: no module named _native")
    monkeypatch.setattr(kernels, "_announced", False)
    with caplog.at_level("INFO", logger="edgeloop.kernels"):
        assert kernels.path_for("preprocess") == "numba"
        assert kernels.path_for("topk") == "numpy"  # numba has no top-k: the reference serves
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["kernels: numba path; c unavailable (ImportError: no module named _native)"]
    out = np.empty((8, 8, 3), np.uint8)
    kernels.preprocess(frame("RGB", 20, 20), "RGB", out)  # and it still works
