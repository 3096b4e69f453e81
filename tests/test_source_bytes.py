"""Untrusted input bytes (MQTT requests, offload, index sources): an image bomb is refused from
its header before it is decoded; a .npy header that declares more than it holds is refused
before anything is allocated."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from edgeloop.runtime.errors import InputError
from edgeloop.runtime.source_bytes import from_bytes, to_bytes


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def test_an_image_bomb_is_refused_from_its_header_before_decoding():
    bomb = png(6000, 6000)  # 36 Mpx in a few KB
    assert len(bomb) < 200_000
    start = time.perf_counter()
    with pytest.raises(InputError) as err:
        from_bytes(bomb, "png")
    assert time.perf_counter() - start < 0.05  # (decoding it took 0.15 s here; 12000x12000 0.6 s)
    assert "6000x6000" in str(err.value) and "4096x4096" in str(err.value)
    ok = from_bytes(png(64, 48), "png")
    assert ok.size == (64, 48) and ok.mode == "RGB"


def test_the_pixel_limit_is_exactly_4096_by_4096():
    with pytest.raises(InputError):
        from_bytes(png(4096, 4097), "png")
    assert from_bytes(png(4096, 4096), "png").size == (4096, 4096)  # the largest taken, decoded


def header_only(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@pytest.mark.parametrize("data, why", [
    (header_only((1 << 40,)), "declares"),  # a terabyte in 128 bytes
    (header_only((10, 10)), "declares"),  # truncated: 800 bytes declared, none given
    (header_only((4,), "|O"), "declares"),  # objects
    (b"\x93NUMPY\x01\x00garbage", "no valid header"),
    (b"not npy at all", "no valid header"),
])
def test_an_npy_header_that_does_not_fit_its_bytes_is_refused(data, why):
    with pytest.raises(InputError) as err:
        from_bytes(data, "npy")
    assert why in str(err.value)


def test_arrays_and_images_round_trip():
    a = np.arange(12, dtype=np.int16).reshape(3, 4)
    data, kind = to_bytes(a)
    assert kind == "npy" and np.array_equal(from_bytes(data, kind), a)
