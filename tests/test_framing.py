"""Serial framing: COBS and frames round-trip, the C implementation for firmware authors is
byte-compatible with the Python one (compiled here through cffi), and at a bit-error rate of
1e-3 no corrupt frame gets through (100,000 frames; 10^6 in ``make soak``)."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloop.firmware_bridge.framing import (MAX_PAYLOAD, Frame, FrameError, FrameReader, MsgType, cobs_decode,
                                              cobs_encode, decode_frame, encode_frame)

C_DIR = Path(__file__).resolve().parent.parent / "firmware_bridge" / "c"
FRAMES = int(os.environ.get("EDGELOOP_SERIAL_FRAMES", "100000"))


@given(st.binary(max_size=2000))
@settings(max_examples=500, deadline=None)
def test_cobs_round_trip_has_no_zero(data):
    encoded = cobs_encode(data)
    assert 0 not in encoded and cobs_decode(encoded) == data
    assert len(encoded) <= len(data) + len(data) // 254 + 1


def test_frames_round_trip_and_the_limits():
    payload = {"stream": "accel", "t0": 12.5, "rate": 1000, "samples": list(range(-100, 100))}
    frame = decode_frame(encode_frame(MsgType.SENSOR, 65535, payload)[:-1])
    assert frame == Frame(MsgType.SENSOR, 65535, payload)
    assert decode_frame(encode_frame(MsgType.ACK, 70000, None)[:-1]).seq == 70000 & 0xFFFF
    with pytest.raises(FrameError, match="over the 1024-byte frame limit"):
        encode_frame(MsgType.SENSOR, 1, b"x" * MAX_PAYLOAD)
    with pytest.raises(FrameError, match="cannot be serialized"):
        encode_frame(MsgType.EVENT, 1, {"x": object()})


def test_the_reader_resynchronizes_after_garbage():
    rng = random.Random(3)
    reader = FrameReader()
    stream = bytearray()
    for n in range(200):
        if n % 7 == 0:
            stream += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))  # noise, zeros included
        stream += encode_frame(MsgType.SENSOR, n, {"n": n})
    got = []
    for start in range(0, len(stream), 37):  # arbitrary read sizes
        got += [f.payload["n"] for f in reader.feed(bytes(stream[start:start + 37]))]
    # Noise right before a frame can swallow it (no zero between); every other frame arrives.
    assert len(got) >= 200 - len(range(0, 200, 7)) and got == sorted(got)
    assert sum(reader.rejected.values()) >= 1


@pytest.fixture(scope="module")
def c_frame(tmp_path_factory):
    """The firmware C implementation, compiled through cffi for this test."""
    import importlib.util

    from cffi import FFI

    ffi = FFI()
    # The declarations firmware authors include, read from the header itself (cffi's cdef takes
    # no preprocessor lines or comments): the test binds exactly what the header promises.
    header = (C_DIR / "edgeloop_frame.h").read_text()
    header = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    ffi.cdef("\n".join(line for line in header.splitlines() if not line.lstrip().startswith("#")))
    ffi.set_source("_el_frame_test", '#include "edgeloop_frame.h"', sources=[str(C_DIR / "edgeloop_frame.c")],
                   include_dirs=[str(C_DIR)], extra_compile_args=["-std=c99", "-Wall", "-Wextra", "-Werror"])
    out = tmp_path_factory.mktemp("cframe")
    path = ffi.compile(tmpdir=str(out))
    spec = importlib.util.spec_from_file_location("_el_frame_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ffi, module.lib


def test_c_and_python_frames_are_byte_identical_both_ways(c_frame):
    import msgpack
    import zlib

    ffi, lib = c_frame
    rng = random.Random(11)
    out = ffi.new("uint8_t[]", 2000)
    scratch = ffi.new("uint8_t[]", 2000)
    frame = ffi.new("el_frame *")
    for n in range(2000):
        data = bytes(rng.choice([0, 0, 1, 255, rng.randrange(256)]) for _ in range(rng.randrange(0, 700)))
        assert lib.el_crc32(data, len(data)) == zlib.crc32(data)
        m = lib.el_cobs_encode(data, len(data), out)
        assert ffi.buffer(out, m)[:] == cobs_encode(data)
        payload = {"n": n, "blob": data[:300], "vals": [rng.randrange(-2**31, 2**31) for _ in range(5)]}
        body = msgpack.packb(payload, use_bin_type=True)
        seq, type_, flags = rng.randrange(65536), rng.randrange(1, 8), rng.randrange(2)
        m = lib.el_frame_encode(type_, flags, seq, body, len(body), out, 2000)
        python = encode_frame(type_, seq, payload, flags)
        assert m > 0 and ffi.buffer(out, m)[:] == python  # C encodes what Python encodes
        assert lib.el_frame_decode(python[:-1], len(python) - 1, frame, scratch) == 0  # and decodes it
        assert (frame.type, frame.seq, frame.flags) == (type_, seq, flags)
        assert msgpack.unpackb(ffi.buffer(frame.payload, frame.length)[:], raw=False) == payload
    bad = bytearray(encode_frame(MsgType.EVENT, 5, {"x": 1})[:-1])
    bad[4] ^= 0x10
    assert lib.el_frame_decode(bytes(bad), len(bad), frame, scratch) in (-2, -4)  # COBS or CRC


def test_bit_errors_at_1e_3_never_deliver_a_corrupt_frame():
    """A stream of FRAMES frames with every bit flipped with probability 1e-3: every frame the
    reader accepts is exactly one that was sent; the rest are rejected and counted."""
    rng = np.random.default_rng(1)
    sent, parts = [], []
    for n in range(FRAMES):
        payload = {"n": n, "samples": rng.integers(-3000, 3000, 20).tolist()}  # ~64-byte payloads
        frame = Frame(MsgType.SENSOR, n & 0xFFFF, payload)
        sent.append(frame)
        parts.append(encode_frame(frame.type, frame.seq, payload))
    stream = np.frombuffer(b"".join(parts), np.uint8).copy()
    bits = stream.size * 8
    flips = np.cumsum(rng.geometric(1e-3, size=int(bits * 1e-3 * 1.2) + 100))
    flips = flips[flips < bits]
    np.bitwise_xor.at(stream, flips // 8, (1 << (flips % 8)).astype(np.uint8))
    reader = FrameReader()
    accepted = corrupt = 0
    data = stream.tobytes()
    for start in range(0, len(data), 4096):
        for frame in reader.feed(data[start:start + 4096]):
            accepted += 1
            n = frame.payload.get("n") if isinstance(frame.payload, dict) else None
            if not isinstance(n, int) or not 0 <= n < FRAMES or frame != sent[n]:
                corrupt += 1
    print(f"\n{FRAMES} frames, {len(flips)} bit flips: {accepted} accepted intact, "
          f"rejected {reader.rejected}, undetected corrupt {corrupt}")
    assert corrupt == 0
    assert 0.3 * FRAMES < accepted < 0.9 * FRAMES  # the errors really hit (about half the frames)


def test_the_worked_examples_in_protocol_md_are_the_real_bytes():
    text = (C_DIR.parent / "PROTOCOL.md").read_text()
    hello = encode_frame(MsgType.HELLO, 1, {"versions": [1], "host": "edgeloop"}).hex(" ")
    ack = encode_frame(MsgType.ACK, 2, {"ok": True}).hex(" ")
    beat = encode_frame(MsgType.HEARTBEAT, 0, {}).hex(" ")
    flat = " ".join(text.split())
    assert hello in flat and ack in flat and beat in flat
